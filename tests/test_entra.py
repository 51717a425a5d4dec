"""Microsoft Entra ID: tokens from a provider or a credential, kept fresh, never shown.

Against the emulator's Entra tokens over real HTTP, with the emulator's token clock
injected (expiry without waiting).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from azure.core.credentials import AccessToken
from azure.identity import get_bearer_token_provider

import polars_azurechat as pac
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator

from .fakes import FakeClock

ROWS = [f"What is {i} + 1?" for i in range(30)]
ANSWERS = [str(i + 1) for i in range(30)]


class Provider:
    """A token provider as users write them: a callable returning a token."""

    def __init__(self, emu: Emulator, ttl_s: float) -> None:
        self.emu, self.ttl_s, self.calls = emu, ttl_s, 0
        self.tokens: list[str] = []

    def __call__(self) -> str:
        self.calls += 1
        token = self.emu.issue_token(ttl_s=self.ttl_s)
        self.tokens.append(token)
        return token


class Credential:
    """An azure-identity TokenCredential (the protocol azure-identity's classes share)."""

    def __init__(self, emu: Emulator, ttl_s: float) -> None:
        self.emu, self.ttl_s, self.calls = emu, ttl_s, 0
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        self.scopes.extend(scopes)
        token = self.emu.issue_token(ttl_s=self.ttl_s)
        return AccessToken(token, int(time.time() + self.ttl_s))


def _config(emu: Emulator, **credential: Any) -> ChatConfig:
    return ChatConfig(azure_endpoint=emu.url, deployment="gpt-4o-mini", **credential)


def test_a_token_that_expires_mid_run_is_refreshed_and_no_row_fails(
    clock: FakeClock,
) -> None:
    with Emulator(clock=clock, key_auth=False) as emu:
        provider = Provider(emu, ttl_s=3.0)
        with pac.Completer(
            config=_config(emu, azure_ad_token_provider=provider)
        ) as job:
            assert job.run(ROWS[:10]) == ANSWERS[:10]
            clock.now += 5  # the token (3 s) has expired on the server's clock
            assert job.run(ROWS[10:]) == ANSWERS[10:]
        stats = emu.stats()
    assert provider.calls == 2  # once at the start, once after the first 401
    assert stats["statuses"].get("401", 0) >= 1
    assert stats["auth"] == {"key": 0, "bearer": 30}


def test_a_credential_is_refreshed_before_it_expires(clock: FakeClock) -> None:
    with Emulator(clock=clock, key_auth=False) as emu:
        credential = Credential(emu, ttl_s=3600)
        with pac.Completer(config=_config(emu, credential=credential)) as job:
            assert job.run(ROWS) == ANSWERS
        stats = emu.stats()
    assert credential.scopes == ["https://cognitiveservices.azure.com/.default"]
    assert credential.calls == 1  # cached: one token for every request
    assert stats["statuses"] == {"200": 30}


def test_azure_identity_bearer_token_provider_works(clock: FakeClock) -> None:
    with Emulator(clock=clock, key_auth=False) as emu:
        credential = Credential(emu, ttl_s=3600)
        provider = get_bearer_token_provider(
            credential, "https://cognitiveservices.azure.com/.default"
        )
        df = pl.DataFrame({"q": ROWS})
        cfg = _config(emu, azure_ad_token_provider=provider)
        out = df.select(pl.col("q").chat.complete(config=cfg))
    assert out["q"].to_list() == ANSWERS


def test_a_refused_fresh_token_stops_the_run_after_one_refresh(
    clock: FakeClock,
) -> None:
    with Emulator(clock=clock, key_auth=False) as emu:
        calls = []

        def bad_provider() -> str:
            calls.append(1)
            return f"not-a-token-the-server-issued-{len(calls)}"

        cfg = _config(emu, azure_ad_token_provider=bad_provider)
        with pytest.raises(pac.AuthenticationError, match="even after a refresh"):
            # one at a time: no second row goes while the first awaits its 401
            pac.complete_many(ROWS, config=cfg, max_concurrency=1)
        stats = emu.stats()
    assert stats["requests"] == 2  # the first request, and once more with a new token
    assert len(calls) == 2


def test_a_key_on_a_resource_without_key_auth_says_use_entra(clock: FakeClock) -> None:
    with Emulator(key_auth=False) as emu:
        cfg = ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key, deployment="d")
        with pytest.raises(pac.AuthenticationError) as info:
            pac.complete_many(ROWS, config=cfg, max_concurrency=1)
        assert emu.stats()["requests"] == 1  # the run stops at its first 401
    message = str(info.value)
    assert "key authentication is disabled" in message and "Entra ID" in message
    assert info.value.code == "AuthenticationTypeDisabled"


def test_tokens_appear_in_no_log_error_or_repr(
    clock: FakeClock, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    with Emulator(clock=clock, key_auth=False) as emu:
        provider = Provider(emu, ttl_s=3.0)
        cfg = _config(emu, azure_ad_token_provider=provider)
        cache = tmp_path / "c.sqlite"
        with pac.Completer(config=cfg, cache=cache) as job:
            job.run(ROWS[:5])
            clock.now += 5
            job.run(ROWS[5:10])
            texts = [repr(cfg), repr(job), str(job.summary()), caplog.text]
        emu.revoke_tokens()
        with pytest.raises(pac.AuthenticationError) as info:
            pac.complete_many(
                ["What is 1 + 1?"],
                config=_config(emu, azure_ad_token=provider.tokens[0]),
            )
        texts += [str(info.value), repr(info.value)]
    assert provider.tokens
    for token in provider.tokens:
        for text in texts:
            assert token not in text
        assert token.encode() not in cache.read_bytes()
