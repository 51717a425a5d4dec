"""Pool benchmark: several deployments, one going down, priority tiers, Entra ID tokens.

    python benchmarks/pool.py                    # every scenario (about 2 minutes)
    python benchmarks/pool.py --only three down

The emulator runs in its own process (200 ms latency, each deployment its own quota of
requests per sliding 10 s); every scenario gets a fresh one. The client is a
``Completer`` given ``deployments=[...]`` with each deployment's quota, and
``max_concurrency=100``.

Scenarios and targets (issue 9's):

- ``three``: deployments of 1,200 / 600 / 600 requests per minute, 1,200 rows: wall at
  most 1.1x the fastest schedule the three quotas allow, 429s at most 2% of requests;
- ``down``: the same, with the 1,200-RPM deployment answering only 503 from the fifth
  second on: 0 rows failed, wall at most 1.3x the fastest schedule of the capacity left;
- ``priority``: a priority-0 and a priority-1 deployment of 600 RPM each, 90 rows: the
  priority-1 deployment receives no request (90 fit in the first's 10-s window of 100);
- ``entra``: key authentication off, Entra ID tokens that live 3 s from a token
  provider, a 15-s run (300 rows under 1,200 requests per minute enforced per second,
  50 ms latency; emulator in-process, to issue the tokens): 0 rows failed, the provider
  called at least 4 times, no token in any log line at DEBUG.

The fastest schedule is computed from the server's rules, not measured: requests go in
row order, each at the earliest instant when one of the 100 concurrency slots is free
(a slot is busy for one latency) and some deployment that is up has room in its sliding
window; the job ends one latency after its last admission.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import arithmetic, emulator_process, emulator_stats, verdict

import polars_azurechat as pac
from polars_azurechat.emulator import DEFAULT_API_KEY, Emulator

LATENCY_S = 0.2
WINDOW_S = 10.0
CONCURRENCY = 100


def fastest_schedule(
    n: int,
    quotas: dict[str, float],
    down_at: dict[str, float] | None = None,
    latency: float = LATENCY_S,
    window: float = WINDOW_S,
    slots: int = CONCURRENCY,
) -> float:
    """Seconds the best client would need for ``n`` rows (see the module docstring)."""
    down_at = down_at or {}
    budgets = {d: max(1, int(q * window / 60 + 1e-9)) for d, q in quotas.items()}
    admitted: dict[str, list[float]] = {d: [] for d in quotas}
    free = [0.0] * slots  # when each slot frees
    t = 0.0
    for _ in range(n):
        free.sort()
        t = max(t, free[0])
        while True:
            best = None
            for d, times in admitted.items():
                if t >= down_at.get(d, float("inf")):
                    continue
                inside = [x for x in times if x > t - window]
                if len(inside) < budgets[d]:
                    best = d
                    break
            if best is not None:
                break
            # next instant a window frees room on a deployment that is still up
            nxt = min(
                min(x for x in times if x > t - window) + window
                for d, times in admitted.items()
                if t < down_at.get(d, float("inf"))
            )
            t = max(t, nxt + 1e-9)  # past the instant the oldest leaves
        admitted[best].append(t)
        free[0] = t + latency
    return t + latency


def run_pool(
    n: int,
    quotas: dict[str, float],
    priorities: dict[str, int] | None = None,
    per_deployment: dict[str, dict[str, float]] | None = None,
) -> tuple[float, dict, pac.RunSummary, bool]:
    priorities = priorities or {}
    per = {
        d: {"requests_per_minute": q, **(per_deployment or {}).get(d, {})}
        for d, q in quotas.items()
    }
    df, expected = arithmetic(n)
    with emulator_process(
        latency_ms=LATENCY_S * 1000, window_s=WINDOW_S, per_deployment=json.dumps(per)
    ) as url:
        config = pac.ChatConfig(azure_endpoint=url, api_key=DEFAULT_API_KEY)
        pool = [
            pac.Deployment(name=d, requests_per_minute=q, priority=priorities.get(d, 0))
            for d, q in quotas.items()
        ]
        emulator_stats(url, reset=True)  # down_after_s counts from here
        with pac.Completer(
            config=config,
            deployments=pool,
            max_tokens=10,
            max_concurrency=CONCURRENCY,
            progress=False,
        ) as job:
            t0 = time.perf_counter()
            out = df.with_columns(answer=job.expr("messages"))
            wall = time.perf_counter() - t0
            summary = job.summary()
        stats = emulator_stats(url)
    return wall, stats, summary, out["answer"].to_list() == expected


def show(label: str, wall: float, fastest: float, stats: dict) -> None:
    n429 = stats["statuses"].get("429", 0)
    print(
        f"{label:10} requests {stats['requests']:5}  429s {n429:4} "
        f"({n429 / max(1, stats['requests']):.1%})  wall {wall:6.2f} s  "
        f"fastest {fastest:6.2f} s  ratio {wall / fastest:.3f}"
    )
    for d, s in stats["deployments"].items():
        print(f"    {d:8} {s['requests']:5} requests  {s['statuses']}")


def three() -> bool:
    quotas = {"ptu": 1200.0, "east": 600.0, "west": 600.0}
    fastest = fastest_schedule(1200, quotas)
    wall, stats, _summary, correct = run_pool(1200, quotas)
    show("three", wall, fastest, stats)
    n429 = stats["statuses"].get("429", 0)
    ok = verdict(
        "three: wall / fastest", wall / fastest, "<= 1.1", wall / fastest <= 1.1
    )
    ok &= verdict(
        "three: 429s / requests",
        n429 / stats["requests"],
        "<= 0.02",
        n429 <= 0.02 * stats["requests"],
    )
    return ok & verdict("three: every row right", float(correct), "1", correct)


def down() -> bool:
    quotas = {"ptu": 1200.0, "east": 600.0, "west": 600.0}
    fastest = fastest_schedule(1200, quotas, down_at={"ptu": 5.0})
    wall, stats, summary, correct = run_pool(
        1200, quotas, per_deployment={"ptu": {"down_after_s": 5.0}}
    )
    show("down", wall, fastest, stats)
    print(
        f"    failed rows: {summary.failed}; circuits: "
        f"{ {d: v['circuit'] for d, v in summary.deployments.items()} }"
    )
    ok = verdict("down: rows failed", summary.failed, "0", summary.failed == 0)
    ok &= verdict(
        "down: wall / fastest", wall / fastest, "<= 1.3", wall / fastest <= 1.3
    )
    return ok & verdict("down: every row right", float(correct), "1", correct)


def priority() -> bool:
    quotas = {"first": 600.0, "second": 600.0}
    fastest = fastest_schedule(90, {"first": 600.0})
    wall, stats, _summary, correct = run_pool(90, quotas, priorities={"second": 1})
    show("priority", wall, fastest, stats)
    second = stats["deployments"].get("second", {}).get("requests", 0)
    ok = verdict("priority: requests to tier 1", second, "0", second == 0)
    return ok & verdict("priority: every row right", float(correct), "1", correct)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def entra() -> bool:
    n = 300
    df, expected = arithmetic(n)
    handler = _Lines()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    issued: list[str] = []
    try:
        with Emulator(
            key_auth=False,
            latency_ms=50,
            requests_per_minute=1200,
            request_window_s=1.0,
        ) as emu:

            def provider() -> str:
                issued.append(emu.issue_token(ttl_s=3.0))
                return issued[-1]

            config = pac.ChatConfig(
                azure_endpoint=emu.url, azure_ad_token_provider=provider
            )
            with pac.Completer(
                config=config,
                deployment="gpt-4o-mini",
                max_tokens=10,
                requests_per_minute=1200,
                progress=False,
            ) as job:
                t0 = time.perf_counter()
                out = df.with_columns(answer=job.expr("messages"))
                wall = time.perf_counter() - t0
                summary = job.summary()
            stats = emu.stats()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    leaked = sum(any(tok in line for tok in issued) for line in handler.lines)
    print(
        f"entra      requests {stats['requests']:5}  statuses {stats['statuses']}  "
        f"wall {wall:6.2f} s  provider calls {len(issued)}  log lines {len(handler.lines)}"
        f"  lines with a token {leaked}"
    )
    correct = out["answer"].to_list() == expected
    ok = verdict("entra: rows failed", summary.failed, "0", summary.failed == 0)
    ok &= verdict("entra: run length (s)", wall, ">= 12", wall >= 12)
    ok &= verdict("entra: provider calls", len(issued), ">= 4", len(issued) >= 4)
    ok &= verdict("entra: log lines with a token", leaked, "0", leaked == 0)
    return ok & verdict("entra: every row right", float(correct), "1", correct)


SCENARIOS: dict[str, Callable[[], bool]] = {
    "three": three,
    "down": down,
    "priority": priority,
    "entra": entra,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", nargs="*", choices=sorted(SCENARIOS), default=list(SCENARIOS)
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    results = {name: SCENARIOS[name]() for name in args.only}
    print("\n## summary")
    for name, ok in results.items():
        print(f"{name:10} {'MET' if ok else 'MISSED'}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
