"""Several processes on one deployment without Redis: each paces itself (``crowd.py``).

The scenario of ``benchmarks/shared.py --only staggered`` (four jobs 1.5 s apart on one
600-RPM deployment counted per 10 s) runs on virtual time through
``benchmarks/shared_sim.py``: four limiters against the emulator's own quota code. Before
crowd mode, the jobs that joined a full window learned a budget of about one request:
the scenario took 7x the fastest schedule. The limiter itself is driven on a fake clock.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
from pathlib import Path
from types import ModuleType

import pytest

from polars_azurechat.transport import crowd
from polars_azurechat.transport.crowd import Crowd
from polars_azurechat.transport.ratelimit import RateLimiter
from tests.fakes import FakeClock


def _shared_sim() -> ModuleType:
    path = Path(__file__).parents[1] / "benchmarks" / "shared_sim.py"
    spec = importlib.util.spec_from_file_location("shared_sim", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", [0, 1])
def test_four_staggered_jobs_share_the_quota_instead_of_stalling(seed: int) -> None:
    stats = _shared_sim().simulate(rows=300, seed=seed)
    assert stats["lost"] == 0
    assert stats["429s"] / stats["requests"] <= 0.10, stats
    # every job ends near the fastest schedule (before: 7x, the late jobs stalled)
    assert stats["end"] <= 1.3 * stats["fastest"], stats
    for k in range(4):
        assert stats[f"job {k}"] < stats["end"] + 1e-9


def test_a_job_whose_slow_start_meets_a_full_window_paces_at_a_share(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(requests_per_minute=600, clock=clock, sleep=clock.sleep)

    async def go() -> list[float]:
        first = await limiter.acquire()
        # others filled the window: the first answer is a 429 for requests
        limiter.on_rate_limited(0.5, first, "requests")
        sent = []
        for _ in range(5):
            await limiter.acquire()
            sent.append(round(clock.now - 1000, 6))
        return sent

    sent = asyncio.run(go())
    assert limiter.crowd is not None
    rate = crowd.START_SHARE * 10  # a quarter of 10 requests a second
    assert limiter.crowd.rate == pytest.approx(rate)
    # after the 429's pause, one request every 1/rate s (not one a minute)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert sent[0] == pytest.approx(0.5)
    assert gaps == pytest.approx([1 / rate] * 4)


def test_a_lone_job_with_a_given_quota_does_not_pace(clock: FakeClock) -> None:
    # the window is known and the server counts only ours: nobody else is here
    limiter = RateLimiter(
        requests_per_minute=600, window_s=10, clock=clock, sleep=clock.sleep
    )

    async def go() -> None:
        tickets = [await limiter.acquire() for _ in range(40)]
        for k, t in enumerate(tickets):
            limiter.on_success(t, 100 - (k + 1), None)  # what remains after ours
            clock.advance(0.01)

    asyncio.run(go())
    assert limiter.crowd is None


def test_a_running_job_that_finds_others_paces_at_its_own_recent_rate(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(
        requests_per_minute=600, window_s=10, clock=clock, sleep=clock.sleep
    )

    async def go() -> None:
        tickets = [await limiter.acquire() for _ in range(40)]
        limiter.on_success(tickets[0], 100 - 1, None)
        # others took 30 of the window: less remains than our 40 leave
        limiter.on_success(tickets[1], 100 - 40 - 30, None)

    asyncio.run(go())
    assert limiter.crowd is not None
    assert limiter.crowd.rate == pytest.approx(crowd.KEEP_SHARE * 40 / 10)


def test_the_crowds_rate_is_cut_once_a_second_and_grows_back() -> None:
    pace = Crowd(per_minute=600, rate=4.0, now=0.0)
    pace.refused(1.0)
    pace.refused(1.5)  # the same burst's 429s: one cut
    assert pace.rate == pytest.approx(4.0 * crowd.CUT)
    pace.refused(2.0)
    assert pace.rate == pytest.approx(4.0 * crowd.CUT**2)
    pace.answered(50, 2.0)  # the most the server said remained
    pace.answered(10, 3.0)  # little free: grows by ADD of the quota per second
    low = 4.0 * crowd.CUT**2 + crowd.ADD * 10
    assert pace.rate == pytest.approx(low)
    pace.answered(40, 4.0)  # more than half free: grows by GROW of itself
    assert pace.rate == pytest.approx(low * (1 + crowd.GROW))
    pace.answered(0, 4.5)  # nothing remains: a cut
    assert pace.rate == pytest.approx(low * (1 + crowd.GROW) * crowd.CUT)
    for t in range(5, 60):
        pace.answered(50, float(t))
    assert pace.rate == pytest.approx(10.0)  # never above the quota
