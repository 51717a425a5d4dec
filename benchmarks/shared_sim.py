"""The staggered scenario of ``shared.py`` without Redis, on virtual time: a model to iterate on.

Four jobs (64 workers each, 600 requests a minute given, as in ``shared.py
--only staggered``) start 1.5 s apart, each with its own
:class:`~polars_azurechat.transport.ratelimit.RateLimiter`, against the emulator's own
quota code (a sliding 10-s window of 100 requests) on an event loop whose clock jumps to
the next timer: a run of minutes takes a tenth of a second, so a change to the limiter
can be tried in seconds before the real benchmark (minutes, four processes over HTTP)
is run.

It models the mechanism, not the measurement: no HTTP, no process start-up, a 429 back
in 1 ms, a fixed latency with 10% jitter, 6 attempts per row, tokens not limited. Its
figures are its own. Before crowd mode (``transport/crowd.py``) it showed the stall the
real benchmark showed (a job that starts while the window is full read a budget of 0
from its ramp: 1 request per assumed 60-s window, then about one per probe) at 2.6%
429s and 7.6x the fastest schedule (4 x 150 rows; the real benchmark: 1.96x). With it:
7.0% and 1.30x (4 x 150), 6.1% and 1.21x (4 x 300), where the real benchmark measured
5.6% and 1.20x (4 x 300). ``tests/test_crowd.py`` runs it. Only the real benchmark
decides a target.

Run: ``python benchmarks/shared_sim.py [ROWS_PER_JOB] [--sample]`` (``--sample`` prints
each limiter's window, budget and the requests sent every 2 s of virtual time).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import selectors
import time
from typing import Any

from polars_azurechat.emulator._quota import Quota
from polars_azurechat.emulator._settings import EmulatorSettings
from polars_azurechat.transport.ratelimit import RateLimiter

STARTS = (0.0, 1.5, 3.0, 4.5)
LATENCY_S = 0.2
WORKERS = 64
ATTEMPTS = 6
RPM = 600
WINDOW_S = 10.0


def virtual_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose clock jumps to the next timer instead of sleeping."""
    loop = asyncio.new_event_loop()
    now = [0.0]
    selector: selectors.BaseSelector = loop._selector  # type: ignore[attr-defined]
    real_select = selector.select

    def select(timeout: float | None = None) -> Any:
        if timeout is None:
            raise RuntimeError("nothing scheduled: the jobs wait on each other")
        now[0] += max(0.0, timeout)
        return real_select(0)

    loop.time = lambda: now[0]  # type: ignore[method-assign]
    selector.select = select  # type: ignore[method-assign]
    return loop


async def job(
    k: int,
    rows: int,
    quota: Quota,
    stats: dict[str, float],
    limiters: dict,
    seed: int = 0,
) -> None:
    """One job: ``rows`` requests through its own limiter, retried on 429s."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(STARTS[k])
    rnd = random.Random(seed * 100 + k)
    limiter = RateLimiter(requests_per_minute=RPM, clock=loop.time, sleep=asyncio.sleep)
    limiters[k] = limiter
    left = [rows]
    t0 = loop.time()

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            for _ in range(ATTEMPTS):
                ticket = await limiter.acquire(10)
                stats["requests"] += 1
                await asyncio.sleep(0.0005 + rnd.random() * 0.001)  # on the wire
                decision = quota.admit(10)
                if not decision.admitted:
                    stats["429s"] += 1
                    wait = round(decision.wait_s, 3)
                    await asyncio.sleep(0.0005)
                    limiter.on_rate_limited(wait, ticket, decision.limited_by)
                    await asyncio.sleep(wait)  # the retry waits what the 429 names
                    continue
                remaining = int(decision.headers["x-ratelimit-remaining-requests"])
                await asyncio.sleep(LATENCY_S * (0.9 + 0.2 * rnd.random()))
                limiter.on_success(ticket, remaining, None)
                break
            else:
                stats["lost"] += 1

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    stats[f"job {k}"] = loop.time() - t0
    stats["end"] = max(stats["end"], loop.time())


async def sampler(stats: dict[str, float], limiters: dict) -> None:
    """Every 2 s of virtual time: requests so far, each limiter's window and budget."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(2.0)
        parts = [
            f"{k}: window {r.window:g} s budget {r.budget()}"
            for k, lim in sorted(limiters.items())
            for r in [lim.resources["requests"]]
        ]
        print(
            f"t={loop.time():5.1f} requests {stats['requests']:5.0f} "
            f"429s {stats['429s']:4.0f} | " + "; ".join(parts)
        )


def simulate(rows: int, seed: int = 0, sample: bool = False) -> dict[str, float]:
    """Run the four jobs; their counts, ``end`` (virtual s) and ``fastest``."""
    loop = virtual_loop()
    settings = EmulatorSettings(requests_per_minute=RPM, window_s=WINDOW_S)
    quota = Quota(settings, clock=loop.time)
    stats = {"requests": 0.0, "429s": 0.0, "lost": 0.0, "end": 0.0}
    limiters: dict[int, RateLimiter] = {}
    if sample:
        loop.create_task(sampler(stats, limiters))

    async def jobs() -> None:
        await asyncio.gather(
            *(job(k, rows, quota, stats, limiters, seed) for k in range(len(STARTS)))
        )

    try:
        loop.run_until_complete(jobs())
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.close()
    n = rows * len(STARTS)
    stats["fastest"] = (n / (RPM * WINDOW_S / 60) - 1) * WINDOW_S + LATENCY_S
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rows", type=int, nargs="?", default=150)
    parser.add_argument("--sample", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="the latencies' jitter")
    args = parser.parse_args()
    t0 = time.perf_counter()
    stats = simulate(args.rows, args.seed, args.sample)
    fastest = stats["fastest"]
    print(
        f"{len(STARTS)} jobs x {args.rows} rows: requests {stats['requests']:.0f}, "
        f"429s {stats['429s']:.0f} ({stats['429s'] / stats['requests']:.1%}), lost "
        f"{stats['lost']:.0f}, wall {stats['end']:.1f} s virtual, about "
        f"{stats['end'] / fastest:.2f}x the fastest schedule ({fastest:.1f} s); "
        + ", ".join(f"{k} {v:.1f} s" for k, v in stats.items() if k.startswith("job"))
        + f" ({time.perf_counter() - t0:.2f} s real)"
    )


if __name__ == "__main__":
    main()
