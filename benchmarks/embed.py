"""Benchmark embeddings and the use of their vectors against issue 21's targets.

    python benchmarks/embed.py                 # every scenario (about a minute)
    python benchmarks/embed.py --only topk     # some of them
    python benchmarks/embed.py --quick         # smoke test (figures NOT the real ones)

Scenarios, each printing its figures, its target and whether it was met:

- ``throughput``: 100,000 distinct short texts at latency 0, ``dimensions=256``,
  the emulator in its own process: texts/s of ``pac.embed`` (the expression, over a
  DataFrame, building its job each round) at least 0.9x those of a bare aiohttp
  client that packs the same batches (2,048 texts a request, the same concurrency,
  ``encoding_format="base64"``, decoded into one float32 buffer), in the same run;
  rounds alternate, the best of each way is compared; both must return the same
  vectors. Client CPU per text (user + sys of this process, every thread) printed.
- ``topk``: 1,000,000 random unit 256-d float32 vectors in an ``Array(Float32, 256)``
  column: ``pac.top_k`` (cosine, top 10) for one query, best of 3, under 1 s; the
  rows checked against numpy's full sort.
- ``memory``: ``polars-azurechat embed`` (a child process, ``--dimensions 64``)
  on a 100,000-row and a 1,000,000-row Parquet of distinct short texts, the emulator
  in its own process at latency 0; the child's RSS sampled every 0.2 s: the peak on
  1,000,000 rows within 1.5x that on 100,000; both outputs checked (every row a
  vector, none failed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import emulator_process, emulator_stats, verdict

import polars_azurechat as pac
from polars_azurechat.emulator import DEFAULT_API_KEY

DEPLOYMENT = "text-embedding-3-small"
API_VERSION = "2024-10-21"
DIMENSIONS = 256
PACK = 2048  # Azure's inputs per request, the package's default
CONCURRENCY = 16
QUICK = False

WORDS = [
    "invoice",
    "refund",
    "login",
    "export",
    "crash",
    "sync",
    "report",
    "dark",
    "mode",
    "search",
    "api",
    "card",
]


def size(full: int, quick: int) -> int:
    return quick if QUICK else full


def texts(n: int) -> list[str]:
    """``n`` distinct short texts (a few words and a number: 10-12 tokens)."""
    w = len(WORDS)
    return [
        f"ticket {i}: the {WORDS[i % w]} {WORDS[(i // w) % w]} fails again"
        for i in range(n)
    ]


def run_embed(url: str, items: list[str]) -> np.ndarray:
    cfg = pac.ChatConfig(azure_endpoint=url, api_key=DEFAULT_API_KEY)
    out = pl.DataFrame({"text": items}).select(
        pac.embed(
            "text",
            deployment=DEPLOYMENT,
            dimensions=DIMENSIONS,
            config=cfg,
            max_concurrency=CONCURRENCY,
            progress=False,
        )
    )
    return out["text"].to_numpy()


def run_bare_aiohttp(url: str, items: list[str]) -> np.ndarray:
    """The client-side limit: the same packs, no retries, no limiter, no cache, no Polars."""
    endpoint = (
        f"{url}/openai/deployments/{DEPLOYMENT}/embeddings?api-version={API_VERSION}"
    )
    packs = [items[i : i + PACK] for i in range(0, len(items), PACK)]

    async def go() -> list[bytes]:
        sem = asyncio.Semaphore(CONCURRENCY)
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(
            connector=connector, headers={"api-key": DEFAULT_API_KEY}
        ) as session:

            async def one(pack: list[str]) -> bytes:
                body = {
                    "input": pack,
                    "dimensions": DIMENSIONS,
                    "encoding_format": "base64",
                }
                async with sem, session.post(endpoint, json=body) as resp:
                    data = (await resp.json())["data"]
                    data.sort(key=lambda d: d["index"])
                    return b"".join(base64.b64decode(d["embedding"]) for d in data)

            return list(await asyncio.gather(*(one(p) for p in packs)))

    buffer = b"".join(asyncio.run(go()))
    return np.frombuffer(buffer, dtype="<f4").reshape(len(items), DIMENSIONS)


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, float, np.ndarray]:
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return wall, cpu, result


def throughput() -> bool:
    n, rounds = size(100_000, 10_000), size(3, 2)
    items = texts(n)
    ways: dict[str, Callable[[str, list[str]], np.ndarray]] = {
        "bare aiohttp (same packs)": run_bare_aiohttp,
        "pac.embed()": run_embed,
    }
    print(
        f"\n## throughput: {n:,} short texts, latency 0, dimensions {DIMENSIONS}, "
        f"{PACK} a request, concurrency {CONCURRENCY} ({rounds} alternating rounds)"
    )
    print(
        f"{'way':30} {'wall s':>8} {'texts/s':>9} {'CPU us/text':>12} {'requests':>9}"
    )
    best: dict[str, float] = {}
    cpu_best: dict[str, float] = {}
    results: dict[str, np.ndarray] = {}
    with emulator_process() as url:
        run_embed(url, items[:500])  # warm imports and first-use costs
        run_bare_aiohttp(url, items[:500])
        for r in range(rounds):
            for name, way in ways.items():
                emulator_stats(url, reset=True)
                wall, cpu, vectors = timed(lambda way=way: way(url, items))
                requests = sum(emulator_stats(url)["embeddings"]["routes"].values())
                print(
                    f"{name + f' #{r + 1}':30} {wall:8.3f} {n / wall:9.0f} "
                    f"{1e6 * cpu / n:12.1f} {requests:9d}",
                    flush=True,
                )
                best[name] = max(best.get(name, 0.0), n / wall)
                cpu_best[name] = min(cpu_best.get(name, math.inf), cpu / n)
                results[name] = vectors
    ours, bare = best["pac.embed()"], best["bare aiohttp (same packs)"]
    same = np.array_equal(results["pac.embed()"], results["bare aiohttp (same packs)"])
    print(
        f"best texts/s: pac.embed() {ours:,.0f}, bare aiohttp {bare:,.0f}; "
        f"client CPU per text: pac.embed() {1e6 * cpu_best['pac.embed()']:.1f} us, "
        f"bare aiohttp {1e6 * cpu_best['bare aiohttp (same packs)']:.1f} us; "
        f"same vectors: {same}"
    )
    return verdict(
        "texts/s pac.embed() / bare aiohttp, same vectors",
        ours / bare,
        ">= 0.9",
        ours / bare >= 0.9 and same,
    )


def topk() -> bool:
    n, d, k = size(1_000_000, 100_000), 256, 10
    rng = np.random.default_rng(21)
    t0 = time.perf_counter()
    m = rng.standard_normal((n, d), dtype=np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    df = pl.DataFrame(
        {"id": np.arange(n), "v": pl.Series(m, dtype=pl.Array(pl.Float32, d))}
    )
    query = rng.standard_normal(d)
    print(
        f"\n## topk: top {k} by cosine over {n:,} unit {d}-d float32 vectors "
        f"({n * d * 4 / 1e9:.2f} GB; built in {time.perf_counter() - t0:.1f} s)"
    )
    walls = []
    out = pl.DataFrame()
    for r in range(3):
        t0 = time.perf_counter()
        out = pac.top_k(df, "v", query, k=k)
        walls.append(time.perf_counter() - t0)
        print(f"top_k #{r + 1}: {walls[-1]:.3f} s", flush=True)
    t0 = time.perf_counter()
    pac.cosine_similarity(df["v"], query)
    print(
        f"cosine_similarity alone (a Series of {n:,}): {time.perf_counter() - t0:.3f} s"
    )
    want = np.argsort(-(m @ (query / np.linalg.norm(query)).astype(np.float32)))[:k]
    right = out["id"].to_list() == want.tolist()
    print(f"best {min(walls):.3f} s; rows as numpy's full sort: {right}")
    return verdict(
        "top-10 wall s (best of 3), right rows",
        min(walls),
        "< 1 s",
        min(walls) < 1.0 and right,
    )


def rss_bytes(pid: int) -> int:
    """The resident memory of process ``pid`` (psutil if installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0
    return int(psutil.Process(pid).memory_info().rss)


def embed_cli_peak(url: str, src: Path, out: Path) -> tuple[float, int]:
    """Run ``polars-azurechat embed`` on ``src``; its wall time and peak RSS."""
    env = {
        **os.environ,
        "AZURE_OPENAI_ENDPOINT": url,
        "AZURE_OPENAI_API_KEY": DEFAULT_API_KEY,
        "OPENAI_API_VERSION": API_VERSION,
    }
    args = [
        *(sys.executable, "-m", "polars_azurechat", "embed", str(src), str(out)),
        *("--column", "text", "--deployment", DEPLOYMENT, "--dimensions", "64"),
        *("--max-concurrency", str(CONCURRENCY), "--no-progress", "--overwrite"),
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, rss_bytes(proc.pid))
        except (OSError, ValueError, LookupError):  # it ended between poll and read
            break
        time.sleep(0.2)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"embed failed ({proc.returncode}): {err.decode()[-2000:]}")
    return time.perf_counter() - t0, peak


