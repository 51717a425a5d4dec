"""Typed answers against plain text, in one run: what parsing and validation cost.

    python benchmarks/typed.py            # 20,000 rows, 3 alternating rounds
    python benchmarks/typed.py --quick    # 2,000 rows, 2 rounds (smoke test)
    python benchmarks/typed.py --rounds 5 # more rounds (a busy machine is noisy)

20,000 arithmetic prompts at latency 0, concurrency 64, against the emulator in its
own process: ``chat.complete(response_format=Ticket)`` (a pydantic model with a
Literal, an int, a bool and a list: strict json_schema in each request, every answer
parsed and validated by pydantic, the column built as a Struct) against the same
prompts as plain text. Rounds alternate; the best rows/s of each way is compared.
Target: typed >= 0.9x plain text (best round against best round; the median of the
round-by-round ratios is printed too). Every answer is checked (the integer field
holds the sum).

At latency 0 both processes are CPU-bound (on 2 cores they share the machine), so the
wall time follows client plus emulator CPU: the table shows both per request. The
emulator's own extra work for a structured answer (reading the schema from each
request, writing JSON that follows it) is in the typed figure, as Azure's would be.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (
    DEPLOYMENT,
    emulator_process_pid,
    emulator_stats,
    timed,
    verdict,
)

import polars_azurechat  # noqa: F401 - registers the namespace
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import DEFAULT_API_KEY

CONCURRENCY = 64


class Ticket(BaseModel):
    """What the benchmark asks for: one of each common field kind."""

    total: int
    priority: Literal["low", "normal", "high"]
    urgent: bool
    tags: list[str]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(emulator_pid: int) -> tuple[int, int] | None:
    """Give the client and the emulator a CPU each, when there are two or more.

    Left to the scheduler, the two busy processes now and then share one CPU while the
    other idles, and a round's time swings by a quarter; pinned, far less.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None
    if len(cpus) < 2:
        return None
    os.sched_setaffinity(0, {cpus[0]})
    os.sched_setaffinity(emulator_pid, {cpus[1]})
    return cpus[0], cpus[1]


def prompts(n: int) -> tuple[pl.DataFrame, list[int]]:
    """``n`` distinct arithmetic prompts and their sums."""
    a = [i % 997 for i in range(n)]
    b = [i // 997 for i in range(n)]
    df = pl.DataFrame({"q": [f"What is {x} + {y}?" for x, y in zip(a, b, strict=True)]})
    return df, [x + y for x, y in zip(a, b, strict=True)]


def run(url: str, df: pl.DataFrame, **kw: Any) -> pl.Series:
    """The answer column (converted to Python for the check outside the timing)."""
    cfg = ChatConfig(azure_endpoint=url, api_key=DEFAULT_API_KEY, deployment=DEPLOYMENT)
    out = df.select(
        pl.col("q").chat.complete(
            config=cfg, max_tokens=200, max_concurrency=CONCURRENCY, **kw
        )
    )
    return out["q"]


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 rows, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds")
    args = parser.parse_args(argv)
    n, rounds = (2_000, 2) if args.quick else (20_000, 3)
    rounds = args.rounds or rounds
    df, sums = prompts(n)
    expected_text = [str(s) for s in sums]
    ways = {
        "plain text": ({}, lambda out: out == expected_text),
        "response_format=Ticket": (
            {"response_format": Ticket},
            lambda out: [r and r["total"] for r in out] == sums,
        ),
    }
    print(
        f"## typed answers: {n:,} rows, latency 0, concurrency {CONCURRENCY} "
        f"({rounds} alternating rounds)"
    )
    print(
        f"{'way':28} {'wall s':>8} {'rows/s':>8} {'client CPU ms/req':>18} "
        f"{'emulator CPU ms/req':>20}  correct"
    )
    best: dict[str, float] = {}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    client_cpu: dict[str, float] = {}
    ok = True
    with emulator_process_pid() as (url, pid):
        pinned = pin(pid)
        if pinned:
            print(f"(client pinned to CPU {pinned[0]}, emulator to CPU {pinned[1]})")
        for kw, _ in ways.values():  # warm imports and first-use costs (Arrow too)
            run(url, df.head(1_100), **kw)
        for r in range(rounds):
            for name, (kw, check) in ways.items():
                emulator_stats(url, reset=True)
                server0 = process_cpu_s(pid)
                wall, cpu, out = timed(lambda kw=kw: run(url, df, **kw))  # type: ignore[misc]
                server = process_cpu_s(pid) - server0
                requests = max(1, emulator_stats(url)["requests"])
                correct = bool(check(out.to_list()))  # type: ignore[attr-defined]
                ok &= correct
                rate = n / wall
                best[name] = max(best.get(name, 0.0), rate)
                rates[name].append(rate)
                client_cpu[name] = min(client_cpu.get(name, math.inf), cpu / requests)
                print(
                    f"{name + f' #{r + 1}':28} {wall:8.3f} {rate:8.0f} "
                    f"{1000 * cpu / requests:18.3f} {1000 * server / requests:20.3f}  "
                    f"{correct}",
                    flush=True,
                )
    typed, plain = best["response_format=Ticket"], best["plain text"]
    ratio = typed / plain if plain else math.nan
    print(
        f"best rows/s: typed {typed:,.0f}, plain text {plain:,.0f}; ratio {ratio:.2f}"
    )
    # the same ratio round by round: each pair ran back to back, on the machine as it
    # was then (a VM's speed drifts by a fifth over minutes); its median is steadier
    paired = sorted(
        t / p
        for t, p in zip(
            rates["response_format=Ticket"], rates["plain text"], strict=True
        )
    )
    print(
        "round by round: "
        + ", ".join(f"{r:.2f}" for r in paired)
        + f"; median {statistics.median(paired):.2f}"
    )
    print(
        "best client CPU per request: typed "
        f"{1000 * client_cpu['response_format=Ticket']:.3f} ms, plain text "
        f"{1000 * client_cpu['plain text']:.3f} ms"
    )
    return verdict(
        "rows/s typed / plain text, all correct",
        ratio,
        ">= 0.9",
        ratio >= 0.9 and ok,
    )


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
