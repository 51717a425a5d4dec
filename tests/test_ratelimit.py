"""Admission under a quota, with a fake clock: nothing waits for real."""

from __future__ import annotations

import asyncio

from polars_azurechat._ratelimit import RateLimiter

from .conftest import FakeClock


def _run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_requests_fill_the_window_then_wait_for_the_oldest_to_leave(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(
        requests_per_minute=60,
        window_s=10,
        margin_s=0.5,
        clock=clock,
        sleep=clock.sleep,
    )
    admitted: list[float] = []

    async def go() -> None:
        for _ in range(25):
            await limiter.acquire()
            admitted.append(clock.now - 1000)

    _run(go())
    # 10 per 10-s window: the first ten at once, the next ten when the first leave
    assert admitted[:10] == [0.0] * 10
    assert admitted[10:20] == [10.5] * 10
    assert admitted[20:] == [21.0] * 5


def test_tokens_bind_when_requests_do_not(clock: FakeClock) -> None:
    limiter = RateLimiter(
        tokens_per_minute=6000, window_s=10, margin_s=0, clock=clock, sleep=clock.sleep
    )

    async def go() -> list[float]:
        times = []
        for _ in range(4):
            await limiter.acquire(400)  # budget: 1000 tokens per window
            times.append(clock.now - 1000)
        return times

    times: list[float] = []

    async def collect() -> None:
        times.extend(await go())

    _run(collect())
    assert times == [0.0, 0.0, 10.0, 10.0]


def test_a_429_pauses_all_admissions(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)  # no quota: only the cooldown
    limiter.on_rate_limited(2.5)

    async def go() -> None:
        await asyncio.gather(*(limiter.acquire() for _ in range(5)))

    _run(go())
    assert clock.now - 1000 == 2.5
    assert sum(clock.sleeps) == 2.5  # one waiter slept; the others found it open
    limiter.on_rate_limited(None)
    assert limiter.delay() == 1.0  # a 429 with no delay named pauses for 1 s


def test_request_larger_than_the_budget_is_admitted_alone(clock: FakeClock) -> None:
    limiter = RateLimiter(
        tokens_per_minute=600, window_s=10, margin_s=0, clock=clock, sleep=clock.sleep
    )

    async def go() -> None:
        await limiter.acquire(50)
        await limiter.acquire(5000)

    _run(go())
    assert clock.now - 1000 == 10.0


def test_budget_is_learned_from_remaining_headers(clock: FakeClock) -> None:
    limiter = RateLimiter(window_s=10, margin_s=0, clock=clock, sleep=clock.sleep)
    admitted: list[float] = []

    async def go() -> None:
        first = await limiter.acquire(10)
        # the server saw 1 request and 10 tokens and says 4 requests / 90 tokens remain
        limiter.on_success(first, remaining_requests=4, remaining_tokens=90)
        for _ in range(6):
            await limiter.acquire(10)
            admitted.append(clock.now - 1000)

    _run(go())
    assert limiter.learned() == {"requests": 5.0, "tokens": 100.0}
    assert admitted == [0.0] * 4 + [10.0] * 2  # 5 per window, then the window turns


def test_a_given_quota_is_only_lowered_by_the_server(clock: FakeClock) -> None:
    limiter = RateLimiter(requests_per_minute=60, clock=clock, sleep=clock.sleep)

    async def go() -> None:
        t = await limiter.acquire()
        limiter.on_success(t, remaining_requests=1000, remaining_tokens=None)
        assert limiter.request_budget == 10
        limiter.on_success(t, remaining_requests=3, remaining_tokens=None)
        assert limiter.request_budget == 4

    _run(go())