def memory() -> bool:
    small, big = size(100_000, 10_000), size(1_000_000, 100_000)
    print(
        f"\n## memory: peak RSS of `polars-azurechat embed` (child process, "
        f"--dimensions 64, latency 0) on {big:,} vs {small:,} rows, sampled every 0.2 s"
    )
    print(
        f"{'rows':>10} {'wall s':>8} {'peak RSS MB':>12} {'vectors':>10} {'failed':>7}"
    )
    peaks: dict[int, int] = {}
    ok = True
    with tempfile.TemporaryDirectory() as tmp, emulator_process() as url:
        for n in (small, big):
            src, out = Path(tmp) / f"in{n}.parquet", Path(tmp) / f"out{n}.parquet"
            pl.DataFrame({"i": range(n), "text": texts(n)}).write_parquet(src)
            wall, peak = embed_cli_peak(url, src, out)
            got = pl.scan_parquet(out).select(
                pl.len(),
                pl.col("embedding").is_not_null().sum(),
                pl.col("embedding_error").is_not_null().sum(),
            )
            rows, vectors, failed = got.collect().row(0)
            ok = ok and rows == n and vectors == n and failed == 0
            peaks[n] = peak
            print(
                f"{n:10,} {wall:8.1f} {peak / 2**20:12.1f} {vectors:10,} {failed:7,}",
                flush=True,
            )
    ratio = peaks[big] / peaks[small]
    return verdict(
        f"peak RSS {big:,} rows / {small:,} rows, every row a vector",
        ratio,
        "<= 1.5",
        ratio <= 1.5 and ok,
    )


SCENARIOS: dict[str, Callable[[], bool]] = {
    "throughput": throughput,
    "topk": topk,
    "memory": memory,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", nargs="*", choices=sorted(SCENARIOS), default=list(SCENARIOS)
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes: a smoke test"
    )
    args = parser.parse_args()
    global QUICK
    QUICK = args.quick
    banner = "QUICK MODE: smaller sizes; smoke-test figures, NOT the real benchmark"
    if QUICK:
        print(f"## {banner}")
    results: dict[str, Any] = {name: SCENARIOS[name]() for name in args.only}
    print("\n## summary" + (f" ({banner})" if QUICK else ""))
    for name, ok in results.items():
        label = "all targets met" if ok else "target missed"
        print(f"{name:10} {label}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
