"""Routing requests over a pool of deployments. Not meant for outside use.

A :class:`Route` is one deployment as the engine sees it: a transport, a rate limiter
(its own quota, learned windows and 429 cooldown) and a circuit :class:`Breaker`. A
:class:`Pool` admits each request to one route:

- the lowest ``priority`` tier first; the next tier only when no route of the first
  can take the request now (out of quota, cooling down after a 429, or its circuit
  open);
- within a tier, the route with the most headroom (the share of its tightest budget
  still free), so deployments fill in proportion to their quotas;
- a row being retried after a failure on one route goes to another when there is one.

A pool of one route is the single-deployment engine: admission is its limiter's own
``acquire`` (waiters in order), with no breaker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

from polars_azurechat.errors import (
    APIConnectionError,
    APITimeoutError,
    MalformedResponseError,
    PoolUnavailableError,
    ServerError,
)
from polars_azurechat.transport.http import ChatTransport
from polars_azurechat.transport.ratelimit import RateLimiter, Sleep
from polars_azurechat.transport.windows import Ticket

logger = logging.getLogger(__name__)

#: Consecutive failures (5xx, timeouts, lost connections) that open a circuit.
BREAKER_THRESHOLD = 5
#: How long a circuit first stays open; doubled on each failed probe, up to the max.
BREAKER_OPEN_S = 2.0
BREAKER_MAX_OPEN_S = 30.0
#: The longest a waiting request sleeps before looking at the pool again.
POLL_S = 1.0


def breaks_circuit(exc: BaseException) -> bool:
    """Failures that say the deployment itself is unwell (not the request)."""
    return isinstance(
        exc, ServerError | APIConnectionError | APITimeoutError | MalformedResponseError
    )


class Breaker:
    """A circuit breaker: closed, open for a while after repeated failures, then half-open.

    Half-open lets one probe through; its success closes the circuit, its failure opens
    it again for twice as long.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.failures = 0
        self.open_until: float | None = None
        self.open_s = BREAKER_OPEN_S
        self.probing = False
        self.last_error: str | None = None

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        if self.open_until is None:
            return "closed"
        return "open" if self._clock() < self.open_until else "half-open"

    def allows(self) -> bool:
        """Whether a request may go now (a half-open circuit lets one through)."""
        if self.open_until is None:
            return True
        return self._clock() >= self.open_until and not self.probing

    def opens_in(self) -> float:
        """Seconds until a probe may go (0: now or closed)."""
        if self.open_until is None:
            return 0.0
        return max(0.0, self.open_until - self._clock())

    def admitted(self) -> None:
        """A request was let through (a half-open circuit's one probe)."""
        if self.open_until is not None:
            self.probing = True  # the half-open circuit's one probe

    def success(self) -> None:
        """An answer came: the circuit closes."""
        if self.open_until is not None:
            logger.info("circuit closed: the deployment answers again")
        self.failures = 0
        self.open_until = None
        self.open_s = BREAKER_OPEN_S
        self.probing = False

    def failure(self, exc: BaseException) -> bool:
        """Count a failure; ``True`` when it opened the circuit."""
        self.last_error = str(exc)
        if not breaks_circuit(exc):
            if self.probing:  # the probe was answered: the deployment is up
                self.success()
            return False
        self.failures += 1
        if self.probing:
            self.probing = False
            self.open_s = min(self.open_s * 2, BREAKER_MAX_OPEN_S)
            self.open_until = self._clock() + self.open_s
            return True
        if self.open_until is None and self.failures >= BREAKER_THRESHOLD:
            self.open_until = self._clock() + self.open_s
            return True
        return False

    def released(self) -> None:
        """The admitted request was not sent after all."""
        self.probing = False


@dataclasses.dataclass(eq=False)
class Route:
    """One deployment of the pool."""

    name: str
    transport: ChatTransport
    limiter: RateLimiter
    priority: int = 0
    breaker: Breaker | None = None


