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
  recent estimates (the 5th percentile): stable, not overwritten per response. A 429's Retry-After settles
  the window at once: it names when the oldest admission leaves the true window.
  ``x-ratelimit-limit-*`` caps the budget when sent.
- **Slow start**: a job's first request goes alone (a wrong key or deployment costs one
  request); its answer tells what remains before any burst.
- While the window is not known and the model says wait longer than
  :data:`PROBE_AFTER_S`, one request at a time may go early as a **probe**: its answer
  (200 with what remains, or a 429 with the true wait) teaches the window.
- A 429 pauses every admission until the time it names.

Clock and sleep are injected, so tests never wait.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import statistics
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: Window lengths seen in the wild, in seconds.
CANDIDATE_WINDOWS = (1.0, 10.0, 60.0)
#: The window assumed until one is learned: the longest, because a budget assumed
#: over too long a window only slows a job down, while one assumed over too short a
#: window floods the server when the window turns. A probe (or a 429) corrects it.
DEFAULT_WINDOW_S = 60.0
#: Extra time before an admission leaves a window: a share of the window, plus skew.
MARGIN_SHARE = 0.02
MARGIN_S = 0.02
#: The share of a token budget used: a request's tokens are an estimate of the
#: server's own estimate, and a burst at the budget's edge would meet a few 429s.
TOKEN_SHARE = 0.97
#: Cooldown after a 429 that names no delay.
DEFAULT_COOLDOWN_S = 1.0
#: A blocked limiter that does not know the window yet sends one probe after this long.
PROBE_AFTER_S = 1.0
#: Estimates kept per candidate window; a window needs this many to be judged.
KEEP_ESTIMATES = 48
MIN_ESTIMATES = 6

#: Endpoints (hashes of host, deployment, api-version and credential) that answered a
#: request in this process: a new job on one of them skips slow start.
_VERIFIED: set[str] = set()


@dataclasses.dataclass(slots=True)
class Ticket:
    """One admission: when it went, what it cost, and whether the server took it.

    ``used`` is what the ledger held in each candidate window when it went (itself
    included): requests and tokens, for the budget estimates its answer makes.
    """

    sent_at: float
    tokens: int  # as the server counts them (our estimate x the learned ratio)
    estimate: int = 0  # our own estimate
    probe: bool = False
    rejected: bool = False
    answered: bool = False
    used: dict[float, tuple[int, int]] = dataclasses.field(default_factory=dict)


