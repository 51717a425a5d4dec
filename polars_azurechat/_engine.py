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
    NotFoundError,
    RateLimitError,
)

__all__ = ["ChatEngine", "RunStats"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


@dataclasses.dataclass
class RunStats:
    """Counters for everything an engine did (updated on the engine's loop only)."""

    rows: int = 0
    answered: int = 0
    failed: int = 0
    null_rows: int = 0
    cached: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    failures_by_kind: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    prompt_tokens: int = 0
    completion_tokens: int = 0
    peak_in_flight: int = 0
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (for logs, the CLI summary and JSON)."""
        d = dataclasses.asdict(self)
        d["failures_by_kind"] = dict(self.failures_by_kind)
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
    limiter
        Quota admission; shared by every run.
    sleep
        The awaitable sleep used for backoff and admission waits (injected in tests).
    progress
        A callback given the number of rows just finished, or ``None``.
    """

    def __init__(
        self,
        transport: ChatTransport,
        *,
        params: Mapping[str, Any] | None = None,
        max_concurrency: int = 64,
        max_attempts: int = 6,
        limiter: RateLimiter | None = None,
        sleep: Sleep | None = None,
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
        self._retrying = build_retrying(max_attempts=max_attempts, sleep=self._sleep)
        self._progress = progress
        self.cache = cache
        self._max_tokens = self.params.get(
            "max_tokens", self.params.get("max_completion_tokens")
        )
        self.stats = RunStats()
        self.fatal: AzureChatError | None = None
        self._lock = threading.Lock()
        self._active = 0
        self._runner: _LoopRunner | None = None
        self._in_flight = 0

    def run(self, requests: Sequence[ChatRequest | None]) -> list[ChatResult | None]:
        """Answer ``requests`` in order; ``None`` in, ``None`` out. Thread-safe, blocking."""
        if all(r is None for r in requests):
            self.stats.null_rows += len(requests)
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
                    runner.stop()

    async def _run_batch(
        self, requests: Sequence[ChatRequest | None]
    ) -> list[ChatResult | None]:
        started = time.perf_counter()
        results: list[ChatResult | None] = [None] * len(requests)
        pending: list[int] = []
        for i, req in enumerate(requests):
            if req is None:
                self.stats.null_rows += 1
            elif req.error is not None:
                results[i] = ChatResult(exception=req.error)
            else:
                pending.append(i)
        keys: dict[int, str] = {}
        if self.cache is not None and pending:
            keys = {i: self._key(requests[i]) for i in pending}  # type: ignore[arg-type]
            hits = self.cache.get_many(keys.values())
            if hits:
                for i in pending:
                    if keys[i] in hits:
                        results[i] = hits[keys[i]]
                self.stats.cached += sum(1 for i in pending if keys[i] in hits)
                pending = [i for i in pending if keys[i] not in hits]
        todo = iter(pending)

        async def worker() -> None:
            for i in todo:  # one loop thread: no other worker runs between next() calls
                req = requests[i]
                assert req is not None  # noqa: S101 - pending holds sendable rows only
                result = results[i] = await self._complete_one(req)
                if self.cache is not None:
                    self.cache.put(keys[i], result)
                if self._progress is not None:
                    self._progress(1)

        workers = [
            asyncio.ensure_future(worker())
            for _ in range(min(self.max_concurrency, len(pending)))
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            if self.cache is not None:
                self.cache.flush()
        for r in results:
            if r is None:
                continue
            self.stats.rows += 1
            if r.exception is None:
                self.stats.answered += 1
            else:
                self.stats.failed += 1
        if self._progress is not None and len(pending) < len(requests):
            self._progress(len(requests) - len(pending))
        self.stats.elapsed_s += time.perf_counter() - started
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
        retrying = self._retrying.copy()
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    if self.fatal is not None:
                        raise self.fatal
                    attempts += 1
                    completion = await self._send(runner, body, cost)
        except (AuthenticationError, NotFoundError) as exc:
            if self.fatal is None:
                logger.error("stopping the run: %s", exc)  # noqa: TRY400 - no traceback wanted
                self.fatal = exc
            return ChatResult(exception=exc, attempts=attempts)
        except AzureChatError as exc:
            return ChatResult(exception=exc, attempts=attempts)
        self.stats.prompt_tokens += completion.prompt_tokens or 0
        self.stats.completion_tokens += completion.completion_tokens or 0
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

    async def _send(
        self, runner: _LoopRunner, body: Mapping[str, Any], cost: int
    ) -> Completion:
        async with runner.semaphore:
            admitted = await self.limiter.acquire(cost)
            if self.fatal is not None:  # it may have arrived while this one waited
                raise self.fatal
            self._in_flight += 1
            self.stats.requests += 1
            if self._in_flight > self.stats.peak_in_flight:
                self.stats.peak_in_flight = self._in_flight
            try:
                completion = await self.transport.send(body)
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
