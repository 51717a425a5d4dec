"""Slow start as a ramp in time, until the first answer. Internal.

The first request goes, a second :data:`RAMP_QUIET_S` later, and until the first answer
their number doubles every :data:`RAMP_S` (1, 2, 4, ...), from :data:`RAMP_FAST_FROM` every
:data:`RAMP_FAST_S`: a job reaches a concurrency of 100 about 22 ms after its first
request. The limiter asks the ramp how long until one
more may go (:meth:`Ramp.wait`); the first answer ends it.

Answers from amid the ramp's burst do not tell the budget one by one (the server may
have taken the burst in any order), but together they do, as the ramp lasts less than
the shortest candidate window: once every one of them is answered, what the server took
before refusing (if it answered some with 429s), or what it took plus the least it said
remained, is the budget (:meth:`Ramp.answered`). Between the first answer and that
reading, if the answers carry rate-limit headers, one request may go (it finds out
whether the server is full) and the rest wait for the reading, at most the ramp's
length plus :data:`HOLD_EXTRA_S`: without the hold, each answer of the burst freed a
worker that sent into a full window before the first 429 came back.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

from polars_azurechat.transport.windows import (
    CANDIDATE_WINDOWS,
    MARGIN_S,
    Resource,
    Ticket,
)

#: Slow start as a ramp: the first request goes alone for RAMP_QUIET_S, then
#: RAMP_FIRST more may go, and until the first answer their number doubles every
#: RAMP_S up to RAMP_FAST_FROM, then every RAMP_FAST_S. (A quiet first request longer
#: than REORDER_S, whose answer read the budget exactly, cost a short job 21 ms: the
#: budget is read from the ramp's answers together instead. Doubling every 4 ms
#: throughout missed the demo (1.16x a bare client); every 2 ms met it (1.07x) but a
#: budget of 10 per window then drew twice the 429s (r1: 7.1%, small: 3.8%, against
#: 1.6% and 2.0%): an instant 429 takes ~2.5 ms to come back on loopback, and what
#: the ramp sends meanwhile is refused. Small budgets are passed at the slow pace, the
#: rest of the way to 100 at the fast one (from 16: r1 4.8%, as the 429 came back
#: after the 16th went; from 32: r1 2.0%, demo 1.09x and 1.17x in two runs). A quiet
#: first of 3 ms (a 401 comes back in ~2.5 ms on loopback) then 2 at once, not 1,
#: took 6 ms off the demo (1.10x, 1.12x, 1.01x; r1 1.6%, wrongkey 1 request). The 429s S4 drew at its third window (1.53x)
#: were rows costed by length before the token budget was known, admitted at that
#: guess: they are costed again once it is, see ``RateLimiter.acquire``.)
RAMP_QUIET_S = 0.003
RAMP_FIRST = 2
RAMP_S = 0.004
RAMP_FAST_FROM = 32
RAMP_FAST_S = 0.0015
#: After the first answer, the rest of the ramp's answers are waited for at most its
#: length plus this (a straggler does not hold the job).
HOLD_EXTRA_S = 0.05


def ramp_time(n: int) -> float:
    """Seconds after the quiet start at which ``n`` admissions may have gone.

    ``n`` doubles every :data:`RAMP_S` up to :data:`RAMP_FAST_FROM`, then every
    :data:`RAMP_FAST_S`.

    >>> round(ramp_time(1), 4), round(ramp_time(32), 4), round(ramp_time(100), 4)
    (0.0, 0.016, 0.0185)
    """
    slow = math.log2(max(1.0, min(n, RAMP_FAST_FROM) / RAMP_FIRST))
    fast = math.log2(max(1.0, n / RAMP_FAST_FROM))
    return RAMP_S * slow + RAMP_FAST_S * fast


class Ramp:
    """How many admissions may have gone before the first answer, and when.

    Parameters
    ----------
    on
        ``False``: no slow start (the ramp is over from the start).
    requests
        The limiter's request resource: a given request quota bounds the ramp.
    clock, sleep
        The limiter's clock and sleep.
    hold_s
        What :meth:`wait` says while a given quota's share is out (the first answer
        wakes the waiters sooner).
    """

    def __init__(
        self,
        *,
        on: bool,
        requests: Resource,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        hold_s: float,
    ) -> None:
        self.over = not on
        self.first_sent = False
        self.sent = 0  # admissions before the first answer
        self._from = 0.0  # when the first request went
        self._requests = requests
        self._clock = clock
        self._sleep = sleep
        self._hold_s = hold_s
        self._event: asyncio.Event | None = None  # set when waiters should look again
        #: the ramp's admissions, kept until every one is answered
        self.tickets: list[Ticket] = []
        self._open: set[int] = set()  # ids of those not answered yet
        self.refused: str | None = None  # the resource a 429 among them named
        #: the least each resource was said to remain, over the ramp's answers
        self._least: dict[str, float] = {}
        #: after the first answer: until when the rest of the ramp's are waited for
        self.hold_until: float | None = None
        self._probe_sent = False

    @property
    def before_first(self) -> bool:
        """No request has gone yet (the next is the first, and goes at once)."""
        return not self.over and not self.first_sent

    @property
    def starting(self) -> bool:
        """The first request is out and not yet answered."""
        return not self.over and self.first_sent

    @property
    def holding(self) -> bool:
        """After the first answer, the rest of the ramp's answers are waited for."""
        return self.hold_until is not None and self._clock() < self.hold_until

    def first(self) -> None:
        """The first request goes now: the ramp's clock starts."""
        self.first_sent = True
        self._from = self._clock()

    def admitted(self, ticket: Ticket) -> None:
        """Count one admission (before the first answer, or the hold's one)."""
        if not self.over:
            self.sent += 1
            self.tickets.append(ticket)
            self._open.add(id(ticket))
        elif self.hold_until is not None:
            self._probe_sent = True

    def end(self, *, hold: bool = False) -> None:
        """An answer came: the ramp is over (``hold``: wait for the rest of its answers).

        Only the first answer ends it; ``hold`` is for a success carrying rate-limit
        headers (the budget is then read once the ramp's answers are in).
        """
        if self.over:
            return
        self.over = True
        if hold and len(self._open) > 1:
            span = self.tickets[-1].sent_at - self.tickets[0].sent_at
            self.hold_until = self._clock() + span + HOLD_EXTRA_S
        self._wake()

    def release(self) -> None:
        """Stop holding (a 429 came: the cooldown it names governs now)."""
        if self.hold_until is not None:
            self.hold_until = None
            self._wake()

    def holds(self, ticket: Ticket) -> bool:
        """Whether ``ticket`` is one of the ramp's admissions, not answered yet."""
        return id(ticket) in self._open

    def answered(
        self,
        ticket: Ticket,
        refused: str | None = None,
        remaining: dict[str, int | None] | None = None,
    ) -> list[tuple[str, float]]:
        """One more answer of the ramp's; once all are in, the budgets they tell.

        ``refused``: a 429 naming that resource; ``remaining``: what a success said
        remained (``x-ratelimit-remaining-*``). Once every admission of the ramp is
        answered (the ramp lasted less than the shortest candidate window, so every
        one counts in any window): if the server refused some, what it took of that
        resource before refusing is its budget; else, for each resource it told,
        what it took plus the least it said remained. Returns ``(resource, budget)``
        pairs (none before the last answer).
        """
        if not self._open or id(ticket) not in self._open:
            return []
        self._open.discard(id(ticket))
        if refused is not None and self.refused is None:
            self.refused = refused
        for name, value in (remaining or {}).items():
            if value is not None:
                self._least[name] = min(self._least.get(name, value), float(value))
        if self._open or not self.over:
            return []
        tickets, self.tickets = self.tickets, []
        self.release()
        span = tickets[-1].sent_at - tickets[0].sent_at
        if span >= CANDIDATE_WINDOWS[0] - MARGIN_S:
            return []
        taken = [t for t in tickets if not t.rejected]
        took = {
            "requests": float(len(taken)),
            "tokens": float(sum(t.tokens for t in taken)),
        }
        if self.refused is not None:
            return [(self.refused, took[self.refused])] if self.refused in took else []
        return [(name, took[name] + least) for name, least in self._least.items()]

    def wait(self) -> float:
        """Seconds until the ramp admits one more (0: now, or the ramp is over).

        Before the first answer, the ``n``-th admission after the first goes
        ``RAMP_QUIET_S + ramp_time(n)`` s after it. During the hold after it, one more, then none until the
        ramp's answers are in (or the hold's end).
        """
        if self.over:
            if self.hold_until is None or not self._probe_sent:
                return 0.0
            left = self.hold_until - self._clock()
            if left <= 0:
                self.hold_until = None
                return 0.0
            return left
        if self.full():
            return self._hold_s
        n = self.sent
        due = self._from + (0.0 if n < 1 else RAMP_QUIET_S + ramp_time(n))
        return max(0.0, due - self._clock())

    def full(self) -> bool:
        """A given request quota's share of the shortest candidate window went already.

        Before the first answer the window a given quota is enforced over is not
        known: the ramp stays within what the shortest candidate allows (600 requests
        a minute: 10 before the first answer), as the server may count per second. (A
        token quota is left to the ramp: bounding it so held a token-bound job back
        by a whole 10-s window in the benchmark's S4.)
        """
        res = self._requests
        return (
            res.per_minute is not None
            and not res.known
            and self.sent >= max(1.0, res.per_minute * CANDIDATE_WINDOWS[0] / 60)
        )

    async def sleep_or_answer(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if an answer changes what the ramp allows."""
        if self._event is None:
            self._event = asyncio.Event()
        event = self._event
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None
