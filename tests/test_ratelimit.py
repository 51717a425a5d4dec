"""Admission under the quota the server enforces, on a fake clock: nothing waits.

The unit tests drive the limiter alone. The window-model tests run the engine against
the emulator over HTTP with the emulator's quota windows on the same fake clock, so a
minute of quota passes in a fraction of a second, and assert on what the emulator
counted (requests, 429s) and on what the limiter learned.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from polars_azurechat._types import ChatRequest
from polars_azurechat.emulator import Emulator
from polars_azurechat.engine.core import ChatEngine
from polars_azurechat.errors import AuthenticationError
from polars_azurechat.testing import MemoryTransport, error_response
from polars_azurechat.transport.auth import KeyAuth
from polars_azurechat.transport.http import Transport
from polars_azurechat.transport.ramp import RAMP_FIRST, RAMP_QUIET_S, RAMP_S
from polars_azurechat.transport.ratelimit import RateLimiter
from polars_azurechat.transport.windows import TOKEN_SHARE

from .fakes import FakeClock, NetworkClock


def _run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_requests_fill_the_window_then_wait_for_the_oldest_to_leave(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(
        requests_per_minute=60,
        window_s=10,
        slow_start=False,
        clock=clock,
        sleep=clock.sleep,
    )
    admitted: list[float] = []

    async def go() -> None:
        for _ in range(25):
            await limiter.acquire()
            admitted.append(round(clock.now - 1000, 3))

    _run(go())
    # 10 per 10-s window: the first ten at once, the next ten when the first leave
    # (a margin of 2% of the window, at least 20 ms for skew)
    assert admitted[:10] == [0.0] * 10
    assert admitted[10:20] == [10.2] * 10
    assert admitted[20:] == [20.4] * 5


def test_tokens_bind_when_requests_do_not(clock: FakeClock) -> None:
    limiter = RateLimiter(
        tokens_per_minute=6000,
        window_s=10,
        slow_start=False,
        clock=clock,
        sleep=clock.sleep,
    )
    times: list[float] = []

    async def go() -> None:
        for _ in range(4):
            await limiter.acquire(400)  # budget: 1000 tokens per window
            times.append(round(clock.now - 1000, 3))

    _run(go())
    assert times == [0.0, 0.0, 10.2, 10.2]


def test_a_cost_guessed_before_the_budget_is_made_exact_while_it_waits(
    clock: FakeClock,
) -> None:
    """A row costed by length (no budget yet) counts as the budget does once known.

    Counted at its guess (1 token), the third request would go with the second at
    10.2 s and overrun the server's window; made exact (600), it waits for the next.
    """
    limiter = RateLimiter(
        tokens_per_minute=6000,
        window_s=10,
        slow_start=False,
        clock=clock,
        sleep=clock.sleep,
    )
    times: list[float] = []
    estimates: list[int] = []

    async def go() -> None:
        for tokens, recost in ((900, None), (600, None), (1, lambda: 600)):
            ticket = await limiter.acquire(tokens, recost)
            times.append(round(clock.now - 1000, 3))
            estimates.append(ticket.estimate)

    _run(go())
    assert estimates == [900, 600, 600]
    assert times == [0.0, 10.2, 20.4]


def test_a_429_pauses_all_admissions_and_its_request_stops_counting(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(
        requests_per_minute=12,
        window_s=10,
        slow_start=False,
        clock=clock,
        sleep=clock.sleep,
    )

    async def go() -> None:
        first = await limiter.acquire()
        second = await limiter.acquire()  # the budget (2 per window) is now full
        limiter.on_rate_limited(2.5, second, "requests")
        assert limiter.delay() == 2.5  # paused; the 429'd request no longer counts
        await limiter.acquire()
        assert clock.now - 1000 == 2.5
        limiter.on_success(first, None, None)

    _run(go())
    unlimited = RateLimiter(slow_start=False, clock=clock, sleep=clock.sleep)
    unlimited.on_rate_limited(None)
    assert unlimited.delay() == pytest.approx(1.0)  # no delay named: 1 s


def test_a_request_larger_than_the_budget_is_admitted_alone(clock: FakeClock) -> None:
    limiter = RateLimiter(
        tokens_per_minute=600,
        window_s=10,
        slow_start=False,
        clock=clock,
        sleep=clock.sleep,
    )

    async def go() -> None:
        await limiter.acquire(50)
        await limiter.acquire(5000)

    _run(go())
    assert round(clock.now - 1000, 3) == 10.2


def test_slow_start_sends_the_first_request_alone(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    order: list[str] = []

    async def one(name: str) -> None:
        ticket = await limiter.acquire()
        order.append(f"sent {name}")
        await asyncio.sleep(0)
        if name == "a":
            order.append("a answered")
            limiter.on_success(ticket, None, None)

    async def go() -> None:
        await asyncio.gather(one("a"), one("b"), one("c"))

    _run(go())
    assert order[:2] == ["sent a", "a answered"]
    assert sorted(order[2:]) == ["sent b", "sent c"]


def test_budget_is_learned_from_remaining_headers_and_is_stable(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(window_s=10, clock=clock, sleep=clock.sleep)

    async def go() -> None:
        tickets = [await limiter.acquire(10)]
        # the server saw 1 request and says 4 requests / 90 tokens remain
        limiter.on_success(tickets[0], remaining_requests=4, remaining_tokens=90)
        for remaining in (3, 2, 1):
            t = await limiter.acquire(10)
            limiter.on_success(t, remaining_requests=remaining, remaining_tokens=None)

    _run(go())
    learned = limiter.learned()
    assert learned["requests_per_minute"] == pytest.approx(5 * 6)
    assert learned["tokens_per_minute"] == pytest.approx(100 * 6)
    assert limiter.delay() == 0  # 4 of 5 used
    _run(limiter.acquire())
    assert limiter.delay() > 9  # the window is full: 5 of 5


@pytest.fixture
def net_clock() -> NetworkClock:
    return NetworkClock()


def _engine(
    emu: Emulator, clock: FakeClock, max_tokens: int = 10, **limits: Any
) -> ChatEngine:
    transport = Transport(
        endpoint=emu.url,
        deployment="gpt-4o-mini",
        api_version="2024-10-21",
        auth=KeyAuth({"api-key": emu.api_key}),
        timeout_s=5,
    )
    limiter = RateLimiter(clock=clock, sleep=clock.sleep, **limits)
    engine = ChatEngine(
        transport,
        limiter=limiter,
        sleep=clock.sleep,
        clock=clock,
        max_concurrency=64,
        params={"max_tokens": max_tokens},
    )
    if isinstance(clock, NetworkClock):
        clock.watch(engine)
    return engine


def _fastest(rows: int, per_minute: float, window_s: float) -> float:
    """The fake seconds ``rows`` take at best under ``per_minute``, counted per window.

    A window's worth goes at once; each further turn waits the window and the margin
    after which the limiter lets an admission leave it (2% of it, at least 20 ms).
    """
    per_window = per_minute * window_s / 60
    margin = max(0.02, 0.02 * window_s)
    return (math.ceil(rows / per_window) - 1) * (window_s + margin)


@pytest.mark.parametrize(
    ("server", "given"),
    [
        ({"request_window_s": 10.0}, {}),
        ({"request_window_s": 1.0}, {}),
        ({"request_window_s": 60.0}, {}),
        ({"request_window_s": 1.0}, {"requests_per_minute": 600}),
        ({"request_window_s": 10.0, "window_kind": "fixed"}, {}),
    ],
    ids=["10s", "1s", "60s", "1s-given", "10s-fixed"],
)
def test_the_request_window_is_learned_and_429s_stay_rare(
    net_clock: NetworkClock, server: dict[str, Any], given: dict[str, Any]
) -> None:
    clock = net_clock
    with Emulator(requests_per_minute=600, clock=clock, **server) as emu:
        engine = _engine(emu, clock, **given)
        rows = [
            ChatRequest([{"role": "user", "content": f"What is {i} + 1?"}])
            for i in range(400)
        ]
        results = engine.run(rows)
        stats = emu.stats()
    assert [r.content for r in results if r] == [str(i + 1) for i in range(400)]
    n429 = stats["statuses"].get("429", 0)
    assert n429 <= 0.03 * stats["requests"], stats
    learned = engine.limiter.learned()
    assert learned["requests_per_minute"] == pytest.approx(600, rel=0.05)
    if server.get("window_kind") != "fixed":
        assert learned["request_window_s"] == server["request_window_s"]
    # 400 rows at 600 per minute: a window's worth at a time, each turn of the window
    # one window plus the margin after which admissions leave it (2%, at least 20 ms)
    fastest = _fastest(400, 600, server["request_window_s"])
    assert clock.now - 1000 <= 1.05 * fastest + 0.1, (clock.now - 1000, fastest)


def test_a_token_quota_over_60_s_runs_at_full_speed(net_clock: NetworkClock) -> None:
    clock = net_clock
    # 10,000 tokens per 60 s; each request costs about 1,000 (max_tokens) + its prompt
    with Emulator(tokens_per_minute=10_000, token_window_s=60.0, clock=clock) as emu:
        engine = _engine(emu, clock, max_tokens=1000, tokens_per_minute=10_000)
        rows = [
            ChatRequest([{"role": "user", "content": f"What is {i} + 1?"}])
            for i in range(40)
        ]
        results = engine.run(rows)
        stats = emu.stats()
    assert all(r is not None and r.exception is None for r in results)
    learned = engine.limiter.learned()
    assert learned["token_window_s"] == 60.0
    # 9 requests of ~1,013 tokens fit in a minute: 40 rows take 4 turns of the window
    fastest = _fastest(40, 10_000 // 1013, 60.0)
    assert clock.now - 1000 <= 1.05 * fastest, (clock.now - 1000, fastest)
    assert stats["statuses"].get("429", 0) <= 3


def test_a_wrong_key_costs_one_request(clock: FakeClock) -> None:
    # the server refuses the key: slow start sends one request, its 401 stops the run
    transport = MemoryTransport(lambda request: error_response(401, "wrong key"))
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    engine = ChatEngine(
        transport, limiter=limiter, sleep=clock.sleep, clock=clock, max_concurrency=64
    )
    rows: list[ChatRequest | None] = [
        ChatRequest([{"role": "user", "content": f"What is {i} + 1?"}])
        for i in range(200)
    ]
    with pytest.raises(AuthenticationError):
        engine.run(rows)
    assert len(transport.requests) == 1
    assert transport.peak_in_flight == 1


def test_the_ramp_admits_twice_as_many_every_step_until_the_first_answer(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    sent: list[float] = []

    async def go() -> None:
        first = await limiter.acquire()
        sent.append(clock.now - 1000)
        for _ in range(2 * RAMP_FIRST):
            await limiter.acquire()
            sent.append(round(clock.now - 1000, 6))
        limiter.on_success(first, None, None)  # the ramp is over: no more waiting
        for _ in range(20):
            await limiter.acquire()
        sent.append(round(clock.now - 1000, 6))

    _run(go())
    # the first alone for RAMP_QUIET_S, then RAMP_FIRST at once, doubling every
    # RAMP_S: the 2nd to the (RAMP_FIRST + 1)th at RAMP_QUIET_S, then one step later
    quiet, step = RAMP_QUIET_S, RAMP_S
    assert sent[0] == 0.0
    assert sent[1] == pytest.approx(quiet)
    assert sent[RAMP_FIRST] == pytest.approx(quiet)
    assert sent[RAMP_FIRST + 1] > quiet
    assert sent[2 * RAMP_FIRST] == pytest.approx(quiet + step)
    assert sent[-1] == sent[-2]  # 20 more at once after the answer


def test_the_first_answer_ends_the_ramp_without_waiting_for_its_step() -> None:
    # a real clock far from the next step: the waiter wakes on the answer, not on time
    limiter = RateLimiter()

    async def go() -> tuple[float, bool]:
        first = await limiter.acquire()
        waiter = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0)
        pending = not waiter.done()
        limiter.on_failure(first)  # e.g. a 401: the run stops; admission is open
        await asyncio.wait_for(waiter, timeout=5)
        return limiter.delay(), pending

    delay, pending = asyncio.run(go())
    assert pending and delay == 0


def test_a_token_window_is_learned_though_the_server_counts_tokens_its_own_way(
    net_clock: NetworkClock,
) -> None:
    # the emulator charges its own estimate ("chars"), the client counts with tiktoken
    pad = "Consider the following carefully. " * 4
    with Emulator(
        requests_per_minute=6000,
        tokens_per_minute=28_800,
        token_window_s=10.0,
        clock=net_clock,
    ) as emu:
        engine = _engine(emu, net_clock)
        rows = [
            ChatRequest([{"role": "user", "content": f"{pad}What is {i} + 1?"}])
            for i in range(300)
        ]
        results = engine.run(rows)
        stats = emu.stats()
        charged = stats["prompt_tokens"] / 300 + 10
    assert all(r is not None and r.exception is None for r in results)
    assert stats["statuses"].get("429", 0) <= 0.03 * stats["requests"], stats
    assert engine.limiter.learned()["token_window_s"] == 10.0
    fastest = _fastest(300, 4800 / charged * 6, 10.0)
    assert net_clock.now - 1000 <= 1.05 * fastest, (net_clock.now - 1000, fastest)


def _burst(
    limiter: RateLimiter, clock: FakeClock, n: int, remaining: int, gap: float = 0.0
) -> None:
    """The first request alone, then ``n - 1`` at once ``gap`` s later.

    All are answered in send order; the first answer says ``remaining``.
    """

    async def go() -> None:
        first = await limiter.acquire()
        await clock.sleep(gap)
        limiter.on_success(first, remaining_requests=remaining, remaining_tokens=None)
        tickets = [await limiter.acquire() for _ in range(n - 1)]
        for i, t in enumerate(tickets):
            limiter.on_success(t, remaining - 1 - i, None)

    _run(go())


@pytest.mark.parametrize("truth", [1.0, 10.0, 60.0])
def test_one_probe_tells_the_window(clock: FakeClock, truth: float) -> None:
    # 10 requests per window: the first answer says 9 remain; 9 more go at once and the
    # window assumed (60 s) is full. The 1-s candidate has room again 1.02 s after the
    # first ones went: one probe goes then, and its answer decides.
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    _burst(limiter, clock, 10, 9)
    req = limiter.resources["requests"]
    assert (req.window, req.known) == (60.0, False)

    async def go() -> None:
        probe = await limiter.acquire()
        assert probe.probe
        assert round(clock.now - 1000, 3) == 1.02
        if truth == 1.0:  # the others left the server's window: 9 remain after it
            limiter.on_success(probe, remaining_requests=9, remaining_tokens=None)
        else:  # the window is full until the first ones leave it
            limiter.on_rate_limited(truth - 1.02, probe, "requests")

    _run(go())
    assert (req.window, req.known) == (truth, True)
    assert limiter.learned()["requests_per_minute"] == pytest.approx(600 / truth)


def test_a_quiet_probe_that_finds_the_window_not_yet_empty_still_decides(
    clock: FakeClock,
) -> None:
    # the first request goes alone, the 9 others 0.2 s later (when it is answered). The
    # probe goes when the first leaves the 1-s candidate: it finds the 9 still inside
    # and nothing remains, yet 11 went within 10 s (and 60 s): a 1-s window, at once.
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    _burst(limiter, clock, 10, 9, gap=0.2)

    async def go() -> None:
        probe = await limiter.acquire()
        assert probe.probe
        assert round(clock.now - 1000, 3) == 1.02
        limiter.on_success(probe, remaining_requests=0, remaining_tokens=None)

    _run(go())
    req = limiter.resources["requests"]
    assert (req.window, req.known) == (1.0, True)
    assert limiter.learned()["requests_per_minute"] == pytest.approx(600)


def test_estimates_near_a_window_edge_do_not_lower_the_budget(clock: FakeClock) -> None:
    # the server counts a request on arrival, a little after we send it: one sent just
    # past a window's edge may find the old ones still inside; that answer is ambiguous
    limiter = RateLimiter(window_s=1.0, clock=clock, sleep=clock.sleep)
    _burst(limiter, clock, 5, 9)  # 10 per second; 5 went

    async def go() -> None:
        await clock.sleep(1.01)  # out of the window, not out of its margin
        t = await limiter.acquire()
        limiter.on_success(t, remaining_requests=4, remaining_tokens=None)

    _run(go())
    assert limiter.learned()["requests_per_minute"] == pytest.approx(600)


def test_a_burst_answered_out_of_order_does_not_lower_the_budget(
    clock: FakeClock,
) -> None:
    # 100 per 10 s, given. 60 go at one instant and reach the server in the reverse
    # order: the last sent was counted first. Paired with its own send rank each answer
    # would read a budget from 41 to 159; none is kept, as the order is not knowable
    limiter = RateLimiter(
        requests_per_minute=600, window_s=10, slow_start=False, clock=clock
    )

    async def go() -> None:
        tickets = [await limiter.acquire() for _ in range(60)]
        for i, t in enumerate(reversed(tickets)):
            limiter.on_success(t, remaining_requests=99 - i, remaining_tokens=None)

    _run(go())
    assert limiter.resources["requests"].learned(10.0) is None
    assert limiter.learned()["requests_per_minute"] == pytest.approx(600)

    async def spaced() -> None:  # sent 0.5 s apart, the order is known: they count
        for _ in range(10):
            await clock.sleep(0.5)
            t = await limiter.acquire()
            used = limiter._windows[10.0].requests
            limiter.on_success(t, remaining_requests=90 - used, remaining_tokens=None)

    _run(spaced())
    assert limiter.resources["requests"].learned(10.0) == pytest.approx(90)
    assert limiter.learned()["requests_per_minute"] == pytest.approx(540)


def test_the_ledger_holds_what_the_server_charged(clock: FakeClock) -> None:
    limiter = RateLimiter(
        tokens_per_minute=60_000,
        window_s=10,
        slow_start=False,
        clock=clock,
        sleep=clock.sleep,
    )
    window = limiter._windows[10.0]

    def held(tokens: int, ratio: float = 1.0) -> tuple[int, int]:
        guess = round(tokens * ratio)  # a prediction: a reserve besides, till answered
        return guess, math.ceil(guess / TOKEN_SHARE) - guess

    async def go() -> None:
        a = await limiter.acquire(100)
        b = await limiter.acquire(50)
        (ga, ra), (gb, rb) = held(100), held(50)
        assert (window.tokens, window.reserve) == (ga + gb, ra + rb)
        limiter.on_success(a, None, None, charged_tokens=130)
        assert (window.tokens, window.reserve) == (130 + gb, rb)
        limiter.on_success(b, None, None, charged_tokens=40)
        assert (window.tokens, window.reserve) == (170, 0)
        await limiter.acquire(100)  # an estimate answered before: its charge
        await limiter.acquire(70)  # never answered: the nearest one's ratio (50: 0.8)
        guess, reserve = held(70, 0.8)
        assert (window.tokens, window.reserve) == (170 + 130 + guess, reserve)

    _run(go())


def test_a_429_just_past_the_margin_widens_it_once_per_burst(clock: FakeClock) -> None:
    # the server took a burst in late (it queued): 429s naming a few ms mean our ledger
    # let requests go that much too early; the margin grows by the most they fell short
    limiter = RateLimiter(
        requests_per_minute=60,
        window_s=10,
        slow_start=False,
        clock=clock,
        sleep=clock.sleep,
    )
    window = limiter._windows[10.0]
    assert window.margin == pytest.approx(0.2)

    async def go() -> None:
        for _ in range(10):
            await limiter.acquire()
        a = await limiter.acquire()  # at 10.2 s
        b = await limiter.acquire()
        assert round(clock.now - 1000, 3) == 10.2
        limiter.on_rate_limited(0.03, a, "requests")
        limiter.on_rate_limited(0.05, b, "requests")  # same burst: not added up
        assert window.margin == pytest.approx(0.25)
        assert limiter.resources["requests"].window == 10.0

    _run(go())


def test_a_given_quota_bounds_the_ramp_until_its_window_is_known(
    clock: FakeClock,
) -> None:
    # 600 a minute may be counted per second: before the first answer tells the
    # window, the ramp sends what one second allows (10), however long it waits
    limiter = RateLimiter(requests_per_minute=600, clock=clock, sleep=clock.sleep)

    async def go() -> int:
        first = await limiter.acquire()
        others = [asyncio.ensure_future(limiter.acquire()) for _ in range(30)]
        for _ in range(300):  # the waiters' (fake) sleeps: the ramp's time passes
            await asyncio.sleep(0)
        sent = 1 + sum(t.done() for t in others)
        waited = clock.now - 1000
        limiter.on_success(first, remaining_requests=None, remaining_tokens=None)
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        assert waited > 1.0  # the ramp alone would have let all 31 go by then
        return sent

    assert asyncio.run(go()) == 10


def test_what_the_server_took_before_its_first_429s_is_the_budget(
    clock: FakeClock,
) -> None:
    # the ramp sends 14 before any answer; a server with 10 per 10 s takes 10 and
    # refuses 4 at once. Once all 14 are answered, the 10 it took is the budget, in
    # the window the 429 named; answers from amid the burst could not tell it
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)

    async def go() -> None:
        tickets = [await limiter.acquire() for _ in range(14)]
        assert clock.now - 1000 < 0.05  # the ramp: all within a few steps
        for ticket in tickets[10:]:
            limiter.on_rate_limited(10.0 - (clock.now - 1000), ticket, "requests")
        assert limiter.resources["requests"].budget() is None  # 10 still in flight
        for ticket in tickets[:-5]:
            limiter.on_success(ticket, remaining_requests=None, remaining_tokens=None)
        assert limiter.resources["requests"].budget() is None
        limiter.on_success(tickets[9], remaining_requests=None, remaining_tokens=None)

    _run(go())
    assert limiter.learned()["request_window_s"] == 10.0
    assert limiter.resources["requests"].budget() == 10.0
    assert limiter.learned()["requests_per_minute"] == 60.0


def test_a_ramp_without_429s_reads_no_budget(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)

    async def go() -> None:
        tickets = [await limiter.acquire() for _ in range(14)]
        for ticket in tickets:
            limiter.on_success(ticket, remaining_requests=None, remaining_tokens=None)

    _run(go())
    assert limiter.resources["requests"].budget() is None


def test_the_ramps_answers_together_read_the_budget_and_hold_sends_until_then(
    clock: FakeClock,
) -> None:
    # 12 go in the ramp; a server with 20 per window answers each with what remained
    # when it arrived (in any order). After the first answer one request may go; the
    # next waits until the ramp's answers are in: they read 12 taken + 8 left = 20
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)

    async def go() -> None:
        tickets = [await limiter.acquire() for _ in range(12)]
        limiter.on_success(tickets[0], remaining_requests=15, remaining_tokens=None)
        probe = limiter.try_acquire()
        assert probe is not None  # the hold's one request
        assert limiter.try_acquire() is None  # the rest wait for the reading
        assert limiter.resources["requests"].budget() is None
        for i, ticket in enumerate(tickets[1:]):
            limiter.on_success(ticket, remaining_requests=18 - i, remaining_tokens=None)
        assert limiter.resources["requests"].budget() == 20.0
        assert limiter.try_acquire() is not None  # held no more

    _run(go())


def test_a_straggler_holds_the_job_no_longer_than_the_ramp_and_a_little(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)

    async def go() -> None:
        tickets = [await limiter.acquire() for _ in range(4)]
        limiter.on_success(tickets[0], remaining_requests=50, remaining_tokens=None)
        assert limiter.try_acquire() is not None
        assert limiter.try_acquire() is None
        clock.now += 0.2  # the others never answer: the hold ends anyway
        assert limiter.try_acquire() is not None

    _run(go())
