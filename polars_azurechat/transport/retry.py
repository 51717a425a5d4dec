"""The retry policy, built on tenacity. Not meant for outside use.

Retried: timeouts, dropped or refused connections, malformed 200 bodies, 408, 409, 429 and
5xx. Never retried: other 4xx (bad request, content filter, context too long, wrong key,
wrong deployment). A delay the server names (``retry-after-ms`` / ``Retry-After``) is
waited as asked; otherwise exponential backoff with jitter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import tenacity
from tenacity.wait import wait_base

from polars_azurechat.errors import APIStatusError, RequestError, ServerError

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed attempt may succeed if sent again."""
    if isinstance(exc, RequestError | ServerError):
        return True
    return isinstance(exc, APIStatusError) and exc.status_code == 429


class WaitRetryAfter(wait_base):
    """Wait what the server asked for, else fall back to another wait strategy."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        """Return the delay before the next attempt."""
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, APIStatusError) and exc.retry_after_s is not None:
            return exc.retry_after_s
        return float(self.fallback(retry_state))


class StopAtDeadline(tenacity.stop.stop_base):
    """Stop when the next attempt would start after the run's deadline."""

    def __init__(
        self, deadline: Callable[[], float | None], clock: Callable[[], float]
    ) -> None:
        self.deadline = deadline
        self.clock = clock

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        """Whether to give up now."""
        deadline = self.deadline()
        if deadline is None:
            return False
        return self.clock() + (retry_state.upcoming_sleep or 0.0) >= deadline


def build_retrying(
    *,
    max_attempts: int,
    sleep: Sleep,
    deadline: Callable[[], float | None] = lambda: None,
    clock: Callable[[], float] = time.monotonic,
    initial_backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
) -> tenacity.AsyncRetrying:
    """The policy for one row's request; ``copy()`` it per row (it holds per-call state)."""
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(is_retryable),
        stop=tenacity.stop_after_attempt(max_attempts)
        | StopAtDeadline(deadline, clock),
        wait=WaitRetryAfter(
            tenacity.wait_exponential_jitter(
                multiplier=initial_backoff_s, max=max_backoff_s
            )
        ),
        sleep=sleep,
        before_sleep=tenacity.before_sleep_log(logger, logging.DEBUG),
        reraise=True,
    )
