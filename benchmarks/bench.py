"""Benchmark chat.complete() against its baselines on the emulator, in one run.

    python benchmarks/bench.py            # the 100-question demo (issue 2)

The emulator runs in its own process (so it never competes with the client for the GIL),
with ~186 ms latency: the average the original parallel-requests demo measured. The 100
questions of data/questions.parquet are sent three ways:

1. sequentially with the openai SDK (the original demo's "one by one": 18.6 s);
2. seed-style: ThreadPoolExecutor + Semaphore(rate_limit) + tenacity + the SDK, as the
   original parallel-requests handler does it (2.6 s in its README);
3. ``pl.col("messages").chat.complete()``.

It prints wall time, rows/s, the ratios and whether every answer is correct and aligned.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import polars as pl
import tenacity

import polars_azurechat  # noqa: F401  (registers .chat)
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import DEFAULT_API_KEY

ROOT = Path(__file__).resolve().parents[1]
API_VERSION = "2024-10-21"
DEPLOYMENT = "gpt-4o-mini"


@contextlib.contextmanager
def emulator_process(**flags: Any) -> Iterator[str]:
    """Start ``polars-azurechat emulator`` in a subprocess; yield its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [sys.executable, "-m", "polars_azurechat", "emulator", "--port", str(port)]
    for k, v in flags.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/stats", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("emulator did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait()


def emulator_stats(url: str, reset: bool = False) -> dict[str, Any]:
    if reset:
        req = urllib.request.Request(url + "/stats/reset", method="POST")
        urllib.request.urlopen(req).close()
    with urllib.request.urlopen(url + "/stats") as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def sdk_client(url: str) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=url,
        api_key=DEFAULT_API_KEY,
        api_version=API_VERSION,
        max_retries=0,
    )


def run_sequential(url: str, messages: list[Any], max_tokens: int) -> list[str | None]:
    client = sdk_client(url)
    out = []
    for m in messages:
        r = client.chat.completions.create(
            model=DEPLOYMENT, messages=m, max_tokens=max_tokens
        )
        out.append(r.choices[0].message.content)
    return out


def run_seed_style(
    url: str, messages: list[Any], max_tokens: int, rate_limit: int = 100
) -> list[str | None]:
    """The original handler's design: pool + semaphore + tenacity around the SDK."""
    client = sdk_client(url)
    semaphore = threading.Semaphore(rate_limit)

    @tenacity.retry(
        wait=tenacity.wait_random_exponential(min=1, max=20),
        stop=tenacity.stop_after_attempt(6),
        retry_error_callback=lambda state: None,
    )
    def one(m: Any) -> str | None:
        with semaphore:
            r = client.chat.completions.create(
                model=DEPLOYMENT, messages=m, max_tokens=max_tokens
            )
            return r.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(max_workers=rate_limit) as pool:
        return list(pool.map(one, messages))


def run_complete(
    url: str, df: pl.DataFrame, max_tokens: int, max_concurrency: int, **kw: Any
) -> list[str | None]:
    cfg = ChatConfig(azure_endpoint=url, api_key=DEFAULT_API_KEY, deployment=DEPLOYMENT)
    out = df.with_columns(
        answer=pl.col("messages").chat.complete(
            config=cfg, max_tokens=max_tokens, max_concurrency=max_concurrency, **kw
        )
    )
    return out["answer"].to_list()


def timed(fn: Callable[[], list[str | None]]) -> tuple[float, float, list[str | None]]:
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return wall, cpu, result


def demo(latency_ms: float) -> bool:
    df = pl.read_parquet(ROOT / "data" / "questions.parquet")
    messages = df["messages"].to_list()
    expected = df["expected"].to_list()
    n = df.height
    print(f"## demo: {n} questions, emulator latency {latency_ms:.0f} ms (own process)")
    rows = []
    with emulator_process(latency_ms=latency_ms) as url:
        ways: list[tuple[str, Callable[[], list[str | None]]]] = [
            ("sequential SDK", lambda: run_sequential(url, messages, 20)),
            (
                "seed-style pool+semaphore+SDK",
                lambda: run_seed_style(url, messages, 20),
            ),
            ("chat.complete()", lambda: run_complete(url, df, 20, max_concurrency=100)),
        ]
        for name, fn in ways:
            emulator_stats(url, reset=True)
            wall, cpu, answers = timed(fn)
            stats = emulator_stats(url)
            ok = answers == expected
            rows.append((name, wall, cpu, ok, stats))
    seq = rows[0][1]
    print(
        f"{'way':32} {'wall s':>8} {'rows/s':>8} {'x seq':>7} {'CPU ms/req':>11} {'peak':>5}  correct"
    )
    for name, wall, cpu, ok, stats in rows:
        print(
            f"{name:32} {wall:8.3f} {n / wall:8.0f} {seq / wall:7.1f} "
            f"{1000 * cpu / n:11.2f} {stats['peak_in_flight']:5d}  {ok}"
        )
    ours = rows[-1][1]
    target_ok = ours <= 0.4 and seq / ours >= 45 and rows[-1][3]
    print(
        f"target: chat.complete() <= 0.4 s and >= 45x sequential, all correct: "
        f"{ours:.3f} s, {seq / ours:.1f}x -> {'MET' if target_ok else 'MISSED'}"
    )
    print(f"vs seed-style: {rows[1][1] / ours:.1f}x faster")
    return target_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-ms", type=float, default=186.0)
    args = parser.parse_args()
    os.environ.setdefault("POLARS_MAX_THREADS", str(os.cpu_count() or 2))
    ok = demo(args.latency_ms)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
