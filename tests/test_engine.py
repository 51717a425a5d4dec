"""The engine's retry policy and fault handling, with an injected sleep (no real waiting).

Most tests send to a :class:`~polars_azurechat.testing.MemoryTransport` (no server,
no sockets) and assert on what its handler counted; the last ones are about failures
only a socket has (a hang, a dropped connection, a refused port) and keep the
emulator over HTTP.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from polars_azurechat._types import ChatRequest, ChatResult
from polars_azurechat.emulator import Emulator, answer_for
from polars_azurechat.engine.core import ChatEngine
from polars_azurechat.errors import (
    APIConnectionError,
    APITimeoutError,
    ContentFilterError,
    ContextLengthError,
    DeadlineExceededError,
    MalformedResponseError,
    ServerError,
)
from polars_azurechat.testing import (
    MemoryRequest,
    MemoryResponse,
    MemoryTransport,
    chat_completion,
    error_response,
)
from polars_azurechat.transport.auth import KeyAuth
from polars_azurechat.transport.http import ChatTransport, Transport
from polars_azurechat.transport.ramp import RAMP_QUIET_S
from polars_azurechat.transport.ratelimit import RateLimiter

from .fakes import FakeClock


class Server:
    """A handler for :class:`MemoryTransport` that answers like the emulator.

    Every prompt gets the emulator's answer (``answer_for``), except that a prompt
    named in ``faults`` first gets the responses its iterator gives, and ``fail``
    answers every request. ``statuses`` counts what was answered.
    """

    def __init__(
        self,
        faults: Mapping[str, Iterator[MemoryResponse]] | None = None,
        *,
        fail: MemoryResponse | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.faults = dict(faults or {})
        self.fail = fail
        self.headers = dict(headers or {})
        self.statuses: collections.Counter[str] = collections.Counter()

    def __call__(self, request: MemoryRequest) -> MemoryResponse:
        prompt = request.prompt
        response = self.fail or next(self.faults.get(prompt, iter(())), None)
        if response is None:
            response = chat_completion(answer_for(prompt), headers=self.headers)
        self.statuses[str(response.status)] += 1
        return response


def _times(response: MemoryResponse, n: int | None = None) -> Iterator[MemoryResponse]:
    return itertools.repeat(response) if n is None else itertools.repeat(response, n)


def _error(status: int, retry_after_ms: int | None = None) -> MemoryResponse:
    headers = {} if retry_after_ms is None else {"retry-after-ms": str(retry_after_ms)}
    return error_response(status, f"{status} from the test", headers=headers)


def _memory_engine(
    handler: Server, clock: FakeClock, **kw: object
) -> tuple[ChatEngine, MemoryTransport]:
    transport = MemoryTransport(handler)
    return _with(transport, clock, **kw), transport


def _with(transport: ChatTransport, clock: FakeClock, **kw: object) -> ChatEngine:
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    return ChatEngine(transport, limiter=limiter, sleep=clock.sleep, clock=clock, **kw)  # type: ignore[arg-type]


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
    return _with(transport, clock, **kw)


def _req(text: str) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}])


def test_server_errors_are_retried_waiting_what_the_server_asked(
    clock: FakeClock,
) -> None:
    server = Server({"What is 1 + 1?": _times(_error(500, retry_after_ms=250), 2)})
    engine, transport = _memory_engine(server, clock)
    [r] = engine.run([_req("What is 1 + 1?")])
    assert r is not None and r.content == "2" and r.attempts == 3
    # the server's retry-after-ms sets the wait (and the 429-free path never sleeps)
    assert clock.sleeps == [0.25, 0.25]
    assert server.statuses == {"200": 1, "500": 2}
    assert len(transport.requests) == 3
    assert all(q.body == transport.requests[0].body for q in transport.requests)
    assert engine.runs.stats.retries == 2


def test_without_retry_after_backoff_grows_exponentially(clock: FakeClock) -> None:
    server = Server({"What is 2 + 2?": _times(_error(503), 4)})
    engine, _ = _memory_engine(server, clock, max_attempts=5)
    [r] = engine.run([_req("What is 2 + 2?")])
    assert r is not None and r.content == "4" and r.attempts == 5
    assert len(clock.sleeps) == 4
    # 0.5 * 2**k plus jitter in [0, 1)
    for k, wait in enumerate(clock.sleeps):
        assert 0.5 * 2**k <= wait < 0.5 * 2**k + 1


def test_429_pauses_every_worker_until_the_named_time(clock: FakeClock) -> None:
    server = Server({"What is 3 + 3?": _times(_error(429, retry_after_ms=1500), 1)})
    engine, _ = _memory_engine(server, clock)
    [r] = engine.run([_req("What is 3 + 3?")])
    assert r is not None and r.content == "6" and r.attempts == 2
    assert engine.runs.stats.rate_limited == 1
    # retry waits 1.5 s (tenacity) and the shared cooldown has then elapsed
    assert clock.sleeps == [1.5]
    assert server.statuses == {"200": 1, "429": 1}


def test_attempts_run_out_into_a_row_error(clock: FakeClock) -> None:
    server = Server({"x": _times(_error(500, retry_after_ms=1), 9)})
    engine, _ = _memory_engine(server, clock, max_attempts=3)
    r1, r2 = engine.run([_req("x"), _req("What is 1 + 2?")])
    assert r1 is not None and isinstance(r1.exception, ServerError)
    assert r1.attempts == 3 and r1.content is None
    assert r2 is not None and r2.content == "3"
    assert server.statuses == {"200": 1, "500": 3}


def test_content_filter_and_context_errors_are_not_retried(clock: FakeClock) -> None:
    filtered = error_response(
        400,
        "The response was filtered",
        code="content_filter",
        innererror={"content_filter_result": {"violence": {"filtered": True}}},
    )
    too_long = error_response(
        400,
        "This model's maximum context length is 50 tokens.",
        code="context_length_exceeded",
    )
    server = Server({"x": _times(filtered), "long " * 100: _times(too_long)})
    engine, transport = _memory_engine(server, clock)
    r1, r2 = engine.run([_req("x"), _req("long " * 100)])
    assert r1 is not None and isinstance(r1.exception, ContentFilterError)
    assert r1.exception.categories == ("violence",)
    assert r2 is not None and isinstance(r2.exception, ContextLengthError)
    assert "maximum context length is 50 tokens" in str(r2.exception)
    assert "estimated request tokens: " in str(r2.exception)
    assert server.statuses == {"400": 2}
    assert len(transport.requests) == 2
    assert max(clock.sleeps, default=0) <= RAMP_QUIET_S  # the ramp; no backoff


def test_engine_is_reusable_after_a_run(clock: FakeClock) -> None:
    engine, transport = _memory_engine(Server(), clock)
    assert [r.content for r in engine.run([_req("What is 1 + 1?")]) if r] == ["2"]
    assert [r.content for r in engine.run([_req("What is 2 + 2?")]) if r] == ["4"]
    assert engine.runs.stats.answered == 2
    assert [q.prompt for q in transport.requests] == [
        "What is 1 + 1?",
        "What is 2 + 2?",
    ]


def test_wide_concurrency_runs_all_in_flight(clock: FakeClock) -> None:
    rows = 500
    everyone_in = asyncio.Event()
    server = Server()

    async def handler(request: MemoryRequest) -> MemoryResponse:
        # slow start sends the first row alone; the others are answered only once
        # all of them are in flight together (a deadlock, cut short, if they are not)
        if len(transport.requests) > 1:
            if transport.in_flight == rows - 1:
                everyone_in.set()
            await asyncio.wait_for(everyone_in.wait(), timeout=30)
        return server(request)

    transport = MemoryTransport(handler)
    engine = _with(transport, clock, max_concurrency=rows)
    results = engine.run([_req(f"What is {i} + 0?") for i in range(rows)])
    assert [r.content for r in results if r] == [str(i) for i in range(rows)]
    assert transport.peak_in_flight == rows - 1
    assert engine.runs.stats.peak_in_flight == rows - 1


def test_identical_requests_are_sent_once(clock: FakeClock) -> None:
    engine, transport = _memory_engine(Server(), clock)
    rows = [_req("What is 1 + 1?"), _req("What is 2 + 2?"), _req("What is 1 + 1?")]
    results = engine.run(rows * 3)
    assert [r.content for r in results if r] == ["2", "4", "2"] * 3
    assert len(transport.requests) == 2
    assert sorted(q.prompt for q in transport.requests) == [
        "What is 1 + 1?",
        "What is 2 + 2?",
    ]
    assert engine.runs.stats.deduplicated == 7
    assert engine.runs.stats.answered == 9
    assert [r.attempts for r in results if r][:3] == [1, 1, 0]


def test_a_later_batch_of_a_run_takes_what_an_earlier_one_was_answered(
    clock: FakeClock,
) -> None:
    # a frame of many chunks, a lazy query's waves, the CLI's batches: one run, many
    # batches; a row asking what an earlier batch was answered is not sent again
    engine, transport = _memory_engine(Server(), clock)
    one, two = _req("What is 1 + 1?"), _req("What is 2 + 2?")
    with engine.runs.scope() as run:
        for batch in ([one, one], [one, two, None], [two]):
            (results,) = [r for _, r in engine.pipeline([(None, batch)])]
            expected = [None if q is None else "2" if q is one else "4" for q in batch]
            assert [r.content if r else None for r in results] == expected
        assert len(transport.requests) == 2
        assert run.stats.deduplicated == 3 and run.stats.answered == 5
        assert [r.attempts for r in results if r] == [0]  # not sent: no attempt
    # the run is over: its answers are dropped (on the loop), and a new run sends again
    engine.run([one])
    assert len(transport.requests) == 3
    assert list(run.recent.keys()) == []
    # past its budget a run forgets its oldest answers, and a row asking is sent again
    with engine.runs.scope() as run:
        run.recent.budget = 1
        for batch in ([one], [one]):
            list(engine.pipeline([(None, batch)]))
    assert len(transport.requests) == 5


def test_with_a_cache_a_run_s_repeats_are_deduplicated_and_a_new_run_s_cached(
    clock: FakeClock, tmp_path: Path
) -> None:
    from polars_azurechat.store.sqlite import SqliteCache

    cache = SqliteCache(str(tmp_path / "c.sqlite"))
    engine, transport = _memory_engine(Server(), clock, cache=cache)
    one = _req("What is 1 + 1?")
    with engine.runs.scope() as run:
        for batch in ([one, one], [one]):
            list(engine.pipeline([(None, batch)]))
    assert len(transport.requests) == 1
    assert (run.stats.deduplicated, run.stats.cached) == (2, 0)
    engine.run([one])  # a new run: its memory is empty, the cache answers
    assert engine.runs.last is not None
    assert (engine.runs.last.stats.cached, len(transport.requests)) == (1, 1)
    engine.close()


def test_a_run_s_memory_is_measured_with_what_an_answer_holds() -> None:
    from polars_azurechat.engine.frontdoor import RECENT_OVERHEAD, _answer_bytes

    short = ChatResult(content="positive")
    assert _answer_bytes(short) == RECENT_OVERHEAD + 8
    # a typed value parsed from the text, log-probabilities, text that is not ASCII
    typed = ChatResult(content='{"label":"positive"}', parsed={"label": "positive"})
    assert _answer_bytes(typed) == RECENT_OVERHEAD + 2 * 20
    tokens = tuple((str(i), -0.1) for i in range(1_000))
    assert _answer_bytes(ChatResult(content="x", logprobs=tokens)) > 150_000
    assert _answer_bytes(ChatResult(content="é" * 10)) == RECENT_OVERHEAD + 40


def test_deadline_fails_what_is_left_without_hanging() -> None:
    clock = FakeClock()
    server = Server({"x": _times(_error(500))})
    engine, _ = _memory_engine(server, clock, deadline_s=5.0, max_attempts=50)
    r1, r2 = engine.run([_req("x"), _req("What is 1 + 1?")])
    assert r2 is not None and r2.content == "2"
    assert r1 is not None and r1.content is None
    # backoff (fake) time ran into the deadline: the row stopped retrying, with a reason
    assert r1.attempts < 50
    assert server.statuses["500"] == r1.attempts
    assert clock.now - 1000 < 5.0  # it never slept past the deadline
    assert isinstance(r1.exception, ServerError)  # the last real reason is kept


def test_everything_failing_ends_with_every_row_explained(clock: FakeClock) -> None:
    server = Server(fail=_error(500, retry_after_ms=1))
    engine, transport = _memory_engine(server, clock, max_attempts=3)
    results = engine.run([_req(f"What is {i} + 1?") for i in range(50)])
    assert all(r is not None and isinstance(r.exception, ServerError) for r in results)
    assert all(r is not None and r.attempts == 3 for r in results)
    assert len(transport.requests) == 150
    assert collections.Counter(q.prompt for q in transport.requests) == {
        f"What is {i} + 1?": 3 for i in range(50)
    }


def test_429s_do_not_use_up_attempts(clock: FakeClock) -> None:
    server = Server({"What is 4 + 4?": _times(_error(429, retry_after_ms=1500), 8)})
    engine, _ = _memory_engine(server, clock, max_attempts=3)
    [r] = engine.run([_req("What is 4 + 4?")])
    assert r is not None and r.content == "8"
    assert r.attempts == 9  # every request sent for the row, 429s included
    assert server.statuses == {"200": 1, "429": 8}
    assert clock.now - 1000 == pytest.approx(8 * 1.5)  # waited what was asked


def test_a_row_the_server_never_serves_ends_at_the_deadline(clock: FakeClock) -> None:
    server = Server({"What is 4 + 4?": _times(_error(429, retry_after_ms=1500))})
    engine, _ = _memory_engine(server, clock, max_attempts=3, deadline_s=10.0)
    [r] = engine.run([_req("What is 4 + 4?")])
    assert r is not None and r.content is None
    assert isinstance(r.exception, DeadlineExceededError)
    assert clock.now - 1000 <= 10.0 + 1.5
    assert server.statuses == {"429": 7}


def test_a_token_quota_without_max_tokens_is_warned_about_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    # a deployment with a token quota says what is left of it in every answer
    server = Server(headers={"x-ratelimit-remaining-tokens": "9999000"})
    engine, _ = _memory_engine(server, clock)
    engine.run([_req(f"What is {i} + 4?") for i in range(5)])
    warnings = [r for r in caplog.records if "max_tokens is not set" in r.message]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"


# --- failures only a socket has: the emulator over HTTP ----------------------------


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
    assert engine.runs.stats.failures_by_kind == {error.__name__: 1}
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
    seen = engine.runs.stats.failures_by_kind
    assert seen["ServerError"] == faults["500"] + faults["503"]
    assert seen["APITimeoutError"] == faults["hang"]
    assert seen["APIConnectionError"] == faults["drop"]
    assert seen["MalformedResponseError"] == faults["malformed"]
    assert stats["requests"] == 600 + sum(faults.values())


def test_a_parameter_every_row_would_repeat_stops_the_run(clock: FakeClock) -> None:
    from polars_azurechat.errors import UnsupportedParameterError

    refused = error_response(
        400,
        "Unsupported parameter: 'max_tokens' is not supported with this model. "
        "Use 'max_completion_tokens' instead.",
        code="unsupported_parameter",
        param="max_tokens",
        type="invalid_request_error",
    )
    server = Server(fail=refused)
    engine, transport = _memory_engine(
        server, clock, params={"max_tokens": 5}, max_concurrency=8
    )
    with pytest.raises(UnsupportedParameterError) as info:
        engine.run([_req(f"What is {i} + 1?") for i in range(1000)])
    assert info.value.param == "max_tokens"
    assert "use max_completion_tokens=" in str(info.value)
    assert "every row would repeat it" in str(info.value)
    # the first answer stops it: what went before it came back, nothing after
    assert len(transport.requests) <= 2
    assert server.statuses == {"400": len(transport.requests)}
