"""A deployment shared with other processes that have no common limiter. Internal.

Several processes (colleagues' notebooks, CLI runs) on one deployment, each with its own
:class:`~polars_azurechat.transport.ratelimit.RateLimiter` and the quota given, each
think the whole quota is theirs. The server's ``x-ratelimit-remaining-*`` headers count
everyone's requests, so each process reads the others' use as a smaller budget: a job
that joins a full window learned a budget of about one request and stalled (issue 23,
``benchmarks/shared.py --only staggered``: three of four jobs not done at 4x the
fastest schedule).

Once a limiter sees it is not alone, its requests are paced by :class:`Crowd` instead of
the learned request budget: a rate, cut to :data:`CUT` of itself by a 429 or by an
answer saying nothing remains (at most once per :data:`CUT_EVERY_S`), grown otherwise
by :data:`ADD` of the given quota per second, or by :data:`GROW` of itself per second
while answers say more than half of what the server ever said remained is free. Every
process cuts and grows alike, so their rates converge on shares of the quota (AIMD, as
TCP shares a link). It sees it is not alone when

- the first answer of its slow start is a 429 for requests while the window is not known
  yet: others filled it (it starts at :data:`START_SHARE` of the quota); or
- the window is known and an answer says less remains than the quota less the most the
  server can have counted of this process's own requests (the others' use, beyond
  :data:`OTHERS_TOLERANCE`): it starts at :data:`KEEP_SHARE` of its own recent rate.

It applies to a given request quota only (``requests_per_minute``). Redis
(``limiter="redis://..."``) stays the way to share a quota with next to no 429s.
The constants were chosen on ``benchmarks/shared_sim.py`` (the staggered scenario on
virtual time) and checked on the real benchmark.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polars_azurechat.transport.windows import Resource

logger = logging.getLogger(__name__)

#: A 429, or an answer saying nothing remains, cuts the rate to this share of itself ...
CUT = 0.7
#: ... at most once per this many seconds (one burst's 429s are one signal).
CUT_EVERY_S = 1.0
#: Otherwise the rate grows by this share of the quota per second ...
ADD = 0.02
#: ... or by this share of itself per second while more than FREE_SHARE of the most the
#: server said remained is still free.
GROW = 0.3
FREE_SHARE = 0.5
#: A job whose slow start met a full window starts at this share of the quota.
START_SHARE = 0.25
#: A job that finds others while it runs starts at this share of its own recent rate.
KEEP_SHARE = 0.8
#: The rate never goes below this share of the quota.
MIN_SHARE = 0.01
#: Requests in the window beyond ours and what the server says remains, taken as
#: others' use: at least this many, and this share of the budget.
OTHERS_TOLERANCE = (2.0, 0.05)


class Crowd:
    """Requests paced at a rate that AIMD shares with other processes.

    Parameters
    ----------
    per_minute
        The given request quota.
    rate
        Requests per second to start at.
    now
        The limiter's clock.
    """

    def __init__(self, per_minute: float, rate: float, now: float) -> None:
        self.full = per_minute / 60.0
        self.rate = min(self.full, max(self.full * MIN_SHARE, rate))
        self.next_at = now
        self._cut_at = -float("inf")
        self._grown_at = now
        self._most = 0.0  # the most the server said remained
        logger.info(
            "others use this deployment: pacing requests at %.2f/s (quota %.2f/s); "
            "share it through Redis (limiter=) for fewer 429s",
            self.rate,
            self.full,
        )

    def wait(self, now: float) -> float:
        """Seconds until the next request may go."""
        return max(0.0, self.next_at - now)

    def admitted(self, now: float) -> None:
        """A request went at ``now``: the next goes one interval later."""
        gap = 1.0 / self.rate
        self.next_at = max(self.next_at, now) + gap

    def refused(self, now: float) -> None:
        """A 429 for requests (or nothing remains): cut the rate."""
        if now - self._cut_at < CUT_EVERY_S:
            return
        self._cut_at = self._grown_at = now
        self.rate = max(self.full * MIN_SHARE, self.rate * CUT)
        logger.debug("crowded: rate cut to %.2f/s", self.rate)

    def answered(self, remaining: float, now: float) -> None:
        """A success said ``remaining`` requests remain in the server's window."""
        self._most = max(self._most, remaining)
        if remaining <= 0:
            self.refused(now)
            return
        dt = now - self._grown_at
        if dt <= 0:
            return
        step = ADD * self.full * dt
        if remaining > FREE_SHARE * self._most:
            step = max(step, GROW * self.rate * dt)
        self.rate = min(self.full, self.rate + step)
        self._grown_at = now


def others_use(budget: float, remaining: float, own_most: float) -> bool:
    """Whether an answer shows others' requests in the window beyond the tolerance.

    ``own_most`` is the most the server can have counted of ours when it answered.

    >>> others_use(100, 60, 38), others_use(100, 30, 38)
    (False, True)
    """
    floor, share = OTHERS_TOLERANCE
    return budget - remaining - own_most > max(floor, share * budget)


def met_full(requests: Resource, in_ramp: bool, now: float) -> Crowd | None:
    """A 429 for requests: a pace if this process's slow start met a full window.

    Only under a given quota whose window is not known yet (nothing of ours is in it:
    others filled it).
    """
    if in_ramp and requests.per_minute and not requests.known:
        return Crowd(requests.per_minute, START_SHARE * requests.per_minute / 60, now)
    return None


def found_others(
    requests: Resource, remaining: float, ours: tuple[float, float], now: float
) -> Crowd | None:
    """A success under a known window: a pace if it shows others' use.

    ``ours``: the most the server can have counted of ours when it answered, and what
    the window holds of ours now (the pace starts at a share of that rate).
    """
    if not requests.per_minute or not requests.known:
        return None
    budget = requests.per_minute * requests.window / 60.0
    if not others_use(budget, remaining, ours[0]):
        return None
    return Crowd(requests.per_minute, KEEP_SHARE * ours[1] / requests.window, now)
