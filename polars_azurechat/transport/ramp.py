"""Slow start as a ramp in time, until the first answer. Internal.

The first request goes alone for :data:`RAMP_QUIET_S` (longer than
:data:`~polars_azurechat.transport.windows.REORDER_S`, so its answer tells exactly what
the server had counted: the budget), then :data:`RAMP_FIRST` more may go, and until the
first answer their number doubles every :data:`RAMP_S` (1, 2, 4, ...). The limiter asks
the ramp how long until one more may go (:meth:`Ramp.wait`); the first answer ends it.
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
#: RAMP_S. (A quiet first request longer than REORDER_S, whose answer read the budget
#: exactly, cost a short job 21 ms: the budget is read from the ramp's 429s instead.)
RAMP_QUIET_S = 0.002
RAMP_FIRST = 1
RAMP_S = 0.004


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
        self._answer: asyncio.Event | None = None
        #: the ramp's admissions, kept until every one is answered
        self.tickets: list[Ticket] = []
        self._open: set[int] = set()  # ids of those not answered yet
        self.refused: str | None = None  # the resource a 429 among them named

    @property
    def before_first(self) -> bool:
        """No request has gone yet (the next is the first, and goes at once)."""
        return not self.over and not self.first_sent

    @property
    def starting(self) -> bool:
        """The first request is out and not yet answered."""
        return not self.over and self.first_sent

    def first(self) -> None:
        """The first request goes now: the ramp's clock starts."""
        self.first_sent = True
        self._from = self._clock()

    def admitted(self, ticket: Ticket) -> None:
        """Count one admission (before the first answer)."""
        if not self.over:
            self.sent += 1
            self.tickets.append(ticket)
            self._open.add(id(ticket))

    def answered(
        self, ticket: Ticket, refused: str | None = None
    ) -> tuple[str, float] | None:
        """One more answer (``refused``: a 429 naming that resource); maybe a budget.

        Once every admission of the ramp is answered, if the server refused some of
        them with a 429 naming a resource: what it took of that resource before it
        refused (the requests, or their tokens) is its budget, in any candidate
        window, as the ramp lasted less than the shortest. Returns ``(resource,
        budget)`` then, else ``None``.
        """
        if not self._open or id(ticket) not in self._open:
            return None
        self._open.discard(id(ticket))
        if refused is not None and self.refused is None:
            self.refused = refused
        if self._open or not self.over:
            return None
        tickets, self.tickets = self.tickets, []
        span = tickets[-1].sent_at - tickets[0].sent_at
        if self.refused is None or span >= CANDIDATE_WINDOWS[0] - MARGIN_S:
            return None
        taken = [t for t in tickets if not t.rejected]
        if self.refused == "requests":
            return "requests", float(len(taken))
        return "tokens", float(sum(t.tokens for t in taken))

    def wait(self) -> float:
        """Seconds until the ramp admits one more (0: now, or the ramp is over).

        Before the first answer, ``1 + RAMP_FIRST * 2 ** ((t - RAMP_QUIET_S) /
        RAMP_S)`` admissions may have gone ``t`` s after the first (``t >=
        RAMP_QUIET_S``).
        """
        if self.over:
            return 0.0
        if self.full():
            return self._hold_s
        n = self.sent
        due = self._from + (
            0.0
            if n < 1
            else RAMP_QUIET_S + RAMP_S * math.log2(max(1.0, n / RAMP_FIRST))
        )
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
        """Sleep ``seconds``, or less if the first answer comes meanwhile."""
        answered = self._answered()
        if answered.is_set():
            return
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waiter = asyncio.ensure_future(answered.wait())
        try:
            await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()

    def _answered(self) -> asyncio.Event:
        if self._answer is None:
            self._answer = asyncio.Event()
            if self.over:
                self._answer.set()
        return self._answer

    def end(self) -> None:
        """The first answer is back: the ramp is over."""
        self.over = True
        if self._answer is not None:
            self._answer.set()
