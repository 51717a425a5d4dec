"""A quota shared through Redis by every process sending to one deployment. Internal.

``limiter="redis://..."`` makes every process sending to one deployment (keyed by
endpoint host and deployment) admit its requests against one ledger in Redis: a sorted
set of admissions (time from Redis' own clock, and tokens), one 429 cooldown, and the
budgets and windows learned from Azure's headers. :class:`RedisLimiter` is the
process's :class:`~polars_azurechat.transport.ratelimit.RateLimiter` (slow start, probes,
learning) with one more gate: before a request goes, a server-side script admits it
into the shared ledger atomically if the shared windows have room, or says how long
to wait. The counts it returns (what every process had admitted in each candidate
window) are what the local learning sees, so budgets learned from
``x-ratelimit-remaining-*`` are the deployment's, not one process's share. A 429
leaves the shared ledger and pauses every process until the time it names. Processes
may join and leave at any time: the ledger holds only the last minute.

The client is redis-py's synchronous one, called on the engine's event loop: one script
call per request, a sub-millisecond round trip on a nearby server.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from polars_azurechat.errors import LimiterError
from polars_azurechat.store.redis import PREFIX, connect, scrub, shown_url
from polars_azurechat.transport.ratelimit import (
    DEFAULT_COOLDOWN_S,
    PROBE_AFTER_S,
    RateLimiter,
)
from polars_azurechat.transport.windows import (
    CANDIDATE_WINDOWS,
    MARGIN_S,
    MARGIN_SHARE,
    Resource,
    Ticket,
)

logger = logging.getLogger(__name__)


ADMIT = """
local now = tonumber(ARGV[9])
local ledger, rejected, cool, counter, learned, base = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
if tonumber(redis.call('GET', cool) or '0') > now then
  return {0, tostring(tonumber(redis.call('GET', cool)) - now)}
end
local function cum(member) return tonumber(string.match(member, ':(%d+)$')) end
local function tokens(member) return tonumber(string.match(member, '^%d+:(%d+)')) end
local old = now - 62
local last_old = redis.call('ZREVRANGEBYSCORE', ledger, old, '-inf', 'LIMIT', 0, 1)
if #last_old > 0 then
  redis.call('SET', base, cum(last_old[1]), 'EX', 600)
  redis.call('ZREMRANGEBYSCORE', ledger, '-inf', old)
  redis.call('ZREMRANGEBYSCORE', rejected, '-inf', old)
end
local total = tonumber(redis.call('GET', counter) or '0')
local function cum_before(t)
  local m = redis.call('ZREVRANGEBYSCORE', ledger, t, '-inf', 'LIMIT', 0, 1)
  if #m > 0 then return cum(m[1]) end
  return tonumber(redis.call('GET', base) or '0')
end
local function used(t)  -- requests and tokens admitted after t, less the rejected
  local n = redis.call('ZCOUNT', ledger, '(' .. t, '+inf')
  local toks = total - cum_before(t)
  local rej = redis.call('ZRANGEBYSCORE', rejected, '(' .. t, '+inf')
  for _, m in ipairs(rej) do toks = toks - tokens(m) end
  return n - #rej, toks
end
local cost = tonumber(ARGV[1])
local rb, rw = tonumber(ARGV[2]), tonumber(ARGV[3])
local tb, tw = tonumber(ARGV[4]), tonumber(ARGV[5])
local share, margin = tonumber(ARGV[6]), tonumber(ARGV[7])
if rb == -1 then
  local v = redis.call('HMGET', learned, 'rb', 'rw')
  if v[1] then rb, rw = tonumber(v[1]), tonumber(v[2]) end
end
if tb == -1 then
  local v = redis.call('HMGET', learned, 'tb', 'tw')
  if v[1] then tb, tw = tonumber(v[1]), tonumber(v[2]) end
