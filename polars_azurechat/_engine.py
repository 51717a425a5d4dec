"""The engine that answers every row. Not meant for outside use.

One :class:`ChatEngine` per ``complete()`` call, shared by every chunk Polars hands over
(Polars calls from several of its threads at once). Each call to :meth:`ChatEngine.run`
blocks its caller while the engine's own event loop, on one background thread, does the
work: a semaphore bounds requests in flight across *all* chunks, the rate limiter admits
requests under the quota, tenacity retries one row at a time, and the results come back
by row index. The loop and its HTTP session live while at least one chunk is running and
stop when the last one returns, so no thread outlives a ``collect``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from polars_azurechat import _tokens
from polars_azurechat._ratelimit import RateLimiter
from polars_azurechat._retry import build_retrying, is_retryable
from polars_azurechat._transport import ChatTransport, Completion
from polars_azurechat._types import ChatRequest, ChatResult
from polars_azurechat.cache import SqliteCache, request_key
from polars_azurechat.errors import (
    AuthenticationError,
    AzureChatError,
    ContentFilterError,
    ContextLengthError,
    DeadlineExceededError,
    NotFoundError,
    RateLimitError,
)

__all__ = ["ChatEngine", "RunStats"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


@dataclasses.dataclass
class RunStats:
    """Counters for everything an engine did (updated on the engine's loop only).

    ``rows`` counts non-null rows: ``answered + failed``; ``cached`` and ``deduplicated``
    are answered rows that sent no request. ``failures_by_kind`` counts failed attempts
    by error class; ``retries`` those of them that were retryable.
    """

    rows: int = 0
    answered: int = 0
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
    first_started: float | None = None
    last_finished: float | None = None

    @property
    def wall_s(self) -> float:
        """Seconds from the first chunk's start to the last chunk's end."""
        if self.first_started is None or self.last_finished is None:
            return 0.0
        return self.last_finished - self.first_started

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (for logs, the CLI summary and JSON)."""
        d = dataclasses.asdict(self)
        d["failures_by_kind"] = dict(self.failures_by_kind)
        d["wall_s"] = self.wall_s
        return d


class ChatEngine:
    """Answer chat requests through one deployment under shared limits.

    Parameters
    ----------
    transport
        Where and how requests are sent.
    params
        Extra body fields (``max_tokens``, ``temperature``, ...) sent with every request.
    max_concurrency
        Requests in flight at once, across every concurrent :meth:`run`.
    max_attempts
        Attempts per row, first included.
    deadline_s
        Time bound for the whole job, from the first :meth:`run`; rows not answered by
        then fail with :class:`DeadlineExceededError`.
    limiter
        Quota admission; shared by every run.
    sleep, clock
        The awaitable sleep used for backoff and admission waits and the monotonic
        clock (both injected in tests).
    progress
        A callback given the number of rows just finished, or ``None``.
    cache
        Where answers are kept between runs, or ``None``.

    Notes
    -----
    Identical requests (same messages and parameters) are sent once and the answer is
    given to every row that asked, within a chunk and across chunks running at once.
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
        cache: SqliteCache | None = None,
    ) -> None:
        if max_concurrency < 1:
            msg = f"max_concurrency must be >= 1, got {max_concurrency}"
            raise ValueError(msg)
        if max_attempts < 1:
            msg = f"max_attempts must be >= 1, got {max_attempts}"
            raise ValueError(msg)
        self.transport = transport
        self.params = dict(params or {})
        self.max_concurrency = max_concurrency
        self.limiter = limiter or RateLimiter()
        self._sleep: Sleep = sleep or asyncio.sleep
        self._clock = clock
        self._deadline_s = deadline_s
        self._deadline: float | None = None
        self._retrying = build_retrying(
            max_attempts=max_attempts,
            sleep=self._sleep,
            deadline=lambda: self._deadline,
            clock=clock,
        )
        self._progress = progress
        self.cache = cache
        self._max_attempts = max_attempts
        self._max_tokens = self.params.get(
            "max_tokens", self.params.get("max_completion_tokens")
        )
        self.stats = RunStats()
        self.fatal: AzureChatError | None = None
        self._lock = threading.Lock()
        self._active = 0
        self._runner: _LoopRunner | None = None
        self._in_flight = 0
        self._sending: dict[str, asyncio.Future[ChatResult]] = {}
        self._flush_scheduled = False

    def run(self, requests: Sequence[ChatRequest | None]) -> list[ChatResult | None]:
        """Answer ``requests`` in order; ``None`` in, ``None`` out. Thread-safe, blocking."""
        now = self._clock()
        if self.stats.first_started is None:
            self.stats.first_started = now
            if self._deadline_s is not None:
                self._deadline = now + self._deadline_s
        if all(r is None for r in requests):
            self.stats.null_rows += len(requests)
            if self._progress is not None:
                self._progress(len(requests))
            return [None] * len(requests)
        with self._lock:
            if self._runner is None:
                self._runner = _LoopRunner(self)
                self.limiter.reset_loop()
            self._active += 1
            runner = self._runner
        try:
            return runner.call(self._run_batch(requests))
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._runner = None
                    self._sending.clear()
                    runner.stop()
            self.stats.last_finished = self._clock()

    async def _run_batch(
        self, requests: Sequence[ChatRequest | None]
    ) -> list[ChatResult | None]:
        results: list[ChatResult | None] = [None] * len(requests)
        leaders: dict[str, int] = {}  # key -> first row asking it
        followers: list[tuple[int, str]] = []  # rows asking what an earlier row asks
        for i, req in enumerate(requests):
            if req is None:
                self.stats.null_rows += 1
            elif req.error is not None:
                results[i] = ChatResult(exception=req.error)
            else:
                key = self._key(req)
                if key in leaders:
                    followers.append((i, key))
                else:
                    leaders[key] = i
        answers: dict[str, ChatResult] = {}  # by key, for the followers
        if self.cache is not None and leaders:
            answers = self.cache.get_many(leaders)
            for key, hit in answers.items():
                results[leaders.pop(key)] = hit
            self.stats.cached += len(answers)
        if self._progress is not None:
            self._progress(len(requests) - len(leaders) - len(followers))
        todo = iter(leaders.items())

        async def worker() -> None:
            for key, i in todo:  # one loop thread: workers never race on next()
                req = requests[i]
                assert req is not None  # noqa: S101 - leaders are sendable rows
                results[i] = await self._answer(key, req)
                if self._progress is not None:
                    self._progress(1)

        workers = [
            asyncio.ensure_future(worker())
            for _ in range(min(self.max_concurrency, len(leaders)))
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            if self.cache is not None:
                self.cache.flush()
        for key, i in leaders.items():
            answers[key] = results[i]  # type: ignore[assignment]
        for i, key in followers:
            results[i] = dataclasses.replace(answers[key], attempts=0)
            self.stats.deduplicated += 1
        if self._progress is not None and followers:
            self._progress(len(followers))
        for r in results:
            if r is None:
                continue
            self.stats.rows += 1
            if r.exception is None:
                self.stats.answered += 1
            else:
                self.stats.failed += 1
        return results

    def _key(self, req: ChatRequest) -> str:
        t = self.transport
        return request_key(
            host=t.endpoint_host,
            deployment=t.deployment,
            api_version=t.api_version,
            messages=req.messages,
            params=self.params,
        )

    async def _answer(self, key: str, req: ChatRequest) -> ChatResult:
        """Answer one request, sharing the answer with another chunk sending it now."""
        shared = self._sending.get(key)
        if shared is not None:
            self.stats.deduplicated += 1
            return dataclasses.replace(await asyncio.shield(shared), attempts=0)
        future: asyncio.Future[ChatResult] = asyncio.get_running_loop().create_future()
        self._sending[key] = future
        try:
            result = await self._complete_one(req)
        finally:
            self._sending.pop(key, None)
        future.set_result(result)
        if self.cache is not None and result.exception is None:
            self.cache.put(key, result)
            self._schedule_flush()
        return result

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

    async def _complete_one(self, req: ChatRequest) -> ChatResult:
        if self.fatal is not None:
            return ChatResult(exception=self.fatal)
        runner = self._runner
        assert runner is not None  # noqa: S101 - only called while a run is active
        body = {**self.params, "messages": req.messages}
        cost = _tokens.request_tokens(
            req.messages,
            self._max_tokens,
            exact=self.limiter.token_budget is not None,
        )
        try:
            self._check_deadline()
        except DeadlineExceededError as exc:
            return ChatResult(exception=exc, attempts=0)
        attempts = 1
        completion: Completion | None = None
        failure: AzureChatError | None = None
        try:  # the first attempt outside tenacity: the common case stays cheap
            completion = await self._send(runner, body, cost)
        except AzureChatError as first:
            failure = first
            if is_retryable(first) and self._max_attempts > 1:
                completion, attempts, failure = await self._retry(
                    runner, body, cost, first
                )
        if failure is not None or completion is None:
            return self._failed(failure, attempts, req)
        self.stats.prompt_tokens += completion.prompt_tokens or 0
        self.stats.completion_tokens += completion.completion_tokens or 0
        if completion.model and self.stats.model is None:
            self.stats.model = completion.model
        exception: AzureChatError | None = None
        if completion.content is None and completion.finish_reason == "content_filter":
            exception = ContentFilterError(
                "the answer was withheld by Azure's content filter", status_code=200
            )
        return ChatResult(
            content=completion.content,
            finish_reason=completion.finish_reason,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            attempts=attempts,
            exception=exception,
        )

    async def _retry(
        self,
        runner: _LoopRunner,
        body: Mapping[str, Any],
        cost: int,
        first: AzureChatError,
    ) -> tuple[Completion | None, int, AzureChatError | None]:
        """Run the remaining attempts under the tenacity policy.

        The first attempt's failure is replayed as tenacity's attempt 1, so waits, stop
        and attempt numbers are exactly the policy's. Returns the completion (or
        ``None``), the attempts made and the last failure (or ``None``).
        """
        replay: list[AzureChatError] = [first]
        attempts = 0
        try:
            async for attempt in self._retrying.copy():
                with attempt:
                    attempts += 1
                    if replay:
                        raise replay.pop()
                    if self.fatal is not None:
                        raise self.fatal
                    self._check_deadline()
                    return await self._send(runner, body, cost), attempts, None
        except AzureChatError as exc:
            return None, attempts, exc
        return None, attempts, first  # pragma: no cover - tenacity re-raises or returns

    def _failed(
        self, exc: AzureChatError | None, attempts: int, req: ChatRequest
    ) -> ChatResult:
        if exc is None:  # pragma: no cover - a completion or an error always comes back
            exc = AzureChatError("no answer and no error")
        if isinstance(exc, AuthenticationError | NotFoundError):
            if self.fatal is None:
                logger.error("stopping the run: %s", exc)
                self.fatal = exc
        elif isinstance(exc, ContextLengthError):
            estimate = _tokens.request_tokens(req.messages, self._max_tokens)
            exc = ContextLengthError(
                f"{exc} (estimated request tokens: {estimate}, max_tokens included)",
                status_code=exc.status_code,
                code=exc.code,
                body=exc.body,
                request_id=exc.request_id,
            )
        return ChatResult(exception=exc, attempts=attempts)

    def _check_deadline(self) -> None:
        if self._deadline is not None and self._clock() >= self._deadline:
            msg = f"deadline_s={self._deadline_s} passed before this row was answered"
            raise DeadlineExceededError(msg)

    def _remaining_s(self) -> float | None:
        if self._deadline is None:
            return None
        return self._deadline - self._clock()

    async def _send(
        self, runner: _LoopRunner, body: Mapping[str, Any], cost: int
    ) -> Completion:
        async with runner.semaphore:
            admitted = await self.limiter.acquire(cost)
            if self.fatal is not None:  # it may have arrived while this one waited
                raise self.fatal
            self._check_deadline()
            self._in_flight += 1
            self.stats.requests += 1
            if self._in_flight > self.stats.peak_in_flight:
                self.stats.peak_in_flight = self._in_flight
            try:
                completion = await self.transport.send(body, self._remaining_s())
            except AzureChatError as exc:
                kind = type(exc).__name__
                self.stats.failures_by_kind[kind] += 1
                if is_retryable(exc):
                    self.stats.retries += 1
                if isinstance(exc, RateLimitError):
                    self.stats.rate_limited += 1
                    self.limiter.on_rate_limited(exc.retry_after_s)
                logger.debug("attempt failed: %s", exc)
                raise
            finally:
                self._in_flight -= 1
            self.limiter.on_success(
                admitted, completion.remaining_requests, completion.remaining_tokens
            )
            return completion


class _LoopRunner:
    """An event loop on a daemon thread, with the session and semaphore it owns."""

    def __init__(self, engine: ChatEngine) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="polars-azurechat-engine", daemon=True
        )
        self._thread.start()
        self.semaphore: asyncio.Semaphore
        self._engine = engine
        self.call(self._open())

    async def _open(self) -> None:
        limit = self._engine.max_concurrency
        self.semaphore = asyncio.Semaphore(limit)
        await self._engine.transport.open(limit)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result from this thread."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        """Close the session and end the loop's thread."""
        try:
            self.call(self._engine.transport.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self.loop.close()