class Pool:
    """Admit each request to one route of the pool (see the module docstring)."""

    def __init__(
        self,
        routes: Sequence[Route],
        *,
        clock: Callable[[], float],
        sleep: Sleep,
    ) -> None:
        if not routes:
            msg = "a pool needs at least one deployment"
            raise ValueError(msg)
        self.routes = list(routes)
        self._clock = clock
        self._sleep = sleep
        #: the pool's sleep (injected in tests), for waits of one request
        self.sleep = sleep
        # tiers in priority order; the cache key follows the first route of the first
        self.tiers = [
            [r for r in self.routes if r.priority == p]
            for p in sorted({r.priority for r in self.routes})
        ]
        self.primary = self.tiers[0][0]
        self.single = len(self.routes) == 1
        if not self.single:
            for r in self.routes:
                if r.breaker is None:
                    r.breaker = Breaker(clock)
        self._changed: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None

    async def acquire(
        self,
        tokens: int,
        avoid: Route | None = None,
        recost: Callable[[], int] | None = None,
    ) -> tuple[Route, Ticket]:
        """Wait until some route admits a request costing ``tokens``; return both.

        ``avoid``: the route this row last failed on, skipped while another is up.
        ``recost``: the cost made exactly, once a token budget is known while it
        waits. Raises :class:`PoolUnavailableError` at once when every circuit is open.
        """
        if self.single:
            route = self.primary
            return route, await route.limiter.acquire(tokens, recost)
        if self._lock is None:
            self._lock = asyncio.Lock()
        if recost is not None and self._token_budget_known():
            tokens, recost = recost(), None
        if not self._lock.locked():
            admitted, _ = self._try(tokens, avoid)
            if admitted is not None:
                return admitted
        async with self._lock:  # waiters in order, one of them sleeping
            while True:
                if recost is not None and self._token_budget_known():
                    tokens, recost = recost(), None
                admitted, hint = self._try(tokens, avoid)
                if admitted is not None:
                    return admitted
                await self._wait(max(0.001, min(hint, POLL_S)))

    def _token_budget_known(self) -> bool:
        return any(r.limiter.token_budget is not None for r in self.routes)

    def _try(
        self, tokens: int, avoid: Route | None
    ) -> tuple[tuple[Route, Ticket] | None, float]:
        """One pass over the tiers: an admission, or how long to wait before the next."""
        up = [r for r in self.routes if r.breaker is None or r.breaker.allows()]
        if not up:
            raise self._all_down()
        if avoid in up and len(up) > 1:
            up.remove(avoid)
        hint = min(
            (r.breaker.opens_in() for r in self.routes if r not in up and r.breaker),
            default=POLL_S,
        )
        for tier in self.tiers:
            ready = [r for r in tier if r in up]
            if len(ready) > 1:
                ready.sort(key=lambda r: -r.limiter.headroom(tokens))
            for route in ready:
                ticket = route.limiter.try_acquire(tokens)
                if ticket is not None:
                    if route.breaker is not None:
                        route.breaker.admitted()
                    return (route, ticket), 0.0
                hint = min(hint, route.limiter.wait_hint(tokens))
            if any(r.limiter.ramping for r in ready):
                break  # its slow start's answers say what it can take: not full yet
        return None, hint

    def done(self, route: Route, exc: BaseException | None = None) -> None:
        """A request admitted to ``route`` is over (``exc``: how it failed)."""
        breaker = route.breaker
        if breaker is not None:
            if exc is None:
                breaker.success()
            elif breaker.failure(exc):
                logger.warning(
                    "deployment %r: circuit open for %.3g s after %d failures in a "
                    "row (last: %s); its requests go to the other deployments",
                    route.name,
                    breaker.open_s,
                    breaker.failures,
                    exc,
                )
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def released(self, route: Route) -> None:
        """A request admitted to ``route`` was not sent."""
        if route.breaker is not None:
            route.breaker.released()
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait(self, timeout: float) -> None:
        """Sleep ``timeout``, or less if a request ends meanwhile (capacity may free)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        changed = asyncio.ensure_future(self._changed.wait())
        slept = asyncio.ensure_future(self._sleep(timeout))
        try:
            await asyncio.wait((changed, slept), return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            slept.cancel()

    def _all_down(self) -> PoolUnavailableError:
        soonest = min(
            (r.breaker.opens_in() for r in self.routes if r.breaker is not None),
            default=0.0,
        )
        detail = "; ".join(
            f"{r.name}: {(r.breaker.last_error or 'failing')[:200]}"
            for r in self.routes
            if r.breaker is not None
        )
        return PoolUnavailableError(
            f"all {len(self.routes)} deployments are failing (circuits open; the next "
            f"probe in {math.ceil(soonest * 10) / 10:g} s): {detail}",
            status_code=503,
            retry_after_s=max(soonest, 0.25),  # the next attempt is the probe
        )