end
local wait = 0
if rb >= 0 then
  local span = rw * (1 + share) + margin
  local n = used(now - span)
  local need = n + 1 - rb
  if need > 0 and n > 0 then
    local m = redis.call('ZRANGEBYSCORE', ledger, '(' .. (now - span), '+inf', 'WITHSCORES', 'LIMIT', need - 1, 1)
    if #m > 0 then wait = math.max(wait, tonumber(m[2]) + span - now) end
  end
end
if tb >= 0 then
  local span = tw * (1 + share) + margin
  local n, toks = used(now - span)
  local need = toks + cost - tb
  if need > 0 and n > 0 then
    local items = redis.call('ZRANGEBYSCORE', ledger, '(' .. (now - span), '+inf', 'WITHSCORES')
    local freed, found = 0, false
    for i = 1, #items, 2 do
      freed = freed + tokens(items[i])
      if freed >= need then
        wait = math.max(wait, tonumber(items[i + 1]) + span - now)
        found = true
        break
      end
    end
    if not found and #items > 0 then
      wait = math.max(wait, tonumber(items[#items]) + span - now)
    end
  end
end
if wait > 0 then return {0, tostring(wait)} end
total = redis.call('INCRBY', counter, cost)
local member = redis.call('INCR', counter .. ':seq') .. ':' .. cost .. ':' .. total
redis.call('ZADD', ledger, now, member)
for _, k in ipairs({ledger, rejected, counter, counter .. ':seq', learned}) do
  redis.call('EXPIRE', k, 600)
end
local out = {1, member, (rb >= 0 or tb >= 0) and 1 or 0}
for w in string.gmatch(ARGV[8], '[^,]+') do
  local n, toks = used(now - tonumber(w))
  table.insert(out, n)
  table.insert(out, toks)
end
return out
"""

#: Record admissions made on the fast path, in one call. KEYS: token counter, ledger.
#: ARGV: now, then each admission's tokens. Returns their members.
RECORD = """
local now = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV do
  local cost = tonumber(ARGV[i])
  local total = redis.call('INCRBY', KEYS[1], cost)
  local member = redis.call('INCR', KEYS[1] .. ':seq') .. ':' .. cost .. ':' .. total
  redis.call('ZADD', KEYS[2], now, member)
  table.insert(out, member)
end
for _, k in ipairs({KEYS[1], KEYS[1] .. ':seq', KEYS[2]}) do redis.call('EXPIRE', k, 600) end
return out
"""

#: Below this share of every budget in force (as the last script call counted it), an
#: admission takes the fast path: recorded with the others of its loop turn in one
#: call, instead of a call of its own. Far from the limit, a count a few milliseconds
#: old cannot let the shared windows overflow.
FAST_SHARE = 0.5
#: How long the last script call's counts serve the fast path (seconds).
FAST_FOR_S = 0.1
#: Fast admissions one script call allows, as a share of the request budget: however
#: many processes race on counts a moment old, each adds at most this much, so ten
#: of them stay within the budget from half of it.
FAST_GRANT = 0.05

#: A 429 refused an admission: it stops counting (it stays in the ledger, which keeps
#: the cumulative counts whole, and is listed as rejected). KEYS: ledger, rejected.
#: ARGV: member.
REJECT = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
local seq, toks = string.match(ARGV[1], '^(%d+):(%d+)')
redis.call('ZADD', KEYS[2], score, seq .. ':' .. toks)
redis.call('EXPIRE', KEYS[2], 600)
return 1
"""

#: Pause every process until ``ARGV[2] + ARGV[1]`` (never shortening a longer pause).
COOL = """
local until_ = tonumber(ARGV[2]) + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > cur then redis.call('SET', KEYS[1], tostring(until_), 'EX', 600) end
return 1
"""

#: How often a process publishes what it learned (seconds).
PUBLISH_EVERY_S = 1.0
#: Longest sleep between looks at a full shared window (others may free room).
SHARED_POLL_S = 0.25


def shared_limiter(
    url: str,
    *,
    scope: str,
    requests_per_minute: float | None = None,
    tokens_per_minute: float | None = None,
) -> RateLimiter:
    """The limiter of ``limiter=url``: shared through Redis, or local on fallback.

    ``?fallback=local`` at the end of the URL: an unreachable server logs a warning and
    the job limits itself alone; otherwise it raises :class:`LimiterError`.
    """
    fallback = url.endswith("?fallback=local")
    try:
        return RedisLimiter(
            url,
            scope=scope,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
        )
    except LimiterError as exc:
        if not fallback:
            raise
        logger.warning("%s; limiting this job alone (fallback=local)", exc)
        return RateLimiter(
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
        )


class RedisLimiter(RateLimiter):
    """A :class:`RateLimiter` whose admissions also go through a ledger in Redis.

    Parameters
    ----------
    url
        The Redis server.
    scope
        What shares the quota: ``"<endpoint host>/<deployment>"``.
    shared_clock
        The clock of the shared ledger: wall-clock seconds (``time.time``), which
        processes on several machines agree on (NTP); injected in tests.
    **kw
        As for :class:`RateLimiter`.
    """

    crowding = False  # the ledger is shared: others' use is in it

    def __init__(
        self,
        url: str,
        *,
        scope: str,
        shared_clock: Callable[[], float] = time.time,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self._now = shared_clock
        self.url = shown_url(url)
        self._raw_url = url
        self._client = connect(url, "limiter", LimiterError)
        digest = hashlib.sha256(scope.encode()).hexdigest()[:16]
        base = f"{PREFIX}quota:{digest}:"
        names = ("ledger", "rejected", "cool", "tokens", "learned", "base")
        self._keys = [base + k for k in names]
        self._ledger, self._rejected, self._cool = self._keys[:3]
        self._learned_key = self._keys[4]
        self._admit_script = self._client.register_script(ADMIT)
        self._record_script = self._client.register_script(RECORD)
        #: when the last script call answered, and its counts (fast admissions added)
        self._last_counts: tuple[float, bool, list[int]] | None = None
        self._pending: list[tuple[Ticket, int]] = []
        self._granted = 0
        self._shared_probe: Ticket | None = None
        self._reject_script = self._client.register_script(REJECT)
        self._cool_script = self._client.register_script(COOL)
        self._members: dict[int, str] = {}  # id(ticket) -> its ledger member
        self._gate: asyncio.Lock | None = None
        self._published = 0.0
        self._windows_arg = ",".join(f"{w:g}" for w in CANDIDATE_WINDOWS)
        self._join()

    def __repr__(self) -> str:
        return f"RedisLimiter({self.url!r})"

    # -- admission: the shared gate, then the local limiter ------------------------------

    async def acquire(
        self, tokens: int = 0, recost: Callable[[], int] | None = None
    ) -> Ticket:
        """Wait for the local limiter, then for room in the shared windows.

        The shared ledger records the request when it really goes (after any local
        wait), as the server counts it on arrival. One waiter per process polls it.
        """
        ticket = await super().acquire(tokens, recost)
        tokens = ticket.estimate or tokens  # made exactly while it waited, maybe
        admitted: list[Any] | float | None = None
        if ticket.probe:  # the local limiter probes a window: it goes, and is counted
            admitted = self._shared(tokens, probe=True)
            if isinstance(admitted, list):
                self._attach(ticket, admitted)
                return ticket
        elif self._fast(ticket, tokens):
            return ticket
        if self._gate is None:
            self._gate = asyncio.Lock()
        admitted = None
        if not self._gate.locked():
            admitted = self._shared(tokens)
        if not isinstance(admitted, list):
            async with self._gate:
                since = self._clock()
                while True:
                    admitted = self._shared(tokens)
                    if isinstance(admitted, list):
                        break
                    if self._may_probe_shared(admitted, since):
                        admitted = self._shared(tokens, probe=True)
                        if isinstance(admitted, list):
                            ticket.probe = True
                            self._shared_probe = ticket
                            break
                    await self._sleep(min(admitted, SHARED_POLL_S))
        self._attach(ticket, admitted)
        return ticket

    def try_acquire(self, tokens: int = 0) -> Ticket | None:
        """Admit now if both the shared windows and the local limiter allow."""
        if self.ramp.starting:
            return None
        admitted = self._shared(tokens)
        if not isinstance(admitted, list):
            return None
        ticket = super().try_acquire(tokens)
        if ticket is None:
            self._forget(admitted[1])
            return None
        self._attach(ticket, admitted)
        return ticket

    def wait_hint(self, tokens: int = 0) -> float:
        """The local hint, capped at the shared gate's poll interval."""
        return min(super().wait_hint(tokens), SHARED_POLL_S)

    def _budget_args(self) -> list[float]:
        """The budgets the shared gate enforces, per resource: (budget, window).

        A given quota, once its window is known, is the budget itself: estimates from
        the headers scatter more when several processes send at once (each answer's
        count lags the others' requests in flight), and their low quantile would
        leave part of the quota unused. ``x-ratelimit-limit-*`` still caps it.
        """
        out: list[float] = []
        for name in ("requests", "tokens"):
            res = self.resources[name]
            budget = res.budget()
            if res.per_minute is not None and res.known:
                budget = max(1.0, res.per_minute * res.window / 60.0)
                if res.limit is not None:
                    budget = min(budget, res.limit)
            out += [-1.0, 60.0] if budget is None else [budget, res.window]
        return out

    def _shared(self, tokens: int, *, probe: bool = False) -> list[Any] | float:
        """Admit into the shared ledger: its reply, or seconds to wait.

        A ``probe`` is admitted whatever the budgets (not during a cooldown).
        """
        import redis

        self._record()  # the fast admissions first, so the counts include them
        cost = self._cost(tokens)
        args = [
            cost,
            *([-2.0, 60.0, -2.0, 60.0] if probe else self._budget_args()),
            MARGIN_SHARE,
            MARGIN_S,
            self._windows_arg,
            self._now(),
        ]
        try:
            reply = self._admit_script(keys=self._keys, args=args)
        except redis.RedisError as exc:
            raise self._lost(exc) from None
        if int(reply[0]) == 1:
            return list(reply)
        return max(0.001, float(reply[1]))

    def _may_probe_shared(self, wait: float, since: float) -> bool:
        """Blocked at the shared gate long enough, with a window not yet known: probe.

        (The local limiter's own probes see only this process's admissions.)
        """
        probe = self._shared_probe
        return (
            wait > PROBE_AFTER_S
            and self._clock() - since >= PROBE_AFTER_S
            and (probe is None or probe.answered)
            and any(
                not r.known and r.budget() is not None for r in self.resources.values()
            )
        )

    def _cost(self, tokens: int) -> int:
        return round(tokens * getattr(self, "token_ratio", 1.0))

    def _fast(self, ticket: Ticket, tokens: int) -> bool:
        """Admit on the fast path if far from every budget; record it with the batch."""
        last = self._last_counts
        if last is None or self._clock() - last[0] > FAST_FOR_S:
            return False
        _, budgeted, counts = last
        if self._granted <= 0:
            return False
        cost = self._cost(tokens)
        own = False
        for k, name in enumerate(("requests", "tokens")):
            for i, budget in _budgets(self.resources[name]):
                own = True
                if counts[2 * i + k] + (1 if k == 0 else cost) > FAST_SHARE * budget:
                    return False
        if budgeted and not own:
            return False  # others know a budget this process does not: ask the script
        self._granted -= 1
        for i in range(len(CANDIDATE_WINDOWS)):
            counts[2 * i] += 1
            counts[2 * i + 1] += cost
        # its counts miss what other processes admitted since the last script call:
        # its answer teaches nothing (an estimate from it would be too low)
        ticket.forget_counts()
        self._pending.append((ticket, cost))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._record)
        return True

    def _record(self) -> None:
        """Write this loop turn's fast admissions to the shared ledger, in one call."""
        import redis

        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            members = self._record_script(
                keys=[self._keys[3], self._ledger],
                args=[self._now(), *(cost for _, cost in pending)],
            )
        except redis.RedisError as exc:
            logger.warning("%s", self._lost(exc))
            return
        for (ticket, _), member in zip(pending, members, strict=True):
            if not ticket.answered:  # (a 429 needs it to leave the ledger)
                self._members[id(ticket)] = _text(member)

    def _attach(self, ticket: Ticket, reply: list[Any]) -> None:
        """What every process had admitted, per window, is what learning sees."""
        self._members[id(ticket)] = _text(reply[1])
        counts = [int(x) for x in reply[3:]]
        self._last_counts = (self._clock(), bool(int(reply[2])), list(counts))
        budgets = [b for _, b in _budgets(self.resources["requests"])]
        self._granted = int(FAST_GRANT * min(budgets)) if budgets else 64
        self._set_used(ticket, counts)

    def _set_used(self, ticket: Ticket, counts: list[int]) -> None:
        shared = {
            w: (counts[2 * i], counts[2 * i + 1])
            for i, w in enumerate(CANDIDATE_WINDOWS)
        }
        learning = ticket.learning
        if learning is not None:  # the local ledger keeps it
            learning.used, learning.low, learning.high = (
                dict(shared),
                dict(shared),
                dict(shared),
            )

    def _forget(self, member: Any) -> None:
        """An admission that will not be sent after all: it stops counting."""
        import redis

        try:
            self._reject_script(
                keys=[self._ledger, self._rejected], args=[_text(member)]
            )
        except redis.RedisError as exc:
            raise self._lost(exc) from None

    def _lost(self, exc: Exception) -> LimiterError:
        msg = scrub(
            f"limiter {self.url}: Redis failed during the run "
            f"({type(exc).__name__}: {exc}); the request was not sent",
            self._raw_url,
        )
        return LimiterError(msg)

    # -- what the server said ---------------------------------------------------------------

    def on_success(self, ticket: Ticket, *args: Any, **kw: Any) -> None:
        """Learn from an answer; publish what was learnt at most once a second."""
        self._members.pop(id(ticket), None)
        super().on_success(ticket, *args, **kw)
        now = self._clock()
        if now - self._published >= PUBLISH_EVERY_S:
            self._published = now
            self._publish()

    def _ramp_answered(
        self,
        ticket: Ticket,
        refused: str | None = None,
        remaining: dict[str, int | None] | None = None,
    ) -> None:
        """The ramp's answers read no budget here: they count this process's alone.

        A process joining a deployment others are using took a few before the server
        refused (a budget of 7 read so held a job to 7 requests per window); the
        budgets are learned from the shared ledger's counts instead.
        """
        self.ramp.answered(ticket, refused, remaining)

    def on_failure(self, ticket: Ticket) -> None:
        """Give back an admission that had no answer from the server."""
        self._members.pop(id(ticket), None)
        super().on_failure(ticket)

    def on_rate_limited(
        self,
        retry_after_s: float | None,
        ticket: Ticket | None = None,
        resource: str | None = None,
    ) -> None:
        """A 429: it leaves the shared ledger, and every process pauses."""
        import redis

        # the window is learned from the shared ledger below, not the local one
        super().on_rate_limited(retry_after_s, ticket, None)
        member = None if ticket is None else self._members.pop(id(ticket), None)
        wait = retry_after_s if retry_after_s is not None else DEFAULT_COOLDOWN_S
        try:
            if member is not None:
                self._reject_script(keys=[self._ledger, self._rejected], args=[member])
            self._cool_script(keys=[self._cool], args=[wait, self._now()])
            if retry_after_s is not None and resource in self.resources:
                self._settle(self.resources[resource], retry_after_s)
        except redis.RedisError as exc:
            logger.warning("%s", self._lost(exc))

    def _settle(self, res: Any, retry_after_s: float) -> None:
        """Settle the window a 429 names, from the shared ledger.

        Capacity frees when the oldest admission of any process still inside the true
        window leaves it.
        """
        now = self._now()
        frees_at = now + retry_after_s
        best, best_err = None, float("inf")
        for length in CANDIDATE_WINDOWS:
            oldest = self._client.zrangebyscore(
                self._ledger,
                f"({now - length}",
                "+inf",
                start=0,
                num=1,
                withscores=True,
            )
            if not oldest:
                continue
            err = abs(float(oldest[0][1]) + length - frees_at)
            if err < best_err:
                best, best_err = length, err
        if best is not None and best_err <= max(0.25, 0.1 * best):
            res.settle(best)

    def _join(self) -> None:
        """Start from the windows others learned for this deployment (see :func:`_windows`)."""
        import redis

        try:
            raw = self._client.hgetall(self._learned_key)
        except redis.RedisError as exc:
            raise self._lost(exc) from None
        for name, window in _windows(raw).items():
            res = self.resources[name]
            if not res.known:
                logger.debug("%s: joining with the shared window, %g s", name, window)
                res.window, res.known = window, True

    def _publish(self) -> None:
        """Share what this process learned: windows, and budgets once learned.

        A joining process starts with them (:meth:`_join`); a process given no budget
        has the shared gate enforce the learned one.
        """
        import redis

        fields: dict[str, float] = {}
        stale: list[str] = []  # a budget learned over another window
        for prefix, name in (("r", "requests"), ("t", "tokens")):
            res = self.resources[name]
            if not res.known:
                continue
            fields[prefix + "w"] = float(res.window)
            learned = res.learned()
            if learned is None:
                stale.append(prefix + "b")
            else:
                fields[prefix + "b"] = float(learned)
        if not fields:
            return
        try:
            with self._client.pipeline() as pipe:
                if stale:
                    pipe.hdel(self._learned_key, *stale)
                pipe.hset(self._learned_key, mapping=fields)
                pipe.expire(self._learned_key, 600)
                pipe.execute()
        except redis.RedisError as exc:
            logger.warning("%s", self._lost(exc))

    def close(self) -> None:
        """Close the connection (idempotent)."""
        try:
            self._client.close()
        except Exception:  # closing must not raise
            logger.debug("closing the Redis connection failed", exc_info=True)


def _windows(learned: dict[Any, Any]) -> dict[str, float]:
    """The windows published in the ``learned`` hash, per resource.

    A process joining a deployment in use (a Spark or Ray task after another, a second
    job) would otherwise assume the 60-s window and learn it again, from a ledger full
    of the others' admissions: its estimates then scatter, the window it picks may flip
    between candidates, and a wrong one either floods the server or holds the job for
    most of a minute.
    """
    fields = {_text(k): float(_text(v)) for k, v in learned.items()}
    out = {}
    for prefix, name in (("r", "requests"), ("t", "tokens")):
        window = fields.get(prefix + "w")
        if window in CANDIDATE_WINDOWS:
            out[name] = window
    return out


def _budgets(res: Resource) -> list[tuple[int, float]]:
    """The windows the fast path keeps far from: (candidate index, budget) each.

    Until the window is known it may be any candidate up to the assumed one: a
    per-minute quota assumed over 60 s would let a process admit a minute's budget
    on the fast path, unchecked, into what may be a 1-s window (and past a shared
    pause a 429 set), so every candidate's own budget bounds it.
    """
    if res.known:
        windows = [res.window]
    else:
        windows = [w for w in CANDIDATE_WINDOWS if w <= res.window]
    out = []
    for w in windows:
        budget = res.budget(w)
        if budget is not None:
            out.append((CANDIDATE_WINDOWS.index(w), budget))
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
