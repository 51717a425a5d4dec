"""Admission control for a deployment's quota. Not meant for outside use.

Azure enforces requests-per-minute and tokens-per-minute over short windows (about a sixth
of the minute's quota per 10 s), counting each request's *estimated* tokens on arrival.
:class:`RateLimiter` mirrors that: a sliding-window log of what it admitted, so a request is
admitted only when both budgets allow it, plus a cooldown shared by every worker that a 429
sets to the time the server named. With no quota given, it learns the budgets from Azure's
``x-ratelimit-remaining-*`` headers: what the server says remains, plus what this limiter
had admitted in the window when that request went out, is the window's budget. Clock and
sleep are injected, so tests never wait.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: The window Azure's quota is enforced over.
WINDOW_S = 10.0
#: Extra time before an admission leaves the window, for network skew.
MARGIN_S = 0.3
#: Cooldown after a 429 that names no delay.
DEFAULT_COOLDOWN_S = 1.0


class RateLimiter:
    """Admit requests under requests-per-minute and tokens-per-minute budgets.

    Parameters
    ----------
    requests_per_minute, tokens_per_minute
        The quota; ``None`` leaves that budget unchecked.
    window_s
        The enforcement window; the budget per window is ``quota * window_s / 60``.
    clock, sleep
        Monotonic clock and awaitable sleep (injected in tests).
    """

    def __init__(
        self,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        window_s: float = WINDOW_S,
        margin_s: float = MARGIN_S,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.window_s = window_s
        scale = window_s / 60.0
        self.request_budget = (
            max(1.0, requests_per_minute * scale) if requests_per_minute else None
        )
        self.token_budget = (
            max(1.0, tokens_per_minute * scale) if tokens_per_minute else None
        )
        self._given = (self.request_budget, self.token_budget)
        self._span = window_s + margin_s
        self._clock = clock
        self._sleep = sleep
        self._log: collections.deque[tuple[float, int]] = collections.deque()
        self._tokens = 0
        self._cooldown_until = 0.0
        self._lock: asyncio.Lock | None = None

    def delay(self, tokens: int = 0) -> float:
        """Seconds until a request costing ``tokens`` may be admitted (0: now)."""
        now = self._clock()
        self._expire(now)
        wait = self._cooldown_until - now
        if self.request_budget is not None and len(self._log) + 1 > self.request_budget:
            # the oldest entries must leave until one slot is free
            excess = len(self._log) + 1 - int(self.request_budget)
            wait = max(wait, self._log[excess - 1][0] + self._span - now)
        if self.token_budget is not None and self._log:
            need = self._tokens + tokens - self.token_budget
            if need > 0:
                freed = 0
                for t, cost in self._log:
                    freed += cost
                    if freed >= need:
                        wait = max(wait, t + self._span - now)
                        break
                else:  # larger than the whole budget: admit it alone
                    wait = max(wait, self._log[-1][0] + self._span - now)
        return max(0.0, wait)

    async def acquire(self, tokens: int = 0) -> tuple[int, int]:
        """Wait until the request may go, then count it (waiters are served in order).

        Returns the requests and tokens in the window once it is admitted, for
        :meth:`on_success`.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        if self._lock.locked() or self.delay(tokens) > 0:
            async with self._lock:
                while (wait := self.delay(tokens)) > 0:
                    await self._sleep(wait)
                return self._admit(tokens)
        return self._admit(tokens)

    def _admit(self, tokens: int) -> tuple[int, int]:
        self._log.append((self._clock(), tokens))
        self._tokens += tokens
        return len(self._log), self._tokens

    def on_success(
        self,
        admitted: tuple[int, int],
        remaining_requests: int | None,
        remaining_tokens: int | None,
    ) -> None:
        """Learn the window's budgets from Azure's ``x-ratelimit-remaining-*`` headers.

        ``admitted`` is what :meth:`acquire` returned for the request that got them. A
        budget the user gave is only ever lowered by what the server reports.
        """
        if remaining_requests is not None:
            self.request_budget = _learn(
                self._given[0], admitted[0] + remaining_requests
            )
        if remaining_tokens is not None:
            self.token_budget = _learn(self._given[1], admitted[1] + remaining_tokens)

    def on_rate_limited(self, retry_after_s: float | None) -> None:
        """A 429 arrived: pause every admission until the time the server named."""
        until = self._clock() + (
            retry_after_s if retry_after_s is not None else DEFAULT_COOLDOWN_S
        )
        if until > self._cooldown_until:
            logger.debug("429: pausing admissions for %.3f s", until - self._clock())
            self._cooldown_until = until

    def learned(self) -> dict[str, float | None]:
        """The budgets per window in force now (given or learned)."""
        return {"requests": self.request_budget, "tokens": self.token_budget}

    def _expire(self, now: float) -> None:
        log = self._log
        while log and log[0][0] + self._span <= now:
            self._tokens -= log.popleft()[1]


def _learn(given: float | None, observed: int) -> float:
    observed_f = float(max(1, observed))
    return observed_f if given is None else min(given, observed_f)
