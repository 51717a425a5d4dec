"""Azure's surfaces side by side: the classic route, the v1 route, the Responses API.

    python benchmarks/surfaces.py            # both scenarios (about a minute)
    python benchmarks/surfaces.py --rows 2000

Scenarios and targets (issue 20's):

- ``routes``: 20,000 rows at latency 0 (concurrency 64) through the classic route
  (``/openai/deployments/NAME/chat/completions``), the v1 route
  (``/openai/v1/chat/completions``) and the Responses API (``/openai/v1/responses``),
  one emulator in its own process, one after the other: rows/s of each at least 0.9x
  the classic route's in the same run, every answer correct and in order.
- ``reasoning``: a reasoning deployment (``gpt-5-mini``) given ``max_tokens=`` (which
  Azure refuses on reasoning models): the run stops with ``UnsupportedParameterError``
  after at most 2 requests for 10,000 rows, as counted by the emulator.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import arithmetic, emulator_process, emulator_stats, verdict

import polars_azurechat as pac
from polars_azurechat.emulator import DEFAULT_API_KEY

DEPLOYMENT = "gpt-4o-mini"


def _config(url: str, surface: str) -> pac.ChatConfig:
    if surface == "classic":
        return pac.ChatConfig(
            azure_endpoint=url, api_key=DEFAULT_API_KEY, deployment=DEPLOYMENT
        )
    return pac.ChatConfig(
        base_url=f"{url}/openai/v1/", api_key=DEFAULT_API_KEY, deployment=DEPLOYMENT
    )


def routes(n: int) -> bool:
    """The same ``n`` rows through each route; rows/s against the classic one."""
    df, expected = arithmetic(n)
    ways: list[tuple[str, str, dict[str, Any]]] = [
        ("classic chat completions", "classic", {}),
        ("v1 chat completions", "v1", {}),
        ("v1 Responses API", "v1", {"api": "responses"}),
    ]
    rates: dict[str, float] = {}
    ok = True
    print(
        f"\n## routes: {n} rows, latency 0, concurrency 64 (emulator in its own process)"
    )
    print(f"{'way':28} {'wall s':>8} {'rows/s':>8} {'requests':>9}  routes  correct")
    with emulator_process(latency_ms=0) as url:
        warm = arithmetic(200)[0]  # the first job of a process pays imports
        with pac.Completer(config=_config(url, "classic"), max_tokens=10) as job:
            warm.with_columns(answer=job.expr("messages"))
        for label, surface, kw in ways:
            emulator_stats(url, reset=True)
            with pac.Completer(
                config=_config(url, surface),
                max_tokens=16,
                max_concurrency=64,
                progress=False,
                **kw,
            ) as job:
                t0 = time.perf_counter()
                out = df.with_columns(answer=job.expr("messages"))
                wall = time.perf_counter() - t0
            stats = emulator_stats(url)
            correct = out["answer"].to_list() == expected
            rates[label] = n / wall
            print(
                f"{label:28} {wall:8.2f} {n / wall:8.0f} {stats['requests']:9}  "
                f"{stats.get('routes', {})}  {correct}",
                flush=True,
            )
            ok &= correct
    classic = rates["classic chat completions"]
    for label in ("v1 chat completions", "v1 Responses API"):
        ratio = rates[label] / classic
        ok &= verdict(f"{label} rows/s / classic", ratio, ">= 0.9", ratio >= 0.9)
    return ok


def reasoning(n: int) -> bool:
    """``max_tokens`` to a reasoning deployment: how many requests before the stop."""
    df, _ = arithmetic(n)
    print(f"\n## reasoning: {n} rows to gpt-5-mini with max_tokens=10")
    reasons = json.dumps({"gpt-5-mini": {"model": "gpt-5-mini"}})
    with emulator_process(latency_ms=0, per_deployment=reasons) as url:
        emulator_stats(url, reset=True)
        config = pac.ChatConfig(
            azure_endpoint=url, api_key=DEFAULT_API_KEY, deployment="gpt-5-mini"
        )
        raised: BaseException | None = None
        with pac.Completer(config=config, max_tokens=10, progress=False) as job:
            try:
                df.with_columns(answer=job.expr("messages"))
            except Exception as exc:
                raised = exc
            error = job.last_error
        stats = emulator_stats(url)
    print(f"raised: {type(error).__name__}: {str(error or raised).splitlines()[0]}")
    print(f"requests counted by the emulator: {stats['requests']} {stats['statuses']}")
    ok = verdict(
        "stopped with UnsupportedParameterError",
        float(isinstance(error, pac.UnsupportedParameterError)),
        "1",
        isinstance(error, pac.UnsupportedParameterError),
    )
    return ok & verdict(
        "requests sent for the refused parameter",
        stats["requests"],
        "<= 2",
        stats["requests"] <= 2,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--reasoning-rows", type=int, default=10_000)
    args = parser.parse_args()
    ok = routes(args.rows)
    ok &= reasoning(args.reasoning_rows)
    print(f"\n## summary\nsurfaces  {'MET' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
