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
import functools
import logging
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
from polars_azurechat.engine.runs import Run, Runs, RunStats
from polars_azurechat.transport.http import ChatTransport
from polars_azurechat.transport.pool import Pool, Route
from polars_azurechat.transport.ratelimit import RateLimiter
from polars_azurechat.transport.retry import build_retrying

if TYPE_CHECKING:
    from polars_azurechat.engine.embed import PackingSender
    from polars_azurechat.engine.texts import EmbeddingSpec
    from polars_azurechat.schema.output import OutputSchema
    from polars_azurechat.summary import SpendingCap

__all__ = ["AnswerCache", "ChatEngine", "Run", "RunStats"]

logger = logging.getLogger(__name__)

K = TypeVar("K")


Sleep = Callable[[float], Awaitable[None]]

#: How often a waiting caller wakes up (so signals reach it).
WAIT_SLICE_S = 0.25
#: How long a stopped pipeline waits for its cancelled batches to commit their answers.
SETTLE_S = 1.0


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
    flex_fallback
        ``True``: a ``service_tier="flex"`` request refused for capacity (a 429 that
        is not a quota's) is sent again at once on the default tier.
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
        flex_fallback: bool = False,
        pool: Pool | None = None,
        schema: OutputSchema | None = None,
        spending_cap: SpendingCap | None = None,
        embedding: EmbeddingSpec | None = None,
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
        host, name = self.transport.endpoint_host, self.transport.deployment
        #: what every request carries besides its messages (its key, body, tokens)
        self.shape = RequestShape(params or {}, schema, host=host, deployment=name)
        sender_class = OnlineSender
        if embedding is not None:
            from polars_azurechat.engine import embed

            self.shape = embed.EmbeddingShape(embedding, host=host, deployment=name)
            sender_class = embed.EmbeddingOnline
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.deadline_s = deadline_s
        self.cache = cache
        self.door = FrontDoor(
            self.shape, cache, progress=progress, on_put=self._schedule_flush
        )
        #: how a request travels online: one per row through the pool, retried
        self.sender = sender_class(
            pool,
            self.shape,
            max_concurrency=max_concurrency,
            max_attempts=max_attempts,
            clock=clock,
            on_truncated=on_truncated,
            flex_fallback=flex_fallback,
            spending_cap=spending_cap,
        )
        #: an embeddings job's sender: many leaders per request (``None``: chat)
        self.packer: PackingSender | None = None
        if embedding is not None:
            assert isinstance(self.sender, embed.EmbeddingOnline)  # noqa: S101
            self.packer = embed.PackingSender(
                self.sender, embedding, max_concurrency=max_concurrency
            )
        self._flush_scheduled = False
        #: the job's runs (one collect, one ``complete_many`` call, one CLI job each)
        self.runs = Runs(
            clock=clock,
            deadline_s=deadline_s,
            retrying=functools.partial(
                build_retrying, max_attempts=max_attempts, sleep=self.sleep, clock=clock
            ),
        )
        self._finalizer = weakref.finalize(
            self, _close, [r.transport for r in pool.routes], cache
        )
        _loop.on_exit(self._finalizer)
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
        with self.runs.entered() as run:
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
                if self.cache is not None:
                    # off the loop: the batch's answers are written before it is
                    # handed back, unless the file is busy (they then wait for it)
                    self.cache.flush()
                yield key, results
        except KeyboardInterrupt as exc:
            # Ctrl-C raised in this thread (or a batch cancelled by it): no more
            # admissions, the answers in flight awaited a short grace, then the
            # run's batches cancelled; then say what was kept
            if self.cache is not None:  # its close waits for the answers, no more
                self.cache.hurry = True
            try:
                self._wait_out_grace(run, pending)
            except KeyboardInterrupt:  # the second came before the grace's handler
                self._stop_again(run, pending)
            self._settle(run, pending, drain=True)
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
        with self.runs.scope():
            for _, results in self.pipeline([(None, requests)]):
                return results
        return []  # pragma: no cover - the pipeline yields once per batch

    def _submit(
        self, run: Run, requests: Sequence[ChatRequest | None]
    ) -> concurrent.futures.Future[list[ChatResult | None]]:
        future = _loop.submit(self._run_batch(run, requests))
        run.track(future)
        return future

    def interrupt(self, reason: str) -> None:
        """A signal (called on the loop, once per signal; see :meth:`Runs.interrupt`).

        The first stops admissions and keeps the answers in flight that arrive within
        :data:`~polars_azurechat.engine.runs.STOP_GRACE_S`; a second stops at once.
        """
        self.runs.interrupt(reason)

    def _wait_out_grace(
        self,
        run: Run,
        pending: Iterable[tuple[Any, concurrent.futures.Future[Any]]],
    ) -> None:
        """After a :class:`KeyboardInterrupt` in this thread: let the grace run out.

        Asks for the first stage of a stop (if no signal did), then waits until the
        run's batches end (answered, or the grace over); a second Ctrl-C ends them.
        """
        loop = _loop.loop()
        loop.call_soon_threadsafe(
            functools.partial(self.runs.interrupt, "Ctrl-C", signal=False)
        )
        futures = {f for _, f in pending} | set(run.futures)
        try:
            _wait_all(futures, self.runs.stop_grace_s + SETTLE_S)
        except KeyboardInterrupt:
            self._stop_again(run, pending)

    def _stop_again(
        self,
        run: Run,
        pending: Iterable[tuple[Any, concurrent.futures.Future[Any]]],
    ) -> None:
        """A second Ctrl-C in this thread: stop the run's batches now (a third too)."""
        with contextlib.suppress(KeyboardInterrupt):  # a third: it is stopping
            _loop.loop().call_soon_threadsafe(self.runs.halt, run, "again")
            _wait_all({f for _, f in pending} | set(run.futures), SETTLE_S)

    def _settle(
        self,
        run: Run,
        pending: Iterable[tuple[Any, concurrent.futures.Future[Any]]],
        *,
        drain: bool = False,
    ) -> None:
        """Cancel ``pending`` batches and wait until their answers are committed.

        A cancelled batch still commits what it got to the cache before it ends; this
        waits for that (at most ``SETTLE_S``). ``drain``: also with nothing pending
        (an interrupted run: what its batches kept is written before it raises).
        """
        futures = [f for _, f in pending]
        if not futures and not drain:
            return
        for future in futures:
            future.cancel()
        with contextlib.suppress(BaseException):
            _loop.call(self._drain(run), timeout=SETTLE_S)
            if self.cache is not None:  # off the loop: wait until they are written
                self.cache.flush()

    async def _drain(self, run: Run) -> None:
        tasks = [t for t in run.tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=SETTLE_S)
        if self.cache is not None:
            self.cache.flush(wait=False)

    def _interrupted_message(self, run: Run) -> str:
        st, cache = run.stats, self.cache
        waiting = 0 if cache is None or cache.busy is None else cache.waiting
        if cache is None:
            saved = "; pass cache= to resume after an interruption"
        elif cache.broken:
            saved = f"; {cache.broken}, so nothing was kept"
        elif waiting:
            saved = (
                f"; {waiting:,} answers wait for the busy cache ({cache.busy}): "
                f"written if it frees within {cache.close_wait_s:g} s of the end, else "
                "a rerun sends them again; the others are in it, a rerun resumes"
            )
        else:
            saved = f"; answers so far are in the cache {cache.path}, a rerun resumes"
        note = run.stop_note()
        return (
            f"interrupted by {run.interrupted}: {st.answered:,} rows answered, "
            f"{st.requests:,} requests sent{f'; {note}' if note else ''}{saved}"
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
        intake = door.take(requests, st, run.recent)
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
                if result.exception is None:
                    run.answer_kept()  # counted after a stop: kept in the grace

        n = min(self.max_concurrency, len(intake.todo))
        workers = [] if self.packer is not None else [worker() for _ in range(n)]
        if self.packer is not None and intake.todo:
            workers.append(self.packer.send(run, intake, door))
        tasks = [asyncio.ensure_future(w) for w in workers]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            if self.cache is not None:  # handed to the writer: the loop never waits
                self.cache.flush(wait=False)
        return door.finish(intake, st)

    def _schedule_flush(self) -> None:
        # one commit per loop turn: answers that arrive together are written together
        if self._flush_scheduled or self.cache is None:
            return
        self._flush_scheduled = True

        def flush() -> None:
            self._flush_scheduled = False
            if self.cache is not None:
                self.cache.flush(wait=False)

        asyncio.get_running_loop().call_soon(flush)


def _close(transports: Sequence[ChatTransport], cache: AnswerCache | None) -> None:
    for transport in transports:
        _loop.close_soon(transport.close())
    if cache is not None:
        cache.close()


def _wait_all(futures: set[concurrent.futures.Future[Any]], bound_s: float) -> None:
    """Wait until ``futures`` are done, at most ``bound_s``, in short slices."""
    until = time.monotonic() + bound_s
    while futures and time.monotonic() < until:
        _, futures = concurrent.futures.wait(futures, timeout=WAIT_SLICE_S)


def _wait(future: concurrent.futures.Future[Any]) -> Any:
    """Wait for ``future`` in short slices, so a signal reaches the waiting thread."""
    while not future.done():
        concurrent.futures.wait([future], timeout=WAIT_SLICE_S)
    return future.result()
