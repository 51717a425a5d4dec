"""The engine that answers every row. Not meant for outside use.

One :class:`ChatEngine` per job (a :class:`~polars_azurechat.Completer`). What it shares
outlives runs: the bound on requests in flight, the quota limiter, the transport's
connection pool and the cache. What belongs to one run (a collect, a ``complete_many``
call, a CLI job) lives in a :class:`Run`: its start, deadline, fatal error and counters.

Work enters through one door, :meth:`ChatEngine.pipeline`: an iterable of request batches
in, result batches out in input order, with at most ``read_ahead`` batches in flight, so
memory follows the read-ahead, never the input. The requests themselves run on the
process's one background event loop (:mod:`polars_azurechat.engine.loop`); callers on other
threads (Polars', the CLI's, a plain script's) wait for their batches. Counters change on
the loop only.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from polars_azurechat._types import ChatRequest, ChatResult
from polars_azurechat.engine import gc as _gc
from polars_azurechat.engine import interrupt as _interrupt
from polars_azurechat.engine import loop as _loop
from polars_azurechat.engine.frontdoor import AnswerCache, FrontDoor, RequestShape
from polars_azurechat.engine.online import OnlineSender
from polars_azurechat.errors import (
    AzureChatError,
    DeadlineExceededError,
)
from polars_azurechat.transport.http import ChatTransport
from polars_azurechat.transport.pool import Pool, Route
from polars_azurechat.transport.ratelimit import RateLimiter
from polars_azurechat.transport.retry import build_retrying

if TYPE_CHECKING:
    from polars_azurechat.schema.output import OutputSchema
    from polars_azurechat.summary import SpendingCap

__all__ = ["AnswerCache", "ChatEngine", "Run", "RunStats"]

logger = logging.getLogger(__name__)

K = TypeVar("K")


Sleep = Callable[[float], Awaitable[None]]

#: A chunk arriving this soon after the previous one ended belongs to the same run
#: (Polars hands a collect's chunks over in waves, with short gaps between them).
RUN_GRACE_S = 0.2
#: How often a waiting caller wakes up (so signals reach it).
WAIT_SLICE_S = 0.25
#: How long a stopped pipeline waits for its cancelled batches to commit their answers.
SETTLE_S = 1.0


@dataclasses.dataclass
class RunStats:
    """Counters of one run, or of several merged.

    ``rows`` counts non-null rows: ``answered + failed``; ``truncated`` answered rows
    were cut at ``max_tokens`` and kept; ``cached`` and ``deduplicated`` are answered
    rows that sent no request. ``failures_by_kind`` counts failed attempts
    by error class; ``retries`` those of them that were retryable. ``wall_s`` is busy
    time: while at least one batch was being answered.
    """

    rows: int = 0
    answered: int = 0
    truncated: int = 0
    failed: int = 0
    null_rows: int = 0
    cached: int = 0
    deduplicated: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    failures_by_kind: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    prompt_tokens: int = 0
    completion_tokens: int = 0
    peak_in_flight: int = 0
    model: str | None = None
    wall_s: float = 0.0
    first_error: str | None = None
    #: per deployment of a pool: requests, rate_limited, failed_attempts,
    #: prompt_tokens, completion_tokens
    by_deployment: dict[str, collections.Counter[str]] = dataclasses.field(
        default_factory=dict
    )

    def count(self, result: ChatResult) -> None:
        """Count one non-null row's outcome."""
        self.rows += 1
        if result.exception is None:
            self.answered += 1
            if result.finish_reason == "length":
                self.truncated += 1
        else:
            self.failed += 1
            if self.first_error is None:
                self.first_error = result.error

    def merge(self, other: RunStats) -> None:
        """Add ``other``'s counts to these."""
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name == "peak_in_flight":
                setattr(self, f.name, max(mine, theirs))
            elif f.name in ("model", "first_error"):
                setattr(self, f.name, mine or theirs)
            elif f.name == "failures_by_kind":
                mine.update(theirs)
            elif f.name == "by_deployment":
                for name, counts in theirs.items():
                    mine.setdefault(name, collections.Counter()).update(counts)
            else:
                setattr(self, f.name, mine + theirs)

    def copy(self) -> RunStats:
        """An independent copy."""
        out = RunStats()
        out.merge(self)
        return out

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (for logs and JSON)."""
        d = dataclasses.asdict(self)
        d["failures_by_kind"] = dict(self.failures_by_kind)
        d["by_deployment"] = {k: dict(v) for k, v in self.by_deployment.items()}
        return d


class Run:
    """One run of a job: its start, deadline, fatal error and counters.

    ``error`` is the exception the run raised to its caller (the original object, with
    every attribute), or ``None``.
    """

    _ids = itertools.count(1)

    def __init__(
        self, started: float, deadline_s: float | None, engine: ChatEngine
    ) -> None:
        self.id = next(Run._ids)
        self.started = started
        self.deadline = None if deadline_s is None else started + deadline_s
        self.deadline_s = deadline_s
        self.fatal: AzureChatError | None = None
        self.error: BaseException | None = None
        self.interrupted: str | None = None
        self.explicit = False
        self.finished = False
        self.timer: asyncio.TimerHandle | None = None
        self.futures: set[concurrent.futures.Future[Any]] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stats = RunStats()
        self.ended: float | None = None
        self.busy_since: float | None = None
        self.retrying = build_retrying(
            max_attempts=engine.max_attempts,
            sleep=engine.sleep,
            deadline=lambda: self.deadline,
            clock=engine.clock,
        )

    def __repr__(self) -> str:
        return f"<Run {self.id} rows={self.stats.rows} fatal={self.fatal is not None}>"

    def busy_s(self, now: float) -> float:
        """Busy seconds so far."""
        extra = 0.0 if self.busy_since is None else now - self.busy_since
        return self.stats.wall_s + extra

    def deadline_passed(self, now: float) -> bool:
        """Whether the run's deadline is behind ``now``."""
        return self.deadline is not None and now >= self.deadline

    def check_deadline(self, now: float) -> None:
        """Raise :class:`DeadlineExceededError` once the deadline has passed."""
        if self.deadline_passed(now):
            msg = f"deadline_s={self.deadline_s} passed before this row was answered"
            raise DeadlineExceededError(msg)


