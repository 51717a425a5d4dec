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
- **Slow start**, as a ramp in time: the first request goes alone for
  :data:`RAMP_QUIET_S` (longer than :data:`REORDER_S`, so its answer tells exactly
  what the server had counted: the budget), then :data:`RAMP_FIRST` more may go, and
  until the first answer their number doubles every :data:`RAMP_S` (1, 2, 4, ...): a
  job reaches a concurrency of 100 about 48 ms after its first request and pays no
  latency before it. What the server answers at once, before any model work (a 401
  for a wrong key, a 404 for a wrong deployment, a 429 when the quota is full),
  arrives while the ramp has sent few: on loopback, 1; against Azure, one round trip's
  worth (3 at a 25-ms round trip, 9 at 33 ms). A small quota that is not given sees
  the ramp's overshoot as 429s: the sends between reaching the budget and its first
  429 coming back (on loopback 1 to 7 for 10 requests per 10 s; a faster ramp made it
  13 to 21). The first answer ends the ramp: a 200
  tells what remains, a 429 pauses admission and names the window, a 401/403/404
  stops the run. A given request quota bounds the ramp by what the shortest candidate window
  allows (600 requests a minute: 10 before the first answer), as its window is not
  known yet.
- While the window is not known and a shorter candidate window would admit a request
  the assumed one holds back, one request at a time goes early as a **probe**: its
  answer (200 with what remains, or a 429 with the true wait) teaches the window. (If
  no shorter candidate would, a probe goes after :data:`PROBE_AFTER_S` blocked.)
- A 429 pauses every admission until the time it names.

Clock and sleep are injected, so tests never wait.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import itertools
import logging
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: Window lengths seen in the wild, in seconds.
CANDIDATE_WINDOWS = (1.0, 10.0, 60.0)
#: The window assumed until one is learned: the longest, because a budget assumed
#: over too long a window only slows a job down, while one assumed over too short a
#: window floods the server when the window turns. A probe (or a 429) corrects it.
DEFAULT_WINDOW_S = 60.0
#: Extra time before an admission leaves a window: a share of the window, and at least
#: enough for the skew between our clock at sending and the server's at arrival.
MARGIN_SHARE = 0.02
MARGIN_S = 0.02
#: Requests sent this close together may reach the server in either order: an answer
#: sent amid a burst does not say which of its neighbours the server had counted.
REORDER_S = MARGIN_S
#: The margin grows (after 429s naming short waits) up to this share of the window.
MAX_MARGIN_SHARE = 0.1
#: A request's charge is predicted from what the server charged for requests we
#: estimated alike (exactly, for an estimate already answered); a prediction from
#: another estimate counts 1 / TOKEN_SHARE of it, as it may be a little low.
TOKEN_SHARE = 0.97
#: Cooldown after a 429 that names no delay.
DEFAULT_COOLDOWN_S = 1.0
#: A blocked limiter that does not know the window yet, and whose shorter candidate
#: windows are full too, sends one probe after this long.
PROBE_AFTER_S = 1.0
#: Slow start as a ramp: the first request goes alone for RAMP_QUIET_S (its answer
#: then reads the budget exactly: no neighbour the server may have counted first);
#: then RAMP_FIRST more may go, and until the first answer their number doubles every
#: RAMP_S.
RAMP_QUIET_S = REORDER_S + 0.001
RAMP_FIRST = 1
RAMP_S = 0.004
#: While a probe is out, waiters look again this often (its answer may open the way).
PROBE_POLL_S = 0.05
#: An estimate this close to the reference budget agrees with it: requests are counted
#: exactly (only reordering in flight blurs them), tokens are partly estimated. A quiet
#: answer (nothing else in flight when it went or while it was out) is exact.
TOLERANCE = {"requests": (1.5, 0.10), "tokens": (2.0, 0.10)}
QUIET_TOLERANCE = {"requests": (0.5, 0.0), "tokens": (2.0, 0.02)}
#: Estimates kept per candidate window; a window needs this many to be judged.
KEEP_ESTIMATES = 48
MIN_ESTIMATES = 6


