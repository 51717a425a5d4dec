"""The limiter's ledger: admissions, candidate windows and budgets. Internal.

A :class:`Ticket` is one admission; a :class:`Window` holds the admissions still inside
one candidate window with running sums; a :class:`Resource` (requests or tokens) holds
the budget per window, given or learned from the server's answers. How they are used is
told in :mod:`polars_azurechat.transport.ratelimit`.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
import logging
import math
import statistics
from collections.abc import Iterator

logger = logging.getLogger(__name__)

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


class Window:
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
        """Count a new admission."""
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
        """The oldest admission the server took that is still inside."""
        return next((t for t in self.tickets if not t.rejected), None)


class Resource:
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
        """How far an estimate may be from ``budget`` and still agree with it."""
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

    def reading(self, budget: float) -> None:
        """A budget read exactly, the same in every candidate window (the ramp's)."""
        logger.debug("%s: the ramp's answers read a budget of %g", self.name, budget)
        for w in CANDIDATE_WINDOWS:
            self.estimates[w].append(budget)
            self._learned.pop(w, None)
        self.agreed.append(budget)

    def settle(self, window: float) -> None:
        """A 429 named the window: take it, stop probing."""
        if window != self.window:
            logger.debug("%s: a 429 says the window is %g s", self.name, window)
        self.window = window
        self.known = True

    def per_minute_now(self) -> float | None:
        """The budget in force, per minute (``None``: not limited)."""
        b = self.budget()
        return None if b is None else b * 60.0 / self.window


class Charges:
    """What the server charged for requests we estimated at so many tokens.

    Rows of one shape have one estimate; the ratio of the server's count to ours
    differs between shapes, so a request's charge is predicted from the nearest
    estimate answered (exactly, for an estimate already answered).
    """

    #: Estimates remembered at most (then forgotten at once, and learned again).
    KEEP = 4096

    def __init__(self) -> None:
        self._charged: dict[int, int] = {}
        self._estimates: list[int] = []  # its keys, sorted

    def learn(self, estimate: int, charged: int) -> None:
        """The server charged ``charged`` for a request we estimated at ``estimate``."""
        if len(self._charged) >= self.KEEP:
            self._charged.clear()
            self._estimates.clear()
        if estimate not in self._charged:
            bisect.insort(self._estimates, estimate)
        self._charged[estimate] = charged

    def predict(self, tokens: int) -> tuple[int, int]:
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


class Burst:
    """The admissions sent within :data:`REORDER_S` of the latest one.

    The server may have taken those in either order: an answer from amid a burst
    counts them as a range (``Learning.before`` and ``after``), not exactly.
    """

    def __init__(self) -> None:
        self._seq = 0  # admissions so far, and their tokens
        self._cum = 0
        #: admissions within REORDER_S, with their seq and cum
        self._recent: collections.deque[tuple[Ticket, int, int]] = collections.deque()

    def add(self, ticket: Ticket, learning: Learning) -> None:
        """Count the admissions sent within :data:`REORDER_S` before ``ticket``.

        Those after it are counted when it leaves the recent ones (or is answered).
        """
        recent = self._recent
        while recent and recent[0][0].sent_at < ticket.sent_at - REORDER_S:
            old = recent.popleft()[0]
            if old.learning is not None:  # its answer is still to be learned from
                old.learning.after = self.after(old.learning)
        learning.seq, learning.cum = self._seq, self._cum
        if recent:
            _, seq, cum = recent[0]
            learning.before = (self._seq - seq, self._cum - cum)
        self._seq += 1
        self._cum += ticket.tokens
        learning.end = self._cum
        recent.append((ticket, learning.seq, learning.cum))

    def after(self, learning: Learning) -> tuple[int, int]:
        """Admissions after a ticket within :data:`REORDER_S` (so far, if recent)."""
        if learning.after is not None:
            return learning.after
        return (self._seq - learning.seq - 1, self._cum - learning.end)


def learn_from_retry(
    res: Resource,
    windows: dict[float, Window],
    ticket: Ticket | None,
    frees_at: float,
    now: float,
) -> None:
    """A 429 for ``res`` said capacity frees at ``frees_at``: learn from it.

    Under a known window, a wait shorter than a tenth of it means our ledger let the
    request go too early (the server took the admissions it waits for in later than
    the margin allows): that window's margin grows. Otherwise it names the window: the
    candidate whose oldest admission leaves it then is settled.
    """
    window = windows.get(res.window)
    if (
        res.known
        and ticket is not None
        and window is not None
        and frees_at - now < MAX_MARGIN_SHARE * res.window
    ):
        short = frees_at - ticket.sent_at
        window.fell_short(ticket, short, now)
        logger.debug(
            "%s: a 429 %.3f s early; margin of the %g-s window now %.3f s",
            res.name,
            short,
            window.length,
            window.margin,
        )
        return
    best, best_err = None, float("inf")
    for length in CANDIDATE_WINDOWS:
        oldest = windows[length].oldest()
        if oldest is None:
            continue
        err = abs(oldest.sent_at + length - frees_at)
        if err < best_err:
            best, best_err = length, err
    if best is not None and best_err <= max(0.25, 0.1 * best):
        res.settle(best)
