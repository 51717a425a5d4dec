"""Scale run: Parquet in, Parquet out through the CLI at 10k / 100k (/ 1M) rows.

    python benchmarks/scale.py            # 10k and 100k rows
    python benchmarks/scale.py --with-1m  # and 1M rows (about 5 minutes)

The emulator runs in its own process at latency 0 with no quota, so the client is what is
measured. Each size runs ``polars-azurechat run`` in a fresh process that reports its own
peak RSS. Targets (issue 5): rows/s at the largest size within 15% of rows/s at 10k; peak
RSS at 1M <= 1.5x that at 100k and under 1 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
from bench import emulator_process

from polars_azurechat.emulator import DEFAULT_API_KEY

CHILD = """
import json, resource, sys, time
from polars_azurechat.cli import app
t0 = time.perf_counter()
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    wall = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall": wall, "rss_mb": rss_mb}), file=sys.stderr)
"""


MAKE_INPUT = """
import sys
import polars as pl
n, path = int(sys.argv[1]), sys.argv[2]
system = "You are a calculator. Answer with the number only."
pl.DataFrame({"id": pl.int_range(n, eager=True)}).with_columns(
    messages=pl.concat_list(
        pl.struct(role=pl.lit("system"), content=pl.lit(system)),
        pl.struct(
            role=pl.lit("user"),
            content=pl.format("What is {} + {}?", pl.col("id"), pl.col("id") % 97),
        ),
    )
).write_parquet(path, row_group_size=50_000)
"""


def make_input(path: Path, n: int) -> None:
    # in its own process, so that no child inherits the parent's memory at fork
    subprocess.run([sys.executable, "-c", MAKE_INPUT, str(n), str(path)], check=True)


def run_size(url: str, tmp: Path, n: int) -> dict[str, float]:
    src, dst = tmp / f"in_{n}.parquet", tmp / f"out_{n}.parquet"
    make_input(src, n)
    env_args = [
        "run",
        str(src),
        str(dst),
        "--column",
        "messages",
        "--max-tokens",
        "20",
        "--max-concurrency",
        "64",
        "--no-progress",
        "--overwrite",
    ]
    env = {
        "AZURE_OPENAI_ENDPOINT": url,
        "AZURE_OPENAI_API_KEY": DEFAULT_API_KEY,
        "AZURE_OPENAI_DEPLOYMENT": "gpt-4o-mini",
        "PATH": "/usr/bin:/bin",
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *env_args],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    out = pl.scan_parquet(dst)
    checked = out.select(
        n=pl.len(),
        ok=(
            pl.col("answer") == (pl.col("id") + pl.col("id") % 97).cast(pl.String)
        ).sum(),
    ).collect()
    assert checked["n"][0] == n, checked
    assert checked["ok"][0] == n, checked
    report["rows_per_s"] = n / report["wall"]
    report["total_s"] = time.perf_counter() - t0
    return report


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--with-1m", action="store_true")
    args = parser.parse_args()
    sizes = [10_000, 100_000] + ([1_000_000] if args.with_1m else [])
    rows = {}
    with tempfile.TemporaryDirectory() as d, emulator_process() as url:
        for n in sizes:
            rows[n] = run_size(url, Path(d), n)
            r = rows[n]
            print(
                f"{n:>9,} rows: wall {r['wall']:7.1f} s  {r['rows_per_s']:7,.0f} rows/s  "
                f"peak RSS {r['rss_mb']:6.0f} MB  (all answers checked)",
                flush=True,
            )
    big = max(sizes)
    ratio = rows[big]["rows_per_s"] / rows[10_000]["rows_per_s"]
    ok = ratio >= 0.85
    print(
        f"target rows/s at {big:,} within 15% of 10k: {ratio:.2f} -> {'MET' if ok else 'MISSED'}"
    )
    if 1_000_000 in rows:
        rss = rows[1_000_000]["rss_mb"] / rows[100_000]["rss_mb"]
        ok_rss = rss <= 1.5 and rows[1_000_000]["rss_mb"] < 1024
        print(
            f"target peak RSS 1M <= 1.5x 100k and < 1 GB: {rss:.2f}x -> {'MET' if ok_rss else 'MISSED'}"
        )
        ok &= ok_rss
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