class ChatEngine:
    """Answer chat requests through one transport under shared limits.

    Parameters
    ----------
    transport
        Where and how requests are sent; its connection pool opens on first use and
        stays open until :meth:`close`.
    params
        Body fields (``max_tokens``, ``temperature``, ...) sent with every request.
    max_concurrency
        Requests in flight at once, across every batch and run.
    max_attempts
        Attempts per row, first included.
    deadline_s
        Time bound for each run; rows not answered by then fail with
        :class:`DeadlineExceededError`.
    limiter
        Quota admission; shared by every run.
    pool
        Several deployments to spread requests over (each with its own transport and
        limiter); ``transport`` and ``limiter`` are then its first deployment's.
    sleep, clock
        The awaitable sleep used for backoff and admission waits and the monotonic
        clock (both injected in tests).
    progress
        A callback given the number of rows just finished, or ``None``. It must not
        hold a reference to the job (it would keep the job alive).
    cache
        Where answers are kept between runs, or ``None``.
    on_truncated
        ``"keep"``: an answer cut at ``max_tokens`` is kept (and counted as
        truncated); ``"error"``: it is a :class:`TruncatedError`.
    schema
        The typed answer's schema (``response_format=Model``), or ``None``: each
        answer is then parsed and validated (an invalid one is retried as an attempt,
        then fails with :class:`SchemaValidationError`); a refusal is a
        :class:`RefusalError` and a truncated answer a :class:`TruncatedError`.

    Notes
    -----
    Identical requests (same messages and parameters) are sent once and the answer is
    given to every row that asked, within a batch and across batches running at once.
    """

    def __init__(
        self,
        transport: ChatTransport,
        *,
        params: Mapping[str, Any] | None = None,
        max_concurrency: int = 64,
        max_attempts: int = 6,
        deadline_s: float | None = None,
        limiter: RateLimiter | None = None,
        sleep: Sleep | None = None,
        clock: Callable[[], float] = time.monotonic,
        progress: Callable[[int], None] | None = None,
        cache: AnswerCache | None = None,
        on_truncated: str = "keep",
        pool: Pool | None = None,
        schema: OutputSchema | None = None,
        spending_cap: SpendingCap | None = None,
    ) -> None:
        if max_concurrency < 1:
            msg = f"max_concurrency must be >= 1, got {max_concurrency}"
            raise ValueError(msg)
        if max_attempts < 1:
            msg = f"max_attempts must be >= 1, got {max_attempts}"
            raise ValueError(msg)
        self.sleep: Sleep = sleep or asyncio.sleep
        self.clock = clock
        if pool is None:
            route = Route(transport.deployment, transport, limiter or RateLimiter())
            pool = Pool([route], clock=clock, sleep=self.sleep)
        self.pool = pool
        #: the first deployment's: it names the cache key and the model
        self.transport = pool.primary.transport
        self.limiter = pool.primary.limiter
        #: what every request carries besides its messages (its key, body, tokens)
        self.shape = RequestShape(
            params or {},
            schema,
            host=self.transport.endpoint_host,
            deployment=self.transport.deployment,
            api_version=self.transport.api_version,
        )
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.deadline_s = deadline_s
        self.cache = cache
        self.door = FrontDoor(
            self.shape, cache, progress=progress, on_put=self._schedule_flush
        )
        #: Called when a run starts (in the caller's thread) and once when it ends (in
        #: the caller's thread, or on the loop for a run of Polars' threads).
        self.on_run_start: Callable[[Run], None] | None = None
        self.on_run_end: Callable[[Run], None] | None = None
        #: how a request travels online: one per row through the pool, retried
        self.sender = OnlineSender(
            pool,
            self.shape,
            max_concurrency=max_concurrency,
            max_attempts=max_attempts,
            clock=clock,
            on_truncated=on_truncated,
            spending_cap=spending_cap,
        )
        self._flush_scheduled = False
        # runs: touched by callers' threads under the lock, counters on the loop only
        self._lock = threading.Lock()
        self._active = 0
        self._scoped = False
        self._current: Run | None = None
        self._totals = RunStats()
        self.runs = 0
        self._finalizer = weakref.finalize(
            self, _close, [r.transport for r in pool.routes], cache
        )
        _interrupt.register(self)

    @property
    def in_flight(self) -> int:
        """Requests on the wire now."""
        return self.sender.in_flight

    @property
    def params(self) -> dict[str, Any]:
        """The body fields sent with every request (the request shape's)."""
        return self.shape.params

    @property
    def progress(self) -> Callable[[int], None] | None:
        """Called with the number of rows just finished, or ``None``."""
        return self.door.progress

    @progress.setter
    def progress(self, value: Callable[[int], None] | None) -> None:
        self.door.progress = value

    # -- runs ---------------------------------------------------------------------------

    @property
    def last_run(self) -> Run | None:
        """The current or most recent run."""
        return self._current

    @property
    def stats(self) -> RunStats:
        """Counters over every run so far (a snapshot)."""
        with self._lock:
            out = self._totals.copy()
            current = self._current
            if current is not None:
                out.merge(current.stats)
                out.wall_s += current.busy_s(self.clock()) - current.stats.wall_s
        return out

    def enter(self, *, new: bool = False) -> Run:
        """A batch starts: join the current run or start a new one.

        Every :meth:`enter` is paired with a :meth:`leave` (``run_scope`` and the
        pipeline do it; batch mode calls both).

        A run is explicit (``run_scope``, or a chunk that Polars hands over on the
        thread that called ``collect``: the whole column at once) and ends when its
        last batch does; or it is made of the chunks Polars' own threads hand over, in
        waves, and ends :data:`RUN_GRACE_S` after the last wave, unless another joins.
        """
        explicit = new or not _foreign_thread()
        previous: Run | None = None
        with self._lock:
            now = self.clock()
            run = self._current
            continues = run is not None and (
                self._active > 0
                if new or explicit
                else self._active > 0
                or (
                    not run.explicit
                    and not run.finished
                    and run.fatal is None
                    and run.error is None
                    and run.interrupted is None
                    and not run.deadline_passed(now)
                    and run.ended is not None
                    and now - run.ended <= RUN_GRACE_S
                )
            )
            if new and self._active > 0:
                msg = "a run of this job is already going on"
                raise RuntimeError(msg)
            started = not continues
            if started:
                if run is not None:
                    self._totals.merge(run.stats)
                    previous = run
                run = self._current = Run(now, self.deadline_s, self)
                run.explicit = explicit
                self.runs += 1
            assert run is not None  # noqa: S101 - set just above
            if self._active == 0:
                run.busy_since = now
            self._active += 1
            timer, run.timer = run.timer, None
        if timer is not None:
            _loop.loop().call_soon_threadsafe(timer.cancel)
        if previous is not None:
            self._finish(previous)
        if started and self.on_run_start is not None:
            self.on_run_start(run)
        return run

    def leave(self, run: Run) -> None:
        """A batch of ``run`` ended (see :meth:`enter`)."""
        with self._lock:
            self._active -= 1
            idle = self._active == 0
            if idle:
                now = self.clock()
                run.ended = now
                if run.busy_since is not None:
                    run.stats.wall_s += now - run.busy_since
                    run.busy_since = None
        if not idle:
            return
        if run.explicit or run.fatal or run.interrupted or run.error:
            self._finish(run)
        else:  # more waves of the same query may come: end the run if none does
            loop = _loop.loop()
            loop.call_soon_threadsafe(self._arm_timer, run)

    def _arm_timer(self, run: Run) -> None:
        with self._lock:
            if self._active == 0 and not run.finished:
                run.timer = _loop.loop().call_later(
                    RUN_GRACE_S, self._finish_if_idle, run
                )

    def _finish_if_idle(self, run: Run) -> None:
        with self._lock:
            idle = self._active == 0 or self._current is not run
        if idle:
            self._finish(run)

    def _finish(self, run: Run) -> None:
        """The run is over: tell ``on_run_end`` once (bar closed, failures reported)."""
        with self._lock:
            if run.finished:
                return
            run.finished = True
        if self.on_run_end is not None:
            self.on_run_end(run)

    def finish(self) -> None:
        """End the current run now if nothing is in flight (e.g. before a summary)."""
        run = self._current
        if run is not None and self._active == 0:
            self._finish(run)

    @contextlib.contextmanager
    def run_scope(self) -> Iterator[Run]:
        """One explicit run: every batch answered inside belongs to it."""
        run = self.enter(new=True)
        try:
            yield run
        finally:
            self.leave(run)

    @contextlib.contextmanager
    def entered(self) -> Iterator[Run]:
        """A batch of the current run (or of a new one), between enter and leave.

        A job-wide error raised inside becomes the run's error (``last_error``).
        """
        run = self.enter()
        try:
            yield run
        except BaseException as exc:
            if run.error is None and isinstance(exc, AzureChatError):
                run.error = exc
            raise
        finally:
            self.leave(run)

    # -- the one entry point --------------------------------------------------------------

    def pipeline(
        self,
        batches: Iterable[tuple[K, Sequence[ChatRequest | None]]],
        *,
        read_ahead: int = 3,
    ) -> Iterator[tuple[K, list[ChatResult | None]]]:
        """Answer batches of requests; yield ``(key, results)`` in input order.

        At most ``read_ahead`` batches are being answered at once (the next ones are not
        read from ``batches`` until an earlier one is yielded). A fatal error (401, 403,
        404) is raised at the first batch that sees it; closing the generator early
        cancels what is in flight.
        """
        _interrupt.install()
        with _gc.fewer_collections():
            yield from self._pipeline(batches, read_ahead)

    def _pipeline(
        self,
        batches: Iterable[tuple[K, Sequence[ChatRequest | None]]],
        read_ahead: int,
    ) -> Iterator[tuple[K, list[ChatResult | None]]]:
        with self.entered() as run:
            yield from self._answer_in_order(run, batches, read_ahead)

    def _answer_in_order(
        self,
        run: Run,
        batches: Iterable[tuple[K, Sequence[ChatRequest | None]]],
        read_ahead: int,
    ) -> Iterator[tuple[K, list[ChatResult | None]]]:
        pending: collections.deque[
            tuple[K, concurrent.futures.Future[list[ChatResult | None]]]
        ] = collections.deque()
        try:
            source = iter(batches)
            exhausted = False
            while True:
                while not exhausted and len(pending) < read_ahead:
                    item = next(source, None)
                    if item is None:
                        exhausted = True
                        break
                    key, requests = item
                    pending.append((key, self._submit(run, requests)))
                if not pending:
                    return
                key, future = pending.popleft()
                try:
                    results = _wait(future)
                except concurrent.futures.CancelledError:
                    if run.interrupted is None:
                        raise
                    raise KeyboardInterrupt(self._interrupted_message(run)) from None
                if run.fatal is not None:
                    raise run.fatal
                yield key, results
        except KeyboardInterrupt as exc:
            # Ctrl-C raised in this thread (or a batch cancelled by it): stop the
            # run's other batches too, then say what was kept
            if run.interrupted is None:
                run.interrupted = "Ctrl-C"
                _loop.loop().call_soon_threadsafe(self.interrupt, "Ctrl-C")
            self._settle(run, pending)
            pending.clear()
            message = self._interrupted_message(run)
            run.error = KeyboardInterrupt(message)
            if str(exc) == message:
                raise
            raise run.error from None
        finally:
            self._settle(run, pending)

    def run(self, requests: Sequence[ChatRequest | None]) -> list[ChatResult | None]:
        """Answer one list of requests as one run; ``None`` in, ``None`` out."""
        with self.run_scope():
            for _, results in self.pipeline([(None, requests)]):
                return results
        return []  # pragma: no cover - the pipeline yields once per batch

    def _submit(
        self, run: Run, requests: Sequence[ChatRequest | None]
    ) -> concurrent.futures.Future[list[ChatResult | None]]:
        future = _loop.submit(self._run_batch(run, requests))
        run.futures.add(future)
        future.add_done_callback(run.futures.discard)
        return future

    def interrupt(self, reason: str) -> None:
        """Stop the running run at once (called on the loop).

        No more admissions, requests in flight cancelled, answers so far committed to
        the cache; the threads waiting for its batches raise :class:`KeyboardInterrupt`.
        """
        run = self._current
        if run is None or self._active == 0:
            return
        if run.interrupted is None:
            run.interrupted = reason
            logger.info("%s: stopping the run", reason)
        for future in list(run.futures):
            future.cancel()

    def _settle(
        self,
        run: Run,
        pending: Iterable[tuple[Any, concurrent.futures.Future[Any]]],
    ) -> None:
        """Cancel ``pending`` batches and wait until their answers are committed.

        A cancelled batch still commits what it got to the cache before it ends; this
        waits for that (at most ``SETTLE_S``).
        """
        futures = [f for _, f in pending]
        if not futures:
            return
        for future in futures:
            future.cancel()
        with contextlib.suppress(BaseException):
            _loop.call(self._drain(run), timeout=SETTLE_S)

    async def _drain(self, run: Run) -> None:
        tasks = [t for t in run.tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=SETTLE_S)
        if self.cache is not None:
            self.cache.flush()

    def _interrupted_message(self, run: Run) -> str:
        st = run.stats
        if self.cache is None:
            saved = "; pass cache= to resume after an interruption"
        elif self.cache.broken:
            saved = f"; {self.cache.broken}, so nothing was kept"
        else:
            saved = (
                f"; answers so far are in the cache {self.cache.path}, a rerun resumes"
            )
        return (
            f"interrupted by {run.interrupted}: {st.answered:,} rows answered, "
            f"{st.requests:,} requests sent{saved}"
        )

    def close(self) -> None:
        """Close the transport's connections and the cache (idempotent).

        Also done when the engine is garbage-collected.
        """
        self._finalizer()

    # -- on the loop ------------------------------------------------------------------------

    async def _run_batch(
        self, run: Run, requests: Sequence[ChatRequest | None]
    ) -> list[ChatResult | None]:
        """The online sender: the front door settles what it can, workers send the rest."""
        if run.interrupted is not None:
            raise asyncio.CancelledError
        task = asyncio.current_task()
        if task is not None:
            run.tasks.add(task)
            task.add_done_callback(run.tasks.discard)
        st, door = run.stats, self.door
        intake = door.take(requests, st)
        if intake.todo:
            for route in self.pool.routes:
                await route.transport.open(self.max_concurrency)
        todo = iter(intake.todo.items())

        async def worker() -> None:
            for key, i in todo:  # one loop thread: workers never race on next()
                req = requests[i]
                assert req is not None  # noqa: S101 - leaders are sendable rows
                result, kept = await self.sender.answer(run, key, req)
                door.deliver(intake, key, result, st, kept=kept)

        workers = [
            asyncio.ensure_future(worker())
            for _ in range(min(self.max_concurrency, len(intake.todo)))
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            if self.cache is not None:
                self.cache.flush()
        return door.finish(intake, st)

    def _schedule_flush(self) -> None:
        # one commit per loop turn: answers that arrive together are written together
        if self._flush_scheduled or self.cache is None:
            return
        self._flush_scheduled = True

        def flush() -> None:
            self._flush_scheduled = False
            if self.cache is not None:
                self.cache.flush()

        asyncio.get_running_loop().call_soon(flush)


def _foreign_thread() -> bool:
    """The calling thread was not started by Python (one of Polars' own threads).

    ``threading`` gives such threads a stand-in object named ``Dummy-N``.
    """
    return threading.current_thread().name.startswith("Dummy-")


def _close(transports: Sequence[ChatTransport], cache: AnswerCache | None) -> None:
    for transport in transports:
        _loop.close_soon(transport.close())
    if cache is not None:
        cache.close()


def _wait(future: concurrent.futures.Future[Any]) -> Any:
    """Wait for ``future`` in short slices, so a signal reaches the waiting thread."""
    while not future.done():
        concurrent.futures.wait([future], timeout=WAIT_SLICE_S)
    return future.result()
