"""Microsoft Entra ID (Azure AD) bearer tokens in the emulator, over real HTTP."""

from __future__ import annotations

import json
import math
import threading
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from polars_azurechat.emulator import Emulator

from .fakes import FakeClock

ENTRA_401 = {
    "statusCode": 401,
    "message": "Unauthorized. Access token is missing, invalid, audience is incorrect "
    "(https://cognitiveservices.azure.com), or have expired.",
}
KEY_DISABLED_403 = {
    "error": {
        "code": "AuthenticationTypeDisabled",
        "message": "Key based authentication is disabled for this resource.",
    }
}
BODY = {"messages": [{"role": "user", "content": "What is 53 + 53?"}]}


def _post(
    emu: Emulator,
    *,
    token: str | None = None,
    key: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """POST a chat completion with the given credentials; (status, JSON body)."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if key is not None:
        sent["api-key"] = key
    req = urllib.request.Request(
        emu.url + "/openai/deployments/d/chat/completions?api-version=2024-10-21",
        data=json.dumps(BODY).encode(),
        headers=sent,
        method="POST",
    )
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _answer(body: Any) -> str:
    content = body["choices"][0]["message"]["content"]
    assert isinstance(content, str)
    return content


def test_a_fresh_token_works() -> None:
    with Emulator() as emu:
        token = emu.issue_token()
        status, body = _post(emu, token=token)
        assert (status, _answer(body)) == (200, "106")
        stats = emu.stats()
    assert token.startswith("emu-") and len(token) > 20
    assert stats["tokens_issued"] == 1
    assert stats["auth"] == {"key": 0, "bearer": 1}


def test_each_token_is_new() -> None:
    emu = Emulator()
    tokens = {emu.issue_token() for _ in range(50)}
    assert len(tokens) == 50
    assert emu.stats()["tokens_issued"] == 50


def test_the_official_sdk_with_a_token_and_a_token_provider() -> None:
    with Emulator(key_auth=False) as emu:
        with_token = openai.AzureOpenAI(
            azure_endpoint=emu.url,
            azure_ad_token=emu.issue_token(),
            api_version="2024-10-21",
            max_retries=0,
        )
        reply = with_token.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "What is 1 + 1?"}],
        )
        assert reply.choices[0].message.content == "2"
        with_provider = openai.AzureOpenAI(
            azure_endpoint=emu.url,
            azure_ad_token_provider=emu.issue_token,
            api_version="2024-10-21",
            max_retries=0,
        )
        for _ in range(2):  # the SDK asks the provider before each request
            reply = with_provider.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "What is 2 + 2?"}],
            )
            assert reply.choices[0].message.content == "4"
        stats = emu.stats()
    assert stats["tokens_issued"] == 3
    assert stats["auth"] == {"key": 0, "bearer": 3}
    assert stats["statuses"] == {"200": 3}


def test_the_official_sdk_raises_authentication_error_on_an_expired_token() -> None:
    clock = FakeClock()
    with Emulator(clock=clock) as emu:
        client = openai.AzureOpenAI(
            azure_endpoint=emu.url,
            azure_ad_token=emu.issue_token(ttl_s=60),
            api_version="2024-10-21",
            max_retries=0,
        )
        clock.now += 60
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
    assert info.value.status_code == 401
    assert info.value.body == ENTRA_401


def test_a_token_expires_on_the_emulators_clock() -> None:
    clock = FakeClock()
    with Emulator(clock=clock) as emu:
        token = emu.issue_token(ttl_s=60)
        clock.now += 59.999
        assert _post(emu, token=token)[0] == 200
        clock.now += 0.001  # exactly ttl_s later: expired
        assert _post(emu, token=token) == (401, ENTRA_401)
        clock.now += 3600
        assert _post(emu, token=token) == (401, ENTRA_401)
        fresh = emu.issue_token(ttl_s=1)  # issued now, valid from now
        assert _post(emu, token=fresh)[0] == 200
        stats = emu.stats()
    assert stats["statuses"] == {"200": 2, "401": 2}
    assert stats["auth"] == {"key": 0, "bearer": 2}
    assert stats["tokens_issued"] == 2


def test_a_token_with_infinite_ttl_never_expires() -> None:
    clock = FakeClock()
    with Emulator(clock=clock) as emu:
        token = emu.issue_token(ttl_s=math.inf)
        clock.now += 1e12
        assert _post(emu, token=token)[0] == 200


@pytest.mark.parametrize("ttl_s", [0.0, -1.0, math.nan])
def test_a_ttl_that_is_not_positive_is_refused(ttl_s: float) -> None:
    emu = Emulator()
    with pytest.raises(ValueError, match="ttl_s must be positive"):
        emu.issue_token(ttl_s=ttl_s)
    assert emu.stats()["tokens_issued"] == 0


@pytest.mark.parametrize(
    "token", ["emu-not-issued", "", "Bearer", "emulator-key-but-not-quite"]
)
def test_an_unknown_token_gets_the_entra_401(token: str) -> None:
    with Emulator() as emu:
        emu.issue_token()
        assert _post(emu, token=token) == (401, ENTRA_401)
        stats = emu.stats()
    assert stats["statuses"] == {"401": 1}
    assert stats["auth"] == {"key": 0, "bearer": 0}


def test_revoked_tokens_get_the_entra_401_and_new_ones_work() -> None:
    with Emulator() as emu:
        first, second = emu.issue_token(), emu.issue_token()
        assert _post(emu, token=first)[0] == 200
        emu.revoke_tokens()
        assert _post(emu, token=first) == (401, ENTRA_401)
        assert _post(emu, token=second) == (401, ENTRA_401)
        third = emu.issue_token()
        assert _post(emu, token=third)[0] == 200
        # the key is not a token: revoking leaves it working
        assert _post(emu, key=emu.api_key)[0] == 200
        stats = emu.stats()
    assert stats["tokens_issued"] == 3
    assert stats["auth"] == {"key": 1, "bearer": 2}


def test_the_key_still_works_as_a_header_and_as_a_bearer() -> None:
    with Emulator() as emu:
        assert _post(emu, key=emu.api_key)[0] == 200
        assert _post(emu, token=emu.api_key)[0] == 200
        status, body = _post(emu, key="wrong")
        assert status == 401
        assert "Access denied" in body["error"]["message"]
        status, body = _post(emu)  # no credential at all: as before
        assert status == 401
        assert "Access denied" in body["error"]["message"]
        stats = emu.stats()
    assert stats["auth"] == {"key": 2, "bearer": 0}
    assert stats["tokens_issued"] == 0


def test_the_api_key_header_wins_over_a_token() -> None:
    with Emulator() as emu:
        token = emu.issue_token()
        status, body = _post(emu, token=token, key="wrong")
        assert status == 401 and "Access denied" in body["error"]["message"]
        assert _post(emu, token="emu-unknown", key=emu.api_key)[0] == 200
        assert emu.stats()["auth"] == {"key": 1, "bearer": 0}


def test_with_key_auth_disabled_the_right_key_gets_403_and_tokens_work() -> None:
    with Emulator(key_auth=False) as emu:
        assert emu.settings.key_auth is False
        assert _post(emu, key=emu.api_key) == (403, KEY_DISABLED_403)
        assert _post(emu, key="wrong") == (403, KEY_DISABLED_403)
        assert _post(emu, token=emu.api_key) == (403, KEY_DISABLED_403)
        token = emu.issue_token()
        status, body = _post(emu, token=token)
        assert (status, _answer(body)) == (200, "106")
        # a token does not get past a key sent beside it
        assert _post(emu, token=token, key=emu.api_key) == (403, KEY_DISABLED_403)
        assert _post(emu, token="emu-unknown") == (401, ENTRA_401)
        assert _post(emu) == (401, ENTRA_401)  # no credential: the token is missing
        stats = emu.stats()
    assert stats["statuses"] == {"200": 1, "401": 2, "403": 4}
    assert stats["auth"] == {"key": 0, "bearer": 1}


def test_the_official_sdk_with_a_key_gets_403_when_key_auth_is_disabled() -> None:
    with Emulator(key_auth=False) as emu:
        client = openai.AzureOpenAI(
            azure_endpoint=emu.url,
            api_key=emu.api_key,
            api_version="2024-10-21",
            max_retries=0,
        )
        with pytest.raises(openai.PermissionDeniedError) as info:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
    assert info.value.status_code == 403
    assert info.value.body == KEY_DISABLED_403["error"]


def test_stats_over_http_count_tokens_and_auth_kinds_and_reset_keeps_tokens() -> None:
    with Emulator() as emu:
        token = emu.issue_token()
        _post(emu, token=token)
        _post(emu, key=emu.api_key)
        _post(emu, token=emu.api_key)
        with urllib.request.urlopen(emu.url + "/stats") as resp:
            stats = json.loads(resp.read())
        assert stats["tokens_issued"] == 1
        assert stats["auth"] == {"key": 2, "bearer": 1}
        emu.reset()
        assert emu.stats()["tokens_issued"] == 0
        assert emu.stats()["auth"] == {"key": 0, "bearer": 0}
        assert _post(emu, token=token)[0] == 200  # counters reset, tokens kept
        assert emu.stats()["auth"] == {"key": 0, "bearer": 1}


def test_tokens_are_issued_safely_from_many_threads_while_serving() -> None:
    with Emulator() as emu:
        tokens: list[str] = []
        lock = threading.Lock()

        def issue() -> None:
            mine = [emu.issue_token() for _ in range(100)]
            with lock:
                tokens.extend(mine)

        threads = [threading.Thread(target=issue) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(tokens)) == 400
        assert emu.stats()["tokens_issued"] == 400
        assert _post(emu, token=tokens[0])[0] == 200
        assert _post(emu, token=tokens[-1])[0] == 200


def test_expired_tokens_are_forgotten_when_new_ones_are_issued() -> None:
    clock = FakeClock()
    emu = Emulator(clock=clock)
    for _ in range(10):
        emu.issue_token(ttl_s=1)
    clock.now += 1
    kept = emu.issue_token(ttl_s=1)
    assert list(emu._state.issued) == [kept]
