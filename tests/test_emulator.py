from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from polars_azurechat.emulator import Emulator, answer_for


def _post(
    emu: Emulator, body: object, *, key: str | None = None, path: str | None = None
) -> tuple[int, dict[str, str], object]:
    url = emu.url + (
        path or "/openai/deployments/d/chat/completions?api-version=2024-10-21"
    )
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"api-key": key or emu.api_key, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_official_sdk_works_against_it() -> None:
    with Emulator() as emu:
        client = openai.AzureOpenAI(
            azure_endpoint=emu.url,
            api_key=emu.api_key,
            api_version="2024-10-21",
            max_retries=0,
        )
        reply = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "What is 53 + 53?"}],
            max_tokens=20,
        )
        assert reply.choices[0].message.content == "106"
        assert reply.usage is not None and reply.usage.prompt_tokens > 0
        bad = openai.AzureOpenAI(
            azure_endpoint=emu.url,
            api_key="nope",
            api_version="2024-10-21",
            max_retries=0,
        )
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(
                model="d", messages=[{"role": "user", "content": "x"}]
            )
        with urllib.request.urlopen(emu.url + "/stats") as resp:
            stats = json.loads(resp.read())
        assert stats["statuses"] == {"200": 1, "401": 1}


def test_wrong_key_gets_azures_401_body() -> None:
    with Emulator() as emu:
        status, _, body = _post(
            emu, {"messages": [{"role": "user", "content": "x"}]}, key="bad"
        )
    assert status == 401
    assert isinstance(body, dict) and "Access denied" in body["error"]["message"]


def test_missing_api_version_is_404() -> None:
    with Emulator() as emu:
        status, _, _ = _post(
            emu,
            {"messages": [{"role": "user", "content": "x"}]},
            path="/openai/deployments/d/chat/completions",
        )
    assert status == 404


def test_rate_limit_window_sends_azure_headers() -> None:
    with Emulator(requests_per_minute=12) as emu:  # 2 per 10-s window
        body = {
            "messages": [{"role": "user", "content": "What is 1 + 1?"}],
            "max_tokens": 5,
        }
        s1, h1, _ = _post(emu, body)
        s2, h2, _ = _post(emu, body)
        s3, h3, err = _post(emu, body)
    assert (s1, s2, s3) == (200, 200, 429)
    assert h1["x-ratelimit-remaining-requests"] == "1"
    assert h2["x-ratelimit-remaining-requests"] == "0"
    assert 9000 < int(h3["retry-after-ms"]) <= 10000
    assert h3["Retry-After"] == "10"
    assert isinstance(err, dict) and err["error"]["code"] == "429"


def test_token_quota_counts_prompt_plus_max_tokens() -> None:
    with Emulator(tokens_per_minute=6000) as emu:  # 1000 tokens per window
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 600}
        assert _post(emu, body)[0] == 200
        assert _post(emu, body)[0] == 429


def test_arithmetic_answers() -> None:
    assert answer_for("What is 53 + 53?") == "106"
    assert answer_for("what is 10 - 20") == "-10"
    assert answer_for("What is 6 x 7?") == "42"
    assert answer_for("What is 1 / 0?") == "undefined"
    assert answer_for("[emu:500*1] What is 2 + 2?") == "4"
    assert answer_for("[emu:filter] hello") == "Echo: hello"


def test_random_faults_are_counted() -> None:
    with Emulator(error_rate=0.5, seed=1) as emu:
        statuses = [
            _post(emu, {"messages": [{"role": "user", "content": "x"}]})[0]
            for _ in range(40)
        ]
        stats = emu.stats()
    assert set(statuses) == {200, 500, 503}
    assert stats["requests"] == 40
    assert sum(stats["faults"].values()) == statuses.count(500) + statuses.count(503)
