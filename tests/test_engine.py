"""The engine's retry policy and fault handling, with an injected sleep (no real waiting)."""

from __future__ import annotations

import pytest

from polars_azurechat._auth import KeyAuth
from polars_azurechat._engine import ChatEngine
from polars_azurechat._ratelimit import RateLimiter
from polars_azurechat._transport import Transport
from polars_azurechat._types import ChatRequest
from polars_azurechat.emulator import Emulator
from polars_azurechat.errors import (
    APIConnectionError,
    APITimeoutError,
    ContentFilterError,
    ContextLengthError,
    DeadlineExceededError,
    MalformedResponseError,
    ServerError,
)

from .fakes import FakeClock


def _engine(
    emu: Emulator, clock: FakeClock, *, timeout_s: float = 5.0, **kw: object
) -> ChatEngine:
    transport = Transport(
        endpoint=emu.url,
        deployment="gpt-4o-mini",
        api_version="2024-10-21",
        auth=KeyAuth({"api-key": emu.api_key}),
        timeout_s=timeout_s,
    )
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    return ChatEngine(transport, limiter=limiter, sleep=clock.sleep, clock=clock, **kw)  # type: ignore[arg-type]


def _req(text: str) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}])


def test_server_errors_are_retried_waiting_what_the_server_asked(
    clock: FakeClock,
) -> None:
    with Emulator(retry_after_ms=250) as emu:
        engine = _engine(emu, clock)
        [r] = engine.run([_req("[emu:500*2] What is 1 + 1?")])
    assert r is not None and r.content == "2" and r.attempts == 3
    # the server's retry-after-ms sets the wait (and the 429-free path never sleeps)
    assert clock.sleeps == [0.25, 0.25]
    assert emu.stats()["statuses"] == {"200": 1, "500": 2}
    assert engine.stats.retries == 2


def test_without_retry_after_backoff_grows_exponentially(clock: FakeClock) -> None:
    with Emulator(retry_after_ms=None) as emu:
        engine = _engine(emu, clock, max_attempts=5)
        [r] = engine.run([_req("[emu:503*4] What is 2 + 2?")])
    assert r is not None and r.content == "4" and r.attempts == 5
    assert len(clock.sleeps) == 4
    # 0.5 * 2**k plus jitter in [0, 1)
    for k, wait in enumerate(clock.sleeps):
        assert 0.5 * 2**k <= wait < 0.5 * 2**k + 1


def test_429_pauses_every_worker_until_the_named_time(clock: FakeClock) -> None:
    with Emulator(retry_after_ms=1500) as emu:
        engine = _engine(emu, clock)
        [r] = engine.run([_req("[emu:429*1] What is 3 + 3?")])
    assert r is not None and r.content == "6" and r.attempts == 2
    assert engine.stats.rate_limited == 1
    # retry waits 1.5 s (tenacity) and the shared cooldown has then elapsed
    assert clock.sleeps == [1.5]
    assert emu.stats()["statuses"] == {"200": 1, "429": 1}


def test_attempts_run_out_into_a_row_error(clock: FakeClock) -> None:
    with Emulator() as emu:
        engine = _engine(emu, clock, max_attempts=3)
        r1, r2 = engine.run([_req("[emu:500*9] x"), _req("What is 1 + 2?")])
    assert r1 is not None and isinstance(r1.exception, ServerError)
    assert r1.attempts == 3 and r1.content is None
    assert r2 is not None and r2.content == "3"
    assert emu.stats()["statuses"] == {"200": 1, "500": 3}


def test_content_filter_and_context_errors_are_not_retried(clock: FakeClock) -> None:
    with Emulator(context_tokens=50) as emu:
        engine = _engine(emu, clock)
        r1, r2 = engine.run([_req("[emu:filter] x"), _req("long " * 100)])
    assert r1 is not None and isinstance(r1.exception, ContentFilterError)
    assert r1.exception.categories == ("violence",)
    assert r2 is not None and isinstance(r2.exception, ContextLengthError)
    assert "maximum context length is 50 tokens" in str(r2.exception)
    assert "estimated request tokens: " in str(r2.exception)
    assert emu.stats()["statuses"] == {"400": 2}
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("hang", APITimeoutError),
        ("drop", APIConnectionError),
        ("malformed", MalformedResponseError),
    ],
)
def test_transport_faults_are_retried(
    clock: FakeClock, fault: str, error: type[Exception]
) -> None:
    with Emulator() as emu:
        engine = _engine(emu, clock, timeout_s=0.2)
        [r] = engine.run([_req(f"[emu:{fault}*1] What is 5 + 5?")])
    assert r is not None and r.content == "10" and r.attempts == 2
    assert engine.stats.failures_by_kind == {error.__name__: 1}
    assert emu.stats()["faults"] == {fault: 1}


def test_connection_refused_is_a_connection_error(clock: FakeClock) -> None:
    with Emulator() as emu:
        url = emu.url
    transport = Transport(
        endpoint=url,
        deployment="d",
        api_version="v",
        auth=KeyAuth({"api-key": "k"}),
        timeout_s=1,
    )
    engine = ChatEngine(transport, max_attempts=2, sleep=clock.sleep)
    [r] = engine.run([_req("hi")])
    assert r is not None and isinstance(r.exception, APIConnectionError)
    assert r.attempts == 2


