"""How a run stops on Ctrl-C, through an in-memory transport (no process, no signal).

The signal's part (the wakeup fd, a real SIGINT) is tested on real subprocesses in
test_stop_grace.py; here the engine is told what the wakeup fd would tell it
(``engine.interrupt("Ctrl-C")`` on the loop, once per signal) while the transport holds
its answers until the test lets them go.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import faulthandler
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from polars_azurechat._types import ChatRequest, ChatResult
from polars_azurechat.engine import loop as _loop
from polars_azurechat.engine.core import ChatEngine
from polars_azurechat.store.sqlite import SqliteCache
from polars_azurechat.testing import (
    MemoryRequest,
    MemoryResponse,
    MemoryTransport,
    chat_completion,
    error_response,
)
from polars_azurechat.transport.ratelimit import RateLimiter

from .fakes import FakeClock

CONCURRENCY = 4


class Held:
    """A server whose answers wait until the test lets them go (on the loop)."""

    def __init__(self, *, fail_first: bool = False) -> None:
        self.all_in = threading.Event()
        self.released = asyncio.Event()
        self.fail_first = fail_first
        self.transport = MemoryTransport(self)

    async def __call__(self, request: MemoryRequest) -> MemoryResponse:
        if self.transport.in_flight == CONCURRENCY:
            self.all_in.set()
        await self.released.wait()
        if self.fail_first and len(self.transport.requests) <= CONCURRENCY:
            return error_response(500, "try again")
        return chat_completion(f"answer to {request.prompt}", prompt_tokens=3)

    def release(self) -> None:
        """Let every answer held, and every later one, go (from any thread)."""
        _loop.loop().call_soon_threadsafe(self.released.set)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[SqliteCache]:
    cache = SqliteCache(tmp_path / "answers.sqlite")
    yield cache
    cache.close()


def _engine(server: Held, cache: SqliteCache, clock: FakeClock) -> ChatEngine:
    return ChatEngine(
        server.transport,
        limiter=RateLimiter(clock=clock, sleep=clock.sleep),
        sleep=clock.sleep,
        clock=clock,
        max_concurrency=CONCURRENCY,
        cache=cache,
    )


class Running:
    """``engine.run(rows)`` in a thread: what it returned or raised."""

    def __init__(self, engine: ChatEngine, rows: int) -> None:
        self.engine = engine
        self.requests = [
            ChatRequest([{"role": "user", "content": f"q{i}"}]) for i in range(rows)
        ]
        self.raised: BaseException | None = None
        self.results: list[ChatResult | None] | None = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.results = self.engine.run(self.requests)
        except BaseException as exc:
            self.raised = exc

    def interrupt(self) -> None:
        """What one Ctrl-C tells the engine (on the loop, as the wakeup fd does)."""
        _loop.loop().call_soon_threadsafe(self.engine.interrupt, "Ctrl-C")

    def ended(self) -> str:
        self.thread.join(30)
        if self.thread.is_alive():  # a hang: every thread's stack, to find where
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        assert not self.thread.is_alive()
        assert isinstance(self.raised, KeyboardInterrupt), self.raised
        return str(self.raised)


def test_a_stop_admits_nothing_and_keeps_the_answers_in_flight(
    cache: SqliteCache, clock: FakeClock
) -> None:
    server = Held()
    engine = _engine(server, cache, clock)
    running = Running(engine, 40)
    assert server.all_in.wait(30)
    running.interrupt()
    server.release()  # after the stop: the loop takes both in this order
    message = running.ended()
    # nothing admitted after the stop; every request sent was answered and kept
    assert len(server.transport.requests) == CONCURRENCY
    keys = [engine.shape.key(r) for r in running.requests]
    assert len(cache.get_many(keys)) == CONCURRENCY
    note = (
        f"no request was admitted after Ctrl-C; the {CONCURRENCY} answers of the "
        f"{CONCURRENCY} requests in flight arrived within the 1.5 s grace and were kept"
    )
    assert f"; {note}; answers so far are in the cache" in message
    assert engine.runs.stats.stopped == note
    # written before the raise; so the process's exit does not wait for the disk's
    # housekeeping after them (tests/test_slow_disk.py)
    assert cache.hurry
    engine.close()


def test_a_retry_in_the_grace_is_not_sent(cache: SqliteCache, clock: FakeClock) -> None:
    server = Held(fail_first=True)  # the answers in flight are 500s: retryable
    engine = _engine(server, cache, clock)
    running = Running(engine, 40)
    assert server.all_in.wait(30)
    running.interrupt()
    server.release()
    message = running.ended()
    assert len(server.transport.requests) == CONCURRENCY  # no resend after the stop
    assert "the 0 answers of the 4 requests in flight arrived" in message
    engine.close()


def test_a_grace_that_runs_out_drops_what_is_still_in_flight_and_says_so(
    cache: SqliteCache, clock: FakeClock
) -> None:
    server = Held()  # never released: the answers in flight do not come
    engine = _engine(server, cache, clock)
    engine.runs.stop_grace_s = 0.0  # the grace ends at once (no test waits 1.5 s)
    running = Running(engine, 40)
    assert server.all_in.wait(30)
    running.interrupt()
    message = running.ended()
    assert (
        "no request was admitted after Ctrl-C; 0 answers that arrived within the 0 s "
        "grace were kept, 4 requests still in flight were dropped (Azure may bill "
        "them)" in message
    )
    assert len(server.transport.requests) == CONCURRENCY
    engine.close()


def _stopped_once(
    cache: SqliteCache, clock: FakeClock
) -> tuple[Held, ChatEngine, Running]:
    """A run with its answers held, after a first Ctrl-C (a grace only a second ends)."""
    server = Held()
    engine = _engine(server, cache, clock)
    engine.runs.stop_grace_s = 3600.0  # only the second signal can end it
    running = Running(engine, 40)
    assert server.all_in.wait(30)
    running.interrupt()
    return server, engine, running


def test_a_second_ctrl_c_stops_at_once(cache: SqliteCache, clock: FakeClock) -> None:
    _, engine, running = _stopped_once(cache, clock)
    running.interrupt()
    message = running.ended()
    assert (
        "interrupted by Ctrl-C: 0 rows answered, 4 requests sent; Ctrl-C again stopped "
        "it at once: 0 answers that arrived after the first were kept, 4 requests in "
        "flight were dropped (Azure may bill them)" in message
    )
    assert engine.runs.stats.stopped is not None
    assert cache.hurry
    assert "Ctrl-C again stopped it at once" in str(engine.runs.stats.stopped)
    engine.close()


def test_answers_read_as_the_second_ctrl_c_halts_are_kept_and_not_said_dropped(
    cache: SqliteCache, clock: FakeClock
) -> None:
    # The halt cancels the run's batches a loop turn later (the cancellation of a
    # batch's future reaches its task through call_soon_threadsafe): answers already
    # read in that turn are delivered and kept. They once were said dropped (a CI run
    # said 7 dropped where the cache showed 5 unanswered).
    server, engine, running = _stopped_once(cache, clock)

    def answers_then_second_ctrl_c() -> None:  # one loop turn: as it races for real
        server.released.set()  # the held answers are read ...
        engine.interrupt("Ctrl-C")  # ... as the second signal halts the run

    _loop.loop().call_soon_threadsafe(answers_then_second_ctrl_c)
    message = running.ended()
    keys = [engine.shape.key(r) for r in running.requests]
    kept = len(cache.get_many(keys))
    assert kept == CONCURRENCY == len(server.transport.requests)
    assert (
        f"Ctrl-C again stopped it at once: {kept} answers that arrived after the "
        "first were kept, 0 requests in flight were dropped" in message
    )
    assert engine.runs.stats.stopped is not None
    assert "0 requests in flight were dropped" in engine.runs.stats.stopped
    engine.close()


def test_a_batch_registered_after_the_halt_is_cancelled(
    cache: SqliteCache, clock: FakeClock
) -> None:
    # The race behind a rare hang under load: the batch started on the loop and the
    # stop halted the run before the submitting thread registered the batch's
    # future (it was kept off the GIL), so the halt missed it and it never ended.
    server = Held()
    engine = _engine(server, cache, clock)
    requests = [ChatRequest([{"role": "user", "content": f"q{i}"}]) for i in range(40)]
    with engine.runs.scope() as run:
        future = _loop.submit(engine._run_batch(run, requests))  # not registered yet
        assert server.all_in.wait(30)

        async def halt() -> None:  # the stop, on the loop, before the registration
            engine.runs.halt(run, "again")

        _loop.call(halt())
        assert run.halted == "again"
        assert not future.done()  # the halt missed it: its requests are still held
        run.track(future)
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(30)
        server.release()
    engine.close()


class HeldFirst(Held):
    """A server holding every answer; ``all_in`` once the first request is in."""

    async def __call__(self, request: MemoryRequest) -> MemoryResponse:
        self.all_in.set()
        return await super().__call__(request)


def test_a_stop_leaves_no_shared_request_behind_for_the_next_run(
    cache: SqliteCache, clock: FakeClock
) -> None:
    # batches waiting for a request another batch sends: a stop cancels them all, and
    # a waiting row took its sender's cancellation for its own end and sent the
    # request itself, never answered (admissions stopped); the next run asking the
    # same prompt waited for it for ever (found in review)
    server = HeldFirst()
    engine = _engine(server, cache, clock)
    engine.runs.stop_grace_s = 0.0
    dup = ChatRequest([{"role": "user", "content": "dup"}])
    done: dict[str, object] = {}

    def first() -> None:
        try:
            list(engine.pipeline([(k, [dup]) for k in range(3)], read_ahead=3))
        except BaseException as exc:  # the stop
            done["first"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    assert server.all_in.wait(30)
    for _ in range(5):  # the other batches reach their wait for the first one's
        _loop.submit(asyncio.sleep(0)).result()
    _loop.loop().call_soon_threadsafe(engine.interrupt, "Ctrl-C")
    thread.join(30)
    assert not thread.is_alive() and isinstance(done["first"], KeyboardInterrupt)
    server.release()
    again = threading.Thread(target=lambda: done.update(second=engine.run([dup])))
    again.start()
    again.join(30)
    assert not again.is_alive(), "the next run waited for the stopped run's request"
    second = done["second"]
    assert isinstance(second, list) and len(second) == 1
    assert second[0] is not None and second[0].content == "answer to dup"
    engine.close()
