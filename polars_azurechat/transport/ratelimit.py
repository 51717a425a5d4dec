"""Admission under the quota the server really enforces. Not meant for outside use.

Azure counts requests and tokens (prompt + ``max_tokens``, estimated on arrival) over
short windows whose length it does not publish ("typically 1 or 10 seconds"; tokens are
seen over 60 s too). :class:`RateLimiter` models it instead of assuming it:

- A **ledger** of what it admitted (send time, estimated tokens). A request the server
  rejects with 429 leaves the ledger: learned budgets never count it.
- For requests and for tokens separately, a **window** (1, 10 or 60 s) and a **budget**
  per window. A given quota (``requests_per_minute``, ``tokens_per_minute``) is the
  per-minute figure; its window is still learned. Otherwise the budget is learned from
  ``x-ratelimit-remaining-*``: what remained after a request, plus what the ledger says
  was admitted in the window up to it, is the window's budget. Each success gives one
  estimate per candidate window; the true window is the one whose estimates agree (as
  the others' drift while the window slides), and the budget is a low quantile of its
  recent estimates (the 5th percentile): stable, not overwritten per response. A 429's
  Retry-After settles the window at once: it names when the oldest admission leaves
  the true window. ``x-ratelimit-limit-*`` caps the budget when sent.
- One answer can be **decisive**. While nothing has left any candidate window, every
  candidate gives the same estimate: those readings are the **reference** budget. An
  answer whose estimate for the assumed window exceeds the reference (the server took
  more than that window allows) proves the window too long: the longest shorter
  candidate whose estimate matches the reference is taken at once (the shortest is
  then known). An estimate is used only where it is not ambiguous: the server counts
  a request on arrival, a little after we send it, so admissions within the margin of
  a window's edge may or may not still be inside it; and requests sent within
  :data:`REORDER_S` of each other (a burst) may arrive in either order, so an answer
  from amid a burst does not say which of its neighbours were counted before it.
- An admission leaves a window after its length plus a **margin** (2% of it, at least
  20 ms). A 429 that names a wait shorter than a tenth of a known window means the
  server took our requests in later than the margin allows (a burst queued at the
  server): that window's margin grows by what it was short.
- The ledger holds what the server charged once a request is answered (its usage);
  while it is in flight, a prediction from what the server charged for requests we
  estimated alike, with a reserve when that is a guess.
- **Slow start**, as a ramp in time (:mod:`~polars_azurechat.transport.ramp`): the
  first request goes, a second :data:`~polars_azurechat.transport.ramp.RAMP_QUIET_S`
  later, and until the first answer their number doubles every
  :data:`~polars_azurechat.transport.ramp.RAMP_S` (faster past 32): a job reaches a
  concurrency of 100 about 22 ms after its first request and pays no latency before
  it. What the server answers at once, before any model work (a 401 for a wrong key, a 404 for a wrong
  deployment, a 429 when the quota is full), arrives while the ramp has sent few on
  loopback; against Azure, what the ramp sends within a round trip (about 7
  at 10 ms, 50 at 20 ms). The first answer ends the ramp: a 401/
  403/404 stops the run, a 429 pauses admission and names the window, a 200 with
  rate-limit headers lets one more request go and holds the rest until the ramp's
  answers are in (at most the ramp's length and 50 ms): together they read the
  budget (what the server took before refusing, or what it took plus the least it
  said remained), as the ramp is shorter than any candidate window. A given request
  quota bounds the ramp by what the shortest candidate window allows (600 requests a
  minute: 10 before the first answer), as its window is not known yet.
- While the window is not known and a shorter candidate window would admit a request
  the assumed one holds back, one request at a time goes early as a **probe**: its
  answer (200 with what remains, or a 429 with the true wait) teaches the window. (If
  no shorter candidate would, a probe goes after :data:`PROBE_AFTER_S` blocked.)
- A 429 pauses every admission until the time it names.
- Under a given request quota, a limiter that sees other processes use the deployment
  paces its requests by an AIMD rate instead of the learned request budget
  (:mod:`~polars_azurechat.transport.crowd`).

Clock and sleep are injected, so tests never wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from polars_azurechat.transport.crowd import Crowd, found_others, met_full
from polars_azurechat.transport.ramp import Ramp
from polars_azurechat.transport.windows import (
    CANDIDATE_WINDOWS,
    Burst,
    Charges,
    Learning,
    Resource,
    Ticket,
    Window,
    learn_from_retry,
)

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: Cooldown after a 429 that names no delay.
DEFAULT_COOLDOWN_S = 1.0
#: A blocked limiter that does not know the window yet, and whose shorter candidate
#: windows are full too, sends one probe after this long. While a window is learned, a
#: blocked waiter looks again at least this often: an answer may shorten the window (a
#: wait reckoned on the 60-s one held a job 50 s in ``quota.py r10t10``).
PROBE_AFTER_S = 1.0
#: While a probe is out, waiters look again this often (its answer may open the way).
PROBE_POLL_S = 0.05


#: A request's exact cost, made later (see :meth:`RateLimiter.acquire`), or none.
Recost = Callable[[], int] | None


def _headroom(
    resources: dict[str, Resource],
    windows: dict[float, Window],
    now: float,
    tokens: int,
) -> float:
    """Share of the tightest budget still free at ``now`` after one more request."""
    free = 1.0
    for name, cost in (("requests", 1), ("tokens", tokens)):
        res = resources[name]
        budget = res.budget()
        if budget is None or budget <= 0:
            continue
        window = windows[res.window]
        window.expire(now)
        free = min(free, 1.0 - (window.used(name) + cost) / budget)
    return free


class RateLimiter:
    """Admit requests under the request and token budgets the server enforces.

    Parameters
    ----------
    requests_per_minute, tokens_per_minute
        The quota, if known; the window it is enforced over is learned.
    window_s
        The enforcement window, if known (both resources; tests and benchmarks).
    slow_start
        Until the first answer, ramp admissions up (the first alone for
        :data:`RAMP_QUIET_S`, then doubling every :data:`RAMP_S`) rather than all at
        once.
    clock, sleep
        Monotonic clock and awaitable sleep (injected in tests).
    """

    #: Pace requests by :class:`~polars_azurechat.transport.crowd.Crowd` when others
    #: use the deployment too (a limiter that shares one ledger does not need to).
    crowding = True

    def __init__(
        self,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        window_s: float | None = None,
        slow_start: bool = True,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.resources = {
            "requests": Resource("requests", requests_per_minute, window_s),
            "tokens": Resource("tokens", tokens_per_minute, window_s),
        }
        lengths = sorted({*CANDIDATE_WINDOWS, *([window_s] if window_s else [])})
        self._windows = {w: Window(w) for w in lengths}
        self._clock = clock
        self._sleep = sleep
        self._cooldown_until = 0.0
        self._lock: asyncio.Lock | None = None
        # slow start (the ramp) until the first answer
        self.ramp = Ramp(
            on=slow_start,
            requests=self.resources["requests"],
            clock=clock,
            sleep=sleep,
            hold_s=PROBE_AFTER_S,
        )
        self._probe: Ticket | None = None
        self._blocked_since: float | None = None
        self.charges = Charges()  # what the server charges, against our estimates
        self._open = 0  # admitted, not yet answered
        self._burst = Burst()  # the admissions of the last REORDER_S
        self._last: Ticket | None = None
        self._tracking = True  # keep the ledger (until a headerless answer says no)
        #: others use the deployment too: requests are paced by this (module crowd)
        self.crowd: Crowd | None = None

    # -- what is known --------------------------------------------------------------------

    @property
    def token_budget(self) -> float | None:
        """Tokens per window in force (``None``: tokens are not limited)."""
        return self.resources["tokens"].budget()

    def learned(self) -> dict[str, float | None]:
        """Per-minute budgets and windows in force now (given or learned)."""
        req, tok = self.resources["requests"], self.resources["tokens"]
        return {
            "requests_per_minute": req.per_minute_now(),
            "tokens_per_minute": tok.per_minute_now(),
            "request_window_s": req.window if req.budget() is not None else None,
            "token_window_s": tok.window if tok.budget() is not None else None,
        }

    # -- admission ------------------------------------------------------------------------

    def delay(self, tokens: int = 0) -> float:
        """Seconds until a request costing ``tokens`` may be admitted (0: now)."""
        now = self._clock()
        for w in self._windows.values():
            w.expire(now)
        wait = self._cooldown_until - now
        for name, cost in (("requests", 1), ("tokens", self._scaled(tokens))):
            res = self.resources[name]
            budget = res.budget()
            if name == "requests" and self.crowd is not None:
                wait = max(wait, self.crowd.wait(now))
            elif budget is not None:
                window = self._windows[res.window]
                wait = max(wait, window.wait_for(name, budget, cost, now))
        return max(0.0, wait)

    async def acquire(self, tokens: int = 0, recost: Recost = None) -> Ticket:
        """Wait until the request may go, then record it (waiters go in order).

        ``recost`` makes the cost exact once a token budget is known (now, or while
        it waits).
        """
        if recost is not None and self.token_budget is not None:
            tokens, recost = recost(), None
        if self.ramp.before_first:
            return self._admit_first(tokens)
        if self._lock is None:
            self._lock = asyncio.Lock()
        if (
            not self._lock.locked()
            and self.ramp.wait() <= 0
            and self.delay(tokens) <= 0
        ):
            return self._admit(tokens)
        async with self._lock:
            while True:
                ramp = self.ramp.wait()
                if ramp > 0:  # the next step of the ramp, or the first answer
                    await self.ramp.sleep_or_answer(ramp)
                    continue
                if recost is not None and self.token_budget is not None:
                    tokens, recost = recost(), None
                wait = self.delay(tokens)
                if wait <= 0:
                    self._blocked_since = None
                    return self._admit(tokens)
                if self._may_probe(wait, tokens):
                    self._probe = self._admit(tokens, probe=True)
                    return self._probe
                await self._sleep(self._next_look(wait, tokens))

    def try_acquire(self, tokens: int = 0) -> Ticket | None:
        """Admit a request now if :meth:`acquire` would without waiting, else ``None``.

        For a pool of deployments, which tries each in turn: the first request of slow
        start and a probe are admitted as :meth:`acquire` admits them; a request is not
        admitted ahead of callers already waiting in :meth:`acquire`.
        """
        if self.ramp.before_first:
            return self._admit_first(tokens)
        if self.ramp.wait() > 0 or (self._lock is not None and self._lock.locked()):
            return None
        wait = self.delay(tokens)
        if wait <= 0:
            self._blocked_since = None
            return self._admit(tokens)
        if self._may_probe(wait, tokens):
            self._probe = self._admit(tokens, probe=True)
            return self._probe
        return None

    @property
    def ramping(self) -> bool:
        """Slow start is not over: its first answer, or the rest of its answers, awaited."""
        return self.ramp.starting or self.ramp.holding

    def wait_hint(self, tokens: int = 0) -> float:
        """Seconds after which :meth:`try_acquire` may succeed (an upper bound to poll at)."""
        ramp = self.ramp.wait()
        if ramp > 0:
            return ramp  # the first answer wakes the pool sooner
        wait = self.delay(tokens)
        return self._next_look(wait, tokens) if wait > 0 else 0.0

    def headroom(self, tokens: int = 0) -> float:
        """Share of the tightest budget still free now, after ``tokens`` (1.0: unknown)."""
        return _headroom(
            self.resources, self._windows, self._clock(), self._scaled(tokens)
        )

    def _admit_first(self, tokens: int) -> Ticket:
        """Slow start: the first request goes alone, and the ramp starts."""
        self.ramp.first()
        return self._admit(tokens)

    def _probing(self) -> bool:
        return any(
            not r.known and r.budget() is not None for r in self.resources.values()
        )

    def _probe_in(self, tokens: int, now: float) -> float | None:
        """Seconds until a probe may go (``None``: none will).

        None goes while one is out, or while a known window holds the request back. A
        probe goes when, for each resource whose window holds the request back, a
        shorter candidate window would admit it (the answer then tells which is right);
        with no shorter candidate, after :data:`PROBE_AFTER_S` blocked.
        """
        if self._probe is not None and not self._probe.answered:
            return None
        due = 0.0
        blocked = False
        for name, cost in (("requests", 1), ("tokens", self._scaled(tokens))):
            res = self.resources[name]
            budget = res.budget()
            if budget is None or (name == "requests" and self.crowd is not None):
                continue  # (a crowd's pace governs requests: no probe jumps it)
            wait = self._windows[res.window].wait_for(name, budget, cost, now)
            if wait <= 0:
                continue
            if res.known:
                return None
            blocked = True
            options = [
                self._windows[v].wait_for(name, b, cost, now)
                for v in CANDIDATE_WINDOWS
                if v < res.window and (b := res.budget(v)) is not None
            ]
            if not options and wait > PROBE_AFTER_S:  # no candidate: blocked so long
                since = now if self._blocked_since is None else self._blocked_since
                options.append(since + PROBE_AFTER_S - now)
            if not options:
                return None
            due = max(due, min(options))
        if not blocked:
            return None
        return max(due, self._cooldown_until - now, 0.0)

    def _may_probe(self, wait: float, tokens: int = 0) -> bool:
        now = self._clock()
        if self._blocked_since is None:
            self._blocked_since = now
        due = self._probe_in(tokens, now)
        return due is not None and due <= 0 and wait > 0

    def _next_look(self, wait: float, tokens: int) -> float:
        """How long a blocked waiter sleeps before it looks again."""
        if not self._probing():
            return wait
        if self._probe is not None and not self._probe.answered:
            return min(wait, PROBE_POLL_S)  # its answer may open the way
        due = self._probe_in(tokens, self._clock())
        return min(wait, PROBE_AFTER_S) if due is None else max(0.0, min(wait, due))

    def _scaled(self, tokens: int) -> int:
        """The tokens an admission of a request we estimate at ``tokens`` counts."""
        charge, reserve = self.charges.predict(tokens)
        return charge + reserve

    def _admit(self, tokens: int, *, probe: bool = False) -> Ticket:
        charge, reserve = self.charges.predict(tokens)
        ticket = Ticket(
            self._clock(), charge, reserve=reserve, estimate=tokens, probe=probe
        )
        self.ramp.admitted(ticket)
        if self.crowd is not None:
            self.crowd.admitted(ticket.sent_at)
        if not self._tracking:  # nothing to learn and nothing to enforce: no ledger
            return ticket
        learning = ticket.learning = Learning(quiet=self._open == 0)
        self._open += 1
        self._last = ticket
        self._burst.add(ticket, learning)
        ticket.tracked = True
        for w in self._windows.values():
            w.add(ticket)
            low, exact, high = w.counts(ticket.sent_at)
            learning.used[w.length] = exact
            learning.low[w.length] = low
            learning.high[w.length] = high
        if probe:
            self._blocked_since = None
        return ticket

    def _close(self, ticket: Ticket) -> bool:
        """``ticket`` is answered; ``True`` if it was quiet throughout."""
        learning = ticket.learning
        quiet = learning is not None and learning.quiet and self._last is ticket
        if not ticket.answered:
            ticket.answered = True
            if ticket.tracked:
                self._open -= 1
        return quiet

    # -- what the server said ---------------------------------------------------------------

    def on_success(
        self,
        ticket: Ticket,
        remaining_requests: int | None,
        remaining_tokens: int | None,
        limit_requests: int | None = None,
        limit_tokens: int | None = None,
        charged_tokens: int | None = None,
    ) -> None:
        """An answer: learn from ``x-ratelimit-remaining-*`` (and ``-limit-*``).

        ``charged_tokens`` is what the server says the request cost (its prompt count
        plus the reserved answer): it teaches the ratio of its count to ours.
        """
        quiet = self._close(ticket)
        self.ramp.end(
            hold=remaining_requests is not None or remaining_tokens is not None
        )
        # a server that sends no rate-limit headers, with no quota given, leaves
        # nothing to learn or enforce: the ledger is skipped until headers appear
        self._tracking = (
            remaining_requests is not None
            or remaining_tokens is not None
            or any(r.budget() is not None for r in self.resources.values())
        )
        own = 0  # what the server charged beyond what the ledger held for it
        if charged_tokens and ticket.estimate:
            self.charges.learn(ticket.estimate, charged_tokens)
            if ticket.tracked:
                own = charged_tokens - ticket.tokens
                for w in self._windows.values():
                    w.recharge(ticket, charged_tokens)
            ticket.tokens, ticket.reserve = charged_tokens, 0
        for name, remaining, limit in (
            ("requests", remaining_requests, limit_requests),
            ("tokens", remaining_tokens, limit_tokens),
        ):
            res = self.resources[name]
            if limit is not None:
                res.limit = float(limit)
            learning = ticket.learning
            if remaining is not None and learning is not None:  # else: nothing to learn
                k, extra = (0, 0) if name == "requests" else (1, own)
                # the server may have taken its neighbours in before or after it
                early, late = learning.before[k], self._burst.after(learning)[k]
                res.observe(
                    float(remaining),
                    {w: learning.used[w][k] + extra for w in CANDIDATE_WINDOWS},
                    {w: learning.low[w][k] + extra - early for w in CANDIDATE_WINDOWS},
                    {w: learning.high[w][k] + extra + late for w in CANDIDATE_WINDOWS},
                    quiet,
                )
        if remaining_requests is not None:
            self._crowd_answer(ticket, float(remaining_requests))
        ticket.forget_counts()
        self._ramp_answered(
            ticket,
            remaining={"requests": remaining_requests, "tokens": remaining_tokens},
        )

    def on_failure(self, ticket: Ticket) -> None:
        """An answer that was neither a success nor a 429 (the server counted it)."""
        self._close(ticket)
        ticket.forget_counts()
        self.ramp.end()
        self._ramp_answered(ticket)

    def on_rate_limited(
        self,
        retry_after_s: float | None,
        ticket: Ticket | None = None,
        resource: str | None = None,
    ) -> None:
        """A 429: the ticket stops counting, admission pauses, the window is learned.

        The time the server names is when capacity frees: under the true window, when
        the oldest admission still inside it leaves.
        """
        now = self._clock()
        if resource == "requests" and self.crowd is not None:
            self.crowd.refused(now)
        elif resource == "requests" and self.crowding and ticket is not None:
            in_ramp = self.ramp.holds(ticket)  # others filled the window we met
            self.crowd = met_full(self.resources["requests"], in_ramp, now)
        if ticket is not None:
            self._close(ticket)
            ticket.forget_counts()
            if not ticket.rejected:
                ticket.rejected = True
                for w in self._windows.values():
                    w.reject(ticket)
            self.ramp.end()
            self._ramp_answered(ticket, resource)
        self.ramp.release()  # the cooldown governs now
        wait = retry_after_s if retry_after_s is not None else DEFAULT_COOLDOWN_S
        if now + wait > self._cooldown_until:
            logger.debug("429: pausing admissions for %.3f s", wait)
            self._cooldown_until = now + wait
        if retry_after_s is not None and resource in self.resources:
            res = self.resources[resource]
            learn_from_retry(res, self._windows, ticket, now + retry_after_s, now)

    def _crowd_answer(self, ticket: Ticket, remaining: float) -> None:
        """A success: the crowd's pace learns from it, or it shows others are here."""
        now, res, learning = self._clock(), self.resources["requests"], ticket.learning
        if self.crowd is not None:
            self.crowd.answered(remaining, now)
        elif self.crowding and learning is not None and res.window in learning.high:
            # the most the server can have counted of ours: its neighbours in a burst
            # may have reached it first
            most = learning.high[res.window][0] + self._burst.after(learning)[0]
            ours = most, self._windows[res.window].requests
            self.crowd = found_others(res, remaining, ours, now)

    def _ramp_answered(
        self,
        ticket: Ticket,
        refused: str | None = None,
        remaining: dict[str, int | None] | None = None,
    ) -> None:
        """A ramp's admission is answered: the ramp's budget readings, once all are."""
        for name, budget in self.ramp.answered(ticket, refused, remaining):
            self.resources[name].reading(budget)
