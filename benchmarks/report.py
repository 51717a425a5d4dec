"""What the run report's sampling costs a run (issue 25 item 4: "costs nothing").

    python benchmarks/report.py            # 20,000 rows, 5 rounds each way
    python benchmarks/report.py --quick    # smoke test (figures NOT the real ones)

One job per round, against the emulator in its own process at latency 0 (the
engine's overhead is all there is to measure): rows/s with the timeline sampled at
the default step (0.25 s) against the same with sampling as good as off (a step
longer than the run: the first and last points only). Rounds alternate, in turn
first; the best of each way is compared. Target: sampled at least 0.97x the unsampled rows/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import emulator_process, verdict

import polars_azurechat as pac
from polars_azurechat.emulator import DEFAULT_API_KEY


def one_round(url: str, prompts: list[str], sample_s: float) -> tuple[float, int]:
    """Rows/s of one job's run, and the points its timeline kept."""
    config = pac.ChatConfig(
        azure_endpoint=url, api_key=DEFAULT_API_KEY, deployment="gpt-4o-mini"
    )
    with pac.Completer(
        config=config, max_tokens=5, max_concurrency=64, progress=False
    ) as job:
        job.engine.runs.sample_s = sample_s
        t0 = time.perf_counter()
        answers = job.run(prompts)
        dt = time.perf_counter() - t0
        timeline = job.summary().timeline
    assert len(answers) == len(prompts)
    assert all(answers)
    return len(prompts) / dt, 0 if timeline is None else len(timeline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, rounds = (2000, 2) if args.quick else (20_000, 5)
    prompts = [f"What is {i} + {i % 97}?" for i in range(n)]
    best = {"sampled": 0.0, "unsampled": 0.0}
    points = {"sampled": 0, "unsampled": 0}
    with emulator_process() as url:
        one_round(url, prompts[:500], 0.25)  # warm up: connections, imports
        ways = [("sampled", 0.25), ("unsampled", 3600.0)]
        for r in range(rounds):  # the order alternates: the first of a pair is slower
            for way, step in ways if r % 2 else ways[::-1]:
                rate, kept = one_round(url, prompts, step)
                best[way] = max(best[way], rate)
                points[way] = kept
    print(
        f"run report sampling: {n:,} rows, latency 0, concurrency 64, best of {rounds}"
    )
    for way in best:
        print(f"  {way:9}: {best[way]:8,.0f} rows/s ({points[way]} timeline points)")
    ratio = best["sampled"] / best["unsampled"]
    print(f"  ratio sampled/unsampled: {ratio:.3f}")
    verdict("sampled/unsampled rows/s", ratio, ">= 0.97", ratio >= 0.97)


if __name__ == "__main__":
    main()