class _Window:
    """Admissions still inside one candidate window, with running sums."""

    def __init__(self, length: float) -> None:
        self.length = length
        self.span = length * (1 + MARGIN_SHARE) + MARGIN_S
        self.tickets: collections.deque[Ticket] = collections.deque()
        self.requests = 0
        self.tokens = 0

    def expire(self, now: float) -> None:
        q = self.tickets
        while q and q[0].sent_at + self.span <= now:
            t = q.popleft()
            if not t.rejected:
                self.requests -= 1
                self.tokens -= t.tokens

    def add(self, ticket: Ticket) -> None:
        self.tickets.append(ticket)
        self.requests += 1
        self.tokens += ticket.tokens

    def reject(self, ticket: Ticket) -> None:
        """``ticket`` was refused: it no longer counts (if it is still inside)."""
        if self.tickets and self.tickets[0].sent_at <= ticket.sent_at:
            self.requests -= 1
            self.tokens -= ticket.tokens

    def exact(self, now: float) -> tuple[int, int]:
        """Requests and tokens inside the window proper (without the margin) at ``now``.

        This is what the server counts; the margin is for admission only.
        """
        requests, tokens = self.requests, self.tokens
        for t in self.tickets:
            if t.sent_at + self.length > now:
                break
            if not t.rejected:
                requests -= 1
                tokens -= t.tokens
        return requests, tokens

    def used(self, resource: str) -> int:
        return self.requests if resource == "requests" else self.tokens

    def wait_for(self, resource: str, budget: float, cost: int, now: float) -> float:
        """Seconds until ``cost`` more fits under ``budget`` (0: now)."""
        need = self.used(resource) + cost - budget
        if need <= 0 or not self.tickets:  # fits (or more than a window: alone)
            return 0.0
        freed = 0
        for t in self.tickets:
            if t.rejected:
                continue
            freed += 1 if resource == "requests" else t.tokens
            if freed >= need:
                return t.sent_at + self.span - now
        return self.tickets[-1].sent_at + self.span - now

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
        self._learned: float | None = None
        self._learned_for: tuple[float, int] | None = None

    def budget(self) -> float | None:
        """Budget per window now in force (given, learned, limit: the lowest)."""
        budgets = []
        if self.per_minute is not None:
            budgets.append(max(1.0, self.per_minute * self.window / 60.0))
        learned = self.learned()
        if learned is not None:
            budgets.append(learned)
        if self.name == "tokens":  # our count of a request's tokens is an estimate
            budgets = [b * TOKEN_SHARE for b in budgets]
        if self.limit is not None:
            budgets.append(self.limit)
        return min(budgets) if budgets else None

    def learned(self) -> float | None:
        """The learned budget of the current window: the 5th percentile of its estimates."""
        if self._learned_for != (self.window, len(self.estimates[self.window])):
            est = self.estimates[self.window]
            ordered = sorted(est)
            self._learned = max(1.0, ordered[len(ordered) // 20]) if est else None
            self._learned_for = (self.window, len(est))
        return self._learned

    def observe(self, remaining: float, used: dict[float, float]) -> None:
        """One answer said ``remaining``; ``used`` is the ledger up to it, per window."""
        for w in CANDIDATE_WINDOWS:
            self.estimates[w].append(remaining + used[w])
        self._learned_for = None
        if not self.known:
            self._choose()

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
        Send the first request alone, and the others once it is answered.
    endpoint_key
        A hash naming the endpoint and credential: once one job of the process had an
        answer from it, later jobs skip slow start.
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
        endpoint_key: str | None = None,
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
        # slow start until the first answer, unless this endpoint already answered
        self._endpoint_key = endpoint_key
        self._started = not slow_start or endpoint_key in _VERIFIED
        self._first_sent = False
        self._probe: Ticket | None = None
        self._blocked_since: float | None = None
        self._first_answer: asyncio.Event | None = None
        #: the server's token count over ours (it estimates its own way)
        self._ratios: collections.deque[float] = collections.deque(maxlen=64)
        self.token_ratio = 1.0
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
        if not self._started:
            if not self._first_sent:  # slow start: the first request goes alone
                self._first_sent = True
                return self._admit(tokens)
            await self._answered().wait()
        if self._lock is None:
            self._lock = asyncio.Lock()
        if not self._lock.locked() and self.delay(tokens) <= 0:
            return self._admit(tokens)
        async with self._lock:
            while True:
                wait = self.delay(tokens)
                if wait <= 0:
                    self._blocked_since = None
                    return self._admit(tokens)
                if self._may_probe(wait):
                    self._probe = self._admit(tokens, probe=True)
                    return self._probe
                await self._sleep(min(wait, PROBE_AFTER_S) if self._probing() else wait)

    def try_acquire(self, tokens: int = 0) -> Ticket | None:
        """Admit a request now if :meth:`acquire` would without waiting, else ``None``.

        For a pool of deployments, which tries each in turn: the first request of slow
        start and a probe are admitted as :meth:`acquire` admits them; a request is not
        admitted ahead of callers already waiting in :meth:`acquire`.
        """
        if not self._started:
            if self._first_sent:
                return None
            self._first_sent = True
            return self._admit(tokens)
        if self._lock is not None and self._lock.locked():
            return None
        wait = self.delay(tokens)
        if wait <= 0:
            self._blocked_since = None
            return self._admit(tokens)
        if self._may_probe(wait):
            self._probe = self._admit(tokens, probe=True)
            return self._probe
        return None

    @property
    def starting(self) -> bool:
        """Slow start's first request is out and not yet answered (the others wait)."""
        return not self._started and self._first_sent

    def wait_hint(self, tokens: int = 0) -> float:
        """Seconds after which :meth:`try_acquire` may succeed (an upper bound to poll at)."""
        if not self._started:
            return PROBE_AFTER_S  # the first answer wakes the pool sooner
        wait = self.delay(tokens)
        return min(wait, PROBE_AFTER_S) if self._probing() else wait

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

    def _answered(self) -> asyncio.Event:
        if self._first_answer is None:
            self._first_answer = asyncio.Event()
            if self._started:
                self._first_answer.set()
        return self._first_answer

    def _start(self, *, verified: bool) -> None:
        """The first answer is back: admission opens.

        ``verified``: the server took the credential (a 200 or a 429).
        """
        self._started = True
        if verified and self._endpoint_key is not None:
            _VERIFIED.add(self._endpoint_key)
        if self._first_answer is not None:
            self._first_answer.set()

    def _probing(self) -> bool:
        return any(
            not r.known and r.budget() is not None for r in self.resources.values()
        )

    def _may_probe(self, wait: float) -> bool:
        now = self._clock()
        if self._blocked_since is None:
            self._blocked_since = now
        return (
            self._probing()
            and now >= self._cooldown_until
            and (self._probe is None or self._probe.answered)
            and now - self._blocked_since >= PROBE_AFTER_S
            and wait > PROBE_AFTER_S
        )

    def _scaled(self, tokens: int) -> int:
        return round(tokens * self.token_ratio)

    def _admit(self, tokens: int, *, probe: bool = False) -> Ticket:
        ticket = Ticket(self._clock(), self._scaled(tokens), tokens, probe=probe)
        if not self._tracking:  # nothing to learn and nothing to enforce: no ledger
            return ticket
        for w in self._windows.values():
            w.add(ticket)
            ticket.used[w.length] = w.exact(ticket.sent_at)
        if probe:
            self._blocked_since = None
        return ticket

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
        ticket.answered = True
        self._start(verified=True)
        # a server that sends no rate-limit headers, with no quota given, leaves
        # nothing to learn or enforce: the ledger is skipped until headers appear
        self._tracking = (
            remaining_requests is not None
            or remaining_tokens is not None
            or any(r.budget() is not None for r in self.resources.values())
        )
        if charged_tokens and ticket.estimate:
            self._ratios.append(charged_tokens / ticket.estimate)
            self.token_ratio = statistics.median(self._ratios)
        for name, remaining, limit in (
            ("requests", remaining_requests, limit_requests),
            ("tokens", remaining_tokens, limit_tokens),
        ):
            res = self.resources[name]
            if limit is not None:
                res.limit = float(limit)
            if remaining is not None:
                k = 0 if name == "requests" else 1
                used = {w: float(ticket.used[w][k]) for w in CANDIDATE_WINDOWS}
                res.observe(float(remaining), used)

    def on_failure(self, ticket: Ticket) -> None:
        """An answer that was neither a success nor a 429 (the server counted it)."""
        ticket.answered = True
        self._start(verified=False)

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
            ticket.answered = True
            if not ticket.rejected:
                ticket.rejected = True
                for w in self._windows.values():
                    w.reject(ticket)
            self._start(verified=True)
        wait = retry_after_s if retry_after_s is not None else DEFAULT_COOLDOWN_S
        if now + wait > self._cooldown_until:
            logger.debug("429: pausing admissions for %.3f s", wait)
            self._cooldown_until = now + wait
        if retry_after_s is not None and resource in self.resources:
            self._learn_window(self.resources[resource], now + retry_after_s)

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