@dataclasses.dataclass(slots=True)
class Learning:
    """What an admission's answer is learned with; dropped once it has been.

    ``used`` is what the ledger held in each candidate window when it went (itself
    included): requests and tokens, for the budget estimates its answer makes; ``low``
    and ``high`` the same without the admissions within the margin of the window's
    edge, and with them (the server, counting on arrival, saw something in between).
    """

    quiet: bool = False  # nothing else was in flight when it went
    seq: int = 0  # admissions before it, and their tokens before and through it
    cum: int = 0
    end: int = 0
    #: admissions within REORDER_S before and after it (requests, tokens)
    before: tuple[int, int] = (0, 0)
    after: tuple[int, int] | None = None
    used: dict[float, tuple[int, int]] = dataclasses.field(default_factory=dict)
    low: dict[float, tuple[int, int]] = dataclasses.field(default_factory=dict)
    high: dict[float, tuple[int, int]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class Ticket:
    """One admission: when it went, what it cost, and whether the server took it.

    A window of 60 s holds every admission of the last minute (a job sending
    thousands a second holds hundreds of thousands): what the answer is learned with
    is apart (:class:`Learning`) and dropped once it has been.
    """

    sent_at: float
    tokens: int  # as the server counts them (predicted; its charge once answered)
    reserve: int = 0  # more held back while the prediction is uncertain
    estimate: int = 0  # our own estimate
    probe: bool = False
    rejected: bool = False
    answered: bool = False
    #: the ledger counted it (it holds nothing to learn from or enforce otherwise)
    tracked: bool = False
    learning: Learning | None = None

    def forget_counts(self) -> None:
        """Its answer teaches nothing more (or nothing at all): drop what it would."""
        self.learning = None


class _Window:
    """Admissions still inside one candidate window, with running sums.

    The admissions are kept in three queues by age, each with its own sums, so that
    what the window holds at its edge costs O(1) amortised (each admission moves
    forward at most three times), however many the window holds:

    - ``core``: well inside (younger than the length less the margin);
    - ``inner``: within the margin before the window's edge;
    - ``outer``: past the edge but within the margin after it (the server, counting
      on arrival, may still hold them).
    """

    def __init__(self, length: float) -> None:
        self.length = length
        self.margin = 0.0
        self.span = length
        self.widen(max(MARGIN_S, MARGIN_SHARE * length))
        self._base, self._widened_at = self.margin, -math.inf
        self.core: collections.deque[Ticket] = collections.deque()
        self.inner: collections.deque[Ticket] = collections.deque()
        self.outer: collections.deque[Ticket] = collections.deque()
        self.requests = 0
        self.tokens = 0
        self.reserve = 0  # tokens held back for predictions not yet answered
        #: requests and tokens of the inner and outer queues (rejected ones left out)
        self._edge = [[0, 0], [0, 0]]
        self._now = -math.inf

    @property
    def tickets(self) -> Iterator[Ticket]:
        """Every admission still held, oldest first."""
        return itertools.chain(self.outer, self.inner, self.core)

    def _first(self) -> Ticket | None:
        for q in (self.outer, self.inner, self.core):
            if q:
                return q[0]
        return None

    def _last(self) -> Ticket | None:
        for q in (self.core, self.inner, self.outer):
            if q:
                return q[-1]
        return None

    def expire(self, now: float) -> None:
        """Move admissions on to the queue their age puts them in; drop the old."""
        self._now = now
        core, inner, outer = self.core, self.inner, self.outer
        inner_sums, outer_sums = self._edge
        edge = now - self.length
        while core and core[0].sent_at - self.margin <= edge:
            t = core.popleft()
            inner.append(t)
            if not t.rejected:
                inner_sums[0] += 1
                inner_sums[1] += t.tokens
        while inner and inner[0].sent_at <= edge:
            t = inner.popleft()
            outer.append(t)
            if not t.rejected:
                inner_sums[0] -= 1
                inner_sums[1] -= t.tokens
                outer_sums[0] += 1
                outer_sums[1] += t.tokens
        while outer and outer[0].sent_at + self.span <= now:
            t = outer.popleft()
            if not t.rejected:
                outer_sums[0] -= 1
                outer_sums[1] -= t.tokens
                self.requests -= 1
                self.tokens -= t.tokens
                self.reserve -= t.reserve

    def add(self, ticket: Ticket) -> None:
        self.core.append(ticket)
        self.requests += 1
        self.tokens += ticket.tokens
        self.reserve += ticket.reserve

    def widen(self, margin: float) -> None:
        """Keep admissions ``margin`` s past the window (at most a tenth of it more)."""
        self.margin = min(max(self.margin, margin), MAX_MARGIN_SHARE * self.length)
        self.span = self.length + self.margin

    def fell_short(self, ticket: Ticket, short: float, now: float) -> None:
        """``ticket`` went ``short`` s too early: widen the margin it went under by that.

        The 429s of one burst widen it once (by the most any of them fell short).
        """
        if ticket.sent_at > self._widened_at:  # it went under the margin now in force
            self._base, self._widened_at = self.margin, now
        self.widen(self._base + short)

    def _sums_of(self, ticket: Ticket) -> list[int] | None:
        """The edge sums of the queue holding ``ticket`` (``None``: core, or gone)."""
        first = self._first()
        if first is None or ticket.sent_at < first.sent_at:
            return None  # left the window already
        if self.core and ticket.sent_at >= self.core[0].sent_at:
            return None
        if self.inner and ticket.sent_at >= self.inner[0].sent_at:
            return self._edge[0]
        return self._edge[1]

    def _holds(self, ticket: Ticket) -> bool:
        first = self._first()
        return first is not None and first.sent_at <= ticket.sent_at

    def reject(self, ticket: Ticket) -> None:
        """``ticket`` was refused: it no longer counts (if it is still inside)."""
        if self._holds(ticket):
            self.requests -= 1
            self.tokens -= ticket.tokens
            self.reserve -= ticket.reserve
            sums = self._sums_of(ticket)
            if sums is not None:
                sums[0] -= 1
                sums[1] -= ticket.tokens

    def recharge(self, ticket: Ticket, tokens: int) -> None:
        """``ticket`` costs ``tokens`` after all (what the server charged)."""
        if not ticket.rejected and self._holds(ticket):
            self.tokens += tokens - ticket.tokens
            self.reserve -= ticket.reserve
            sums = self._sums_of(ticket)
            if sums is not None:
                sums[1] += tokens - ticket.tokens

    def counts(self, now: float) -> tuple[tuple[int, int], ...]:
        """Requests and tokens inside the window at ``now``: (low, exact, high).

        Exact: inside the window proper (what the server counts, were it to count on
        our clock); low: without the admissions within the margin before the window's
        edge; high: with those within the margin after it (the margin is for skew).
        """
        if now != self._now:
            self.expire(now)
        (in_r, in_t), (out_r, out_t) = self._edge
        high = self.requests, self.tokens
        exact = high[0] - out_r, high[1] - out_t
        low = exact[0] - in_r, exact[1] - in_t
        return low, exact, high

    def used(self, resource: str) -> int:
        """What admission counts: requests, or tokens and their reserve."""
        return self.requests if resource == "requests" else self.tokens + self.reserve

    def wait_for(self, resource: str, budget: float, cost: int, now: float) -> float:
        """Seconds until ``cost`` more fits under ``budget`` (0: now)."""
        need = self.used(resource) + cost - budget
        last = self._last()
        if need <= 0 or last is None:  # fits (or more than a window: alone)
            return 0.0
        freed = 0
        for t in self.tickets:
            if t.rejected:
                continue
            freed += 1 if resource == "requests" else t.tokens + t.reserve
            if freed >= need:
                return t.sent_at + self.span - now
        return last.sent_at + self.span - now

    def oldest(self) -> Ticket | None:
        return next((t for t in self.tickets if not t.rejected), None)


class _Resource:
    """What the limiter knows of one resource (requests or tokens)."""

    def __init__(self, name: str, per_minute: float | None, window: float | None):
        self.name = name
        self.per_minute = per_minute
        self.window = window if window is not None else DEFAULT_WINDOW_S
        self.known = window is not None  # given or settled: no more probing
        self.limit: float | None = None  # x-ratelimit-limit-*
        self.estimates: dict[float, collections.deque[float]] = {
            w: collections.deque(maxlen=KEEP_ESTIMATES) for w in CANDIDATE_WINDOWS
        }
        #: estimates made while every candidate window agreed (nothing had left one)
        self.agreed: collections.deque[float] = collections.deque(maxlen=KEEP_ESTIMATES)
        #: learned budgets per window (dropped when the window gets an estimate)
        self._learned: dict[float, float | None] = {}

    def budget(self, window: float | None = None) -> float | None:
        """Budget per window in force (given, learned, limit: the lowest).

        ``window``: the budget were the window this candidate (default: the current).
        """
        window = self.window if window is None else window
        budgets = []
        if self.per_minute is not None:
            budgets.append(max(1.0, self.per_minute * window / 60.0))
        learned = self.learned(window)
        if learned is not None:
            budgets.append(learned)
        if self.limit is not None:
            budgets.append(self.limit)
        return min(budgets) if budgets else None

    def learned(self, window: float | None = None) -> float | None:
        """The learned budget of a window: the 5th percentile of its estimates."""
        window = self.window if window is None else window
        est = self.estimates.get(window)
        if est is None:
            return None
        if window not in self._learned:
            ordered = sorted(est)
            self._learned[window] = (
                max(1.0, ordered[len(ordered) // 20]) if est else None
            )
        return self._learned[window]

    def reference(self) -> float | None:
        """The budget as read while all candidate windows agreed (their median)."""
        return statistics.median(self.agreed) if self.agreed else None

    def tolerance(self, budget: float, quiet: bool) -> float:
        floor, share = (QUIET_TOLERANCE if quiet else TOLERANCE)[self.name]
        return max(floor, share * budget)

    def observe(
        self,
        remaining: float,
        used: dict[float, float],
        low: dict[float, float],
        high: dict[float, float],
        quiet: bool,
    ) -> None:
        """One answer said ``remaining``; the ledger up to it held ``used`` per window.

        ``low`` and ``high`` bound what the server may have counted (admissions near a
        window's edge); an estimate is kept only where they agree within tolerance.
        """
        est = {w: remaining + used[w] for w in CANDIDATE_WINDOWS}
        tol = self.tolerance(self.reference() or max(est.values()), quiet)
        clear = {w: high[w] - low[w] <= tol for w in CANDIDATE_WINDOWS}
        for w in CANDIDATE_WINDOWS:
            if clear[w]:
                self.estimates[w].append(est[w])
                self._learned.pop(w, None)
        if all(clear.values()) and max(est.values()) - min(est.values()) <= tol:
            self.agreed.append(est[self.window])
        if self.known:
            return
        ref = self.reference()
        if ref is not None:
            lows = {w: remaining + low[w] for w in CANDIDATE_WINDOWS}
            highs = {w: remaining + high[w] for w in CANDIDATE_WINDOWS}
            self._refute(ref, lows, highs, tol)
        if not self.known:
            self._choose()

    def _refute(
        self, ref: float, low: dict[float, float], high: dict[float, float], tol: float
    ) -> None:
        """What one answer rules out (``low``/``high``: its estimates' bounds).

        Only a window too long is ruled out so: the server cannot take more than a
        window allows, whereas it may count more than a window holds when it is slow
        to take requests in (a burst waits in its queue, and leaves the window late).
        """
        if low[self.window] > ref + tol:
            # the server took more than the window allows: it is shorter
            fits = [
                v
                for v in CANDIDATE_WINDOWS
                if v < self.window and low[v] - tol <= ref <= high[v] + tol
            ]
            if fits:
                logger.debug(
                    "%s: an answer rules out a %g-s window; taking %g s",
                    self.name,
                    self.window,
                    max(fits),
                )
                self.window = max(fits)
                if self.window == CANDIDATE_WINDOWS[0]:  # no shorter one to rule out
                    self.known = True

    def _choose(self) -> None:
        spreads = {}
        for w, est in self.estimates.items():
            if len(est) >= MIN_ESTIMATES:
                # the interquartile range: one stray estimate does not hide agreement
                q1, mid, q3 = statistics.quantiles(est, n=4, method="inclusive")
                spreads[w] = (q3 - q1) / max(1.0, mid)
        if len(spreads) < len(CANDIDATE_WINDOWS):
            return
        # the window whose estimates agree; on a tie the longest (the safest)
        best = min(spreads, key=lambda w: (round(spreads[w], 2), -w))
        # clear: the current window's estimates drift, the other's far less (token
        # estimates are noisy: the server charges its own estimate, not ours)
        clear = spreads[self.window] >= 0.15 and spreads[best] <= max(
            0.05, spreads[self.window] / 2
        )
        if best < self.window and not clear:
            return  # a shorter window floods the server if wrong: only when clear
        if best != self.window:
            logger.debug("%s: the window looks like %g s", self.name, best)
            self.window = best
        others = [s for w, s in spreads.items() if w != best]
        if spreads[best] <= 0.1 and min(others) >= 0.3:
            self.known = True

    def settle(self, window: float) -> None:
        """A 429 named the window: take it, stop probing."""
        if window != self.window:
            logger.debug("%s: a 429 says the window is %g s", self.name, window)
        self.window = window
        self.known = True

    def per_minute_now(self) -> float | None:
        b = self.budget()
        return None if b is None else b * 60.0 / self.window


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
            "requests": _Resource("requests", requests_per_minute, window_s),
            "tokens": _Resource("tokens", tokens_per_minute, window_s),
        }
        lengths = sorted({*CANDIDATE_WINDOWS, *([window_s] if window_s else [])})
        self._windows = {w: _Window(w) for w in lengths}
        self._clock = clock
        self._sleep = sleep
        self._cooldown_until = 0.0
        self._lock: asyncio.Lock | None = None
        # slow start (the ramp) until the first answer
        self._started = not slow_start
        self._first_sent = False
        self._ramp_from = 0.0  # when the first request went
        self._ramped = 0  # admissions before the first answer
        self._probe: Ticket | None = None
        self._blocked_since: float | None = None
        self._first_answer: asyncio.Event | None = None
        #: the server's token count over ours (it estimates its own way)
        #: what the server charged for a request we estimated at so many tokens (rows
        #: of one shape have one estimate; the ratio differs between shapes)
        self._charged: dict[int, int] = {}
        self._estimates: list[int] = []  # its keys, sorted
        self._open = 0  # admitted, not yet answered
        self._seq = 0  # admissions so far, and their tokens
        self._cum = 0
        #: admissions within REORDER_S, with their seq and cum
        self._recent: collections.deque[tuple[Ticket, int, int]] = collections.deque()
        self._last: Ticket | None = None
        self._tracking = True  # keep the ledger (until a headerless answer says no)

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
            if budget is not None:
                window = self._windows[res.window]
                wait = max(wait, window.wait_for(name, budget, cost, now))
        return max(0.0, wait)

    async def acquire(self, tokens: int = 0) -> Ticket:
        """Wait until the request may go, then record it (waiters go in order)."""
        if not self._started and not self._first_sent:
            return self._admit_first(tokens)
        if self._lock is None:
            self._lock = asyncio.Lock()
        if not self._lock.locked() and self._ramp_in() <= 0 and self.delay(tokens) <= 0:
            return self._admit(tokens)
        async with self._lock:
            while True:
                ramp = self._ramp_in()
                if ramp > 0:  # the next step of the ramp, or the first answer
                    await self._sleep_or_answer(ramp)
                    continue
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
        if not self._started and not self._first_sent:
            return self._admit_first(tokens)
        if self._ramp_in() > 0 or (self._lock is not None and self._lock.locked()):
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
    def starting(self) -> bool:
        """The first request is out and not yet answered (admission ramps up)."""
        return not self._started and self._first_sent

    def wait_hint(self, tokens: int = 0) -> float:
        """Seconds after which :meth:`try_acquire` may succeed (an upper bound to poll at)."""
        ramp = self._ramp_in()
        if ramp > 0:
            return ramp  # the first answer wakes the pool sooner
        wait = self.delay(tokens)
        return self._next_look(wait, tokens) if wait > 0 else 0.0

    def headroom(self, tokens: int = 0) -> float:
        """Share of the tightest budget still free now, after ``tokens`` (1.0: unknown)."""
        now = self._clock()
        free = 1.0
        for name, cost in (("requests", 1), ("tokens", self._scaled(tokens))):
            res = self.resources[name]
            budget = res.budget()
            if budget is None or budget <= 0:
                continue
            window = self._windows[res.window]
            window.expire(now)
            free = min(free, 1.0 - (window.used(name) + cost) / budget)
        return free

    def _admit_first(self, tokens: int) -> Ticket:
        """Slow start: the first request goes alone, and the ramp starts."""
        self._first_sent = True
        self._ramp_from = self._clock()
        return self._admit(tokens)

    def _ramp_in(self) -> float:
        """Seconds until the ramp admits one more (0: now, or the ramp is over).

        Before the first answer, ``1 + RAMP_FIRST * 2 ** ((t - RAMP_QUIET_S) /
        RAMP_S)`` admissions may have gone ``t`` s after the first (``t >=
        RAMP_QUIET_S``).
        """
        if self._started:
            return 0.0
        if self._ramp_full():
            return PROBE_AFTER_S  # the first answer wakes the waiters sooner
        n = self._ramped
        due = self._ramp_from + (
            0.0
            if n < 1
            else RAMP_QUIET_S + RAMP_S * math.log2(max(1.0, n / RAMP_FIRST))
        )
        return max(0.0, due - self._clock())

    def _ramp_full(self) -> bool:
        """A given request quota's share of the shortest candidate window went already.

        Before the first answer the window a given quota is enforced over is not
        known: the ramp stays within what the shortest candidate allows (600 requests
        a minute: 10 before the first answer), as the server may count per second. (A
        token quota is left to the ramp: bounding it so held a token-bound job back
        by a whole 10-s window in the benchmark's S4.)
        """
        res = self.resources["requests"]
        return (
            res.per_minute is not None
            and not res.known
            and self._ramped >= max(1.0, res.per_minute * CANDIDATE_WINDOWS[0] / 60)
        )

    async def _sleep_or_answer(self, seconds: float) -> None:
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
        if self._first_answer is None:
            self._first_answer = asyncio.Event()
            if self._started:
                self._first_answer.set()
        return self._first_answer

    def _start(self) -> None:
        """The first answer is back: the ramp is over."""
        self._started = True
        if self._first_answer is not None:
            self._first_answer.set()

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
            if budget is None:
                continue
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
        return wait if due is None else max(0.0, min(wait, due))

    def _predict(self, tokens: int) -> tuple[int, int]:
        """The server's charge for a request we estimate at ``tokens``; a reserve.

        The reserve is held back besides while the charge is a guess.
        """
        charged = self._charged.get(tokens)
        if charged is not None:
            return charged, 0
        ratio = 1.0
        keys = self._estimates
        if keys:  # the ratio of the nearest estimate answered
            i = bisect.bisect_left(keys, tokens)
            near = min(keys[max(0, i - 1) : i + 1], key=lambda k: abs(k - tokens))
            ratio = self._charged[near] / near
        guess = round(tokens * ratio)
        return guess, math.ceil(guess / TOKEN_SHARE) - guess

    def _scaled(self, tokens: int) -> int:
        """The tokens an admission of a request we estimate at ``tokens`` counts."""
        charge, reserve = self._predict(tokens)
        return charge + reserve

    def _admit(self, tokens: int, *, probe: bool = False) -> Ticket:
        charge, reserve = self._predict(tokens)
        if not self._started:
            self._ramped += 1
        ticket = Ticket(
            self._clock(), charge, reserve=reserve, estimate=tokens, probe=probe
        )
        if not self._tracking:  # nothing to learn and nothing to enforce: no ledger
            return ticket
        learning = ticket.learning = Learning(quiet=self._open == 0)
        self._open += 1
        self._last = ticket
        self._neighbours(ticket, learning)
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

    def _neighbours(self, ticket: Ticket, learning: Learning) -> None:
        """Count the admissions sent within :data:`REORDER_S` before ``ticket``.

        Those after it are counted when it leaves the recent ones (or is answered).
        """
        recent = self._recent
        while recent and recent[0][0].sent_at < ticket.sent_at - REORDER_S:
            old = recent.popleft()[0]
            if old.learning is not None:  # its answer is still to be learned from
                old.learning.after = self._after(old.learning)
        learning.seq, learning.cum = self._seq, self._cum
        if recent:
            _, seq, cum = recent[0]
            learning.before = (self._seq - seq, self._cum - cum)
        self._seq += 1
        self._cum += ticket.tokens
        learning.end = self._cum
        recent.append((ticket, learning.seq, learning.cum))

    def _after(self, learning: Learning) -> tuple[int, int]:
        """Admissions after a ticket within :data:`REORDER_S` (so far, if recent)."""
        if learning.after is not None:
            return learning.after
        return (self._seq - learning.seq - 1, self._cum - learning.end)

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
        self._start()
        # a server that sends no rate-limit headers, with no quota given, leaves
        # nothing to learn or enforce: the ledger is skipped until headers appear
        self._tracking = (
            remaining_requests is not None
            or remaining_tokens is not None
            or any(r.budget() is not None for r in self.resources.values())
        )
        own = 0  # what the server charged beyond what the ledger held for it
        if charged_tokens and ticket.estimate:
            if len(self._charged) >= 4096:
                self._charged.clear()
                self._estimates.clear()
            if ticket.estimate not in self._charged:
                bisect.insort(self._estimates, ticket.estimate)
            self._charged[ticket.estimate] = charged_tokens
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
                early, late = learning.before[k], self._after(learning)[k]
                res.observe(
                    float(remaining),
                    {w: learning.used[w][k] + extra for w in CANDIDATE_WINDOWS},
                    {w: learning.low[w][k] + extra - early for w in CANDIDATE_WINDOWS},
                    {w: learning.high[w][k] + extra + late for w in CANDIDATE_WINDOWS},
                    quiet,
                )
        ticket.forget_counts()

    def on_failure(self, ticket: Ticket) -> None:
        """An answer that was neither a success nor a 429 (the server counted it)."""
        self._close(ticket)
        ticket.forget_counts()
        self._start()

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
        if ticket is not None:
            self._close(ticket)
            ticket.forget_counts()
            if not ticket.rejected:
                ticket.rejected = True
                for w in self._windows.values():
                    w.reject(ticket)
            self._start()
        wait = retry_after_s if retry_after_s is not None else DEFAULT_COOLDOWN_S
        if now + wait > self._cooldown_until:
            logger.debug("429: pausing admissions for %.3f s", wait)
            self._cooldown_until = now + wait
        if retry_after_s is not None and resource in self.resources:
            res = self.resources[resource]
            window = self._windows.get(res.window)
            if (
                res.known
                and ticket is not None
                and window is not None
                and retry_after_s < MAX_MARGIN_SHARE * res.window
            ):
                # our ledger let it go that much too early: the server took the
                # admissions it waits for in later than our margin allows
                short = now + retry_after_s - ticket.sent_at
                window.fell_short(ticket, short, now)
                logger.debug(
                    "%s: a 429 %.3f s early; margin of the %g-s window now %.3f s",
                    resource,
                    short,
                    window.length,
                    window.margin,
                )
            else:
                self._learn_window(res, now + retry_after_s)

    def _learn_window(self, res: _Resource, frees_at: float) -> None:
        """Settle the window that frees capacity when the server says it will."""
        best, best_err = None, float("inf")
        for length in CANDIDATE_WINDOWS:
            oldest = self._windows[length].oldest()
            if oldest is None:
                continue
            err = abs(oldest.sent_at + length - frees_at)
            if err < best_err:
                best, best_err = length, err
        if best is not None and best_err <= max(0.25, 0.1 * best):
            res.settle(best)