def test_engine_is_reusable_after_a_run(clock: FakeClock) -> None:
    with Emulator() as emu:
        engine = _engine(emu, clock)
        assert [r.content for r in engine.run([_req("What is 1 + 1?")]) if r] == ["2"]
        assert [r.content for r in engine.run([_req("What is 2 + 2?")]) if r] == ["4"]
        assert engine.stats.answered == 2


def test_wide_concurrency_runs_all_in_flight(clock: FakeClock) -> None:
    with Emulator(latency_ms=100) as emu:
        engine = _engine(emu, clock, max_concurrency=500)
        results = engine.run([_req(f"What is {i} + 0?") for i in range(500)])
    assert [r.content for r in results if r] == [str(i) for i in range(500)]
    assert emu.stats()["peak_in_flight"] > 250


def test_identical_requests_are_sent_once(clock: FakeClock) -> None:
    with Emulator() as emu:
        engine = _engine(emu, clock)
        rows = [_req("What is 1 + 1?"), _req("What is 2 + 2?"), _req("What is 1 + 1?")]
        results = engine.run(rows * 3)
    assert [r.content for r in results if r] == ["2", "4", "2"] * 3
    assert emu.stats()["requests"] == 2
    assert engine.stats.deduplicated == 7
    assert engine.stats.answered == 9
    assert [r.attempts for r in results if r][:3] == [1, 1, 0]


def test_deadline_fails_what_is_left_without_hanging() -> None:
    clock = FakeClock()
    with Emulator(retry_after_ms=None) as emu:
        engine = _engine(emu, clock, deadline_s=5.0, max_attempts=50)
        r1, r2 = engine.run([_req("[emu:500*99] x"), _req("What is 1 + 1?")])
    assert r2 is not None and r2.content == "2"
    assert r1 is not None and r1.content is None
    # backoff (fake) time ran into the deadline: the row stopped retrying, with a reason
    assert r1.attempts < 50
    assert clock.now - 1000 < 5.0  # it never slept past the deadline
    assert isinstance(r1.exception, ServerError)  # the last real reason is kept


def test_everything_failing_ends_with_every_row_explained(clock: FakeClock) -> None:
    with Emulator(error_rate=1.0, retry_after_ms=1) as emu:
        engine = _engine(emu, clock, max_attempts=3)
        results = engine.run([_req(f"What is {i} + 1?") for i in range(50)])
    assert all(r is not None and isinstance(r.exception, ServerError) for r in results)
    assert all(r is not None and r.attempts == 3 for r in results)
    assert emu.stats()["requests"] == 150


def test_fault_matrix_every_row_answered_and_every_fault_accounted(
    clock: FakeClock,
) -> None:
    settings = {
        "error_rate": 0.10,
        "hang_rate": 0.02,
        "drop_rate": 0.02,
        "malformed_rate": 0.01,
        "retry_after_ms": None,  # exponential backoff (on the fake clock)
        "seed": 3,
    }
    with Emulator(**settings) as emu:  # type: ignore[arg-type]
        # timeout_s leaves a loaded 2-core machine time to deliver the fast faults
        engine = _engine(emu, clock, timeout_s=1.0, max_concurrency=100, max_attempts=8)
        results = engine.run([_req(f"What is {i} + 2?") for i in range(600)])
        stats = emu.stats()
    assert [r.content for r in results if r] == [str(i + 2) for i in range(600)]
    faults = stats["faults"]
    assert set(faults) == {"500", "503", "hang", "drop", "malformed"}
    seen = engine.stats.failures_by_kind
    assert seen["ServerError"] == faults["500"] + faults["503"]
    assert seen["APITimeoutError"] == faults["hang"]
    assert seen["APIConnectionError"] == faults["drop"]
    assert seen["MalformedResponseError"] == faults["malformed"]
    assert stats["requests"] == 600 + sum(faults.values())


def test_429s_do_not_use_up_attempts(clock: FakeClock) -> None:
    with Emulator(retry_after_ms=1500) as emu:
        engine = _engine(emu, clock, max_attempts=3)
        [r] = engine.run([_req("[emu:429*8] What is 4 + 4?")])
    assert r is not None and r.content == "8"
    assert r.attempts == 9  # every request sent for the row, 429s included
    assert emu.stats()["statuses"] == {"200": 1, "429": 8}
    assert clock.now - 1000 == pytest.approx(8 * 1.5)  # waited what was asked


def test_a_row_the_server_never_serves_ends_at_the_deadline(clock: FakeClock) -> None:
    with Emulator(retry_after_ms=1500) as emu:
        engine = _engine(emu, clock, max_attempts=3, deadline_s=10.0)
        [r] = engine.run([_req("[emu:429*999] What is 4 + 4?")])
    assert r is not None and r.content is None
    assert isinstance(r.exception, DeadlineExceededError)
    assert clock.now - 1000 <= 10.0 + 1.5
    assert emu.stats()["statuses"] == {"429": 7}


def test_a_token_quota_without_max_tokens_is_warned_about_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with Emulator(tokens_per_minute=10_000_000) as emu:
        engine = _engine(emu, clock)
        engine.run([_req(f"What is {i} + 4?") for i in range(5)])
    warnings = [r for r in caplog.records if "max_tokens is not set" in r.message]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
