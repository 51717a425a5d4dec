"""Benchmark the Spark adapter against the Ray adapter and the plain Polars expression.

    python benchmarks/spark.py            # 20,000 rows (about a minute)
    python benchmarks/spark.py --quick    # 2,000 rows: smoke test (figures NOT the real ones)

Needs ``pip install "polars-azurechat[spark,ray]"`` and Java 17. The emulator runs in
its own process at latency 0, so what is measured is the client side: 20,000 distinct
rows (``What is i + 7?``), ``max_tokens=5``, answered three ways, each ending with every
answer in the driver as Arrow/Polars and checked against its row:

1. ``pl.DataFrame.with_columns(pac.complete(...))`` in this process (one job, one
   event loop, concurrency 64);
2. ``polars_azurechat.ray.complete`` on a local Ray with 2 workers (batches of 5,000
   rows), collected with ``to_arrow_refs``;
3. ``polars_azurechat.spark.complete`` on a local Spark (``local[2]``: two Python
   workers, 4 partitions), collected with ``toArrow()``.

Ray and Spark are started before the clock (``ray.init``, the SparkSession); each way
runs twice and the better run counts (the first run of a distributed way starts its
Python workers and builds their jobs). It prints wall time and rows/s of each, and
the ratios of Spark to each baseline. The machine's cores are shared by the emulator,
the driver and the two workers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import polars as pl
from bench import emulator_process

import polars_azurechat as pac
from polars_azurechat.emulator import DEFAULT_API_KEY

DEPLOYMENT = "gpt-4o-mini"
ADD = 7


def config(url: str) -> pac.ChatConfig:
    return pac.ChatConfig(
        azure_endpoint=url, api_key=DEFAULT_API_KEY, deployment=DEPLOYMENT
    )


def frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({"id": range(n)}).with_columns(
        q=pl.format("What is {} + " + str(ADD) + "?", pl.col("id"))
    )


def check(out: pl.DataFrame, n: int, label: str) -> None:
    if out.height != n:
        raise AssertionError(f"{label}: {out.height} rows, not {n}")
    wrong = out.filter(pl.col("answer") != (pl.col("id") + ADD).cast(pl.String))
    if wrong.height:
        raise AssertionError(
            f"{label}: {wrong.height} rows misaligned: {wrong.head(3)}"
        )


def run_polars(url: str, df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(
        answer=pac.complete("q", config=config(url), max_tokens=5, progress=False)
    )


def make_ray(url: str, df: pl.DataFrame) -> Callable[[], pl.DataFrame]:
    import ray

    import polars_azurechat.ray as pac_ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    table = df.to_arrow(compat_level=pl.CompatLevel.oldest())

    def run() -> pl.DataFrame:
        import pyarrow as pa

        ds = pac_ray.complete(
            ray.data.from_arrow(table),
            column="q",
            config=config(url),
            workers=2,
            batch_size=5000,
            max_tokens=5,
        )
        out = pa.concat_tables(ray.get(ds.to_arrow_refs()))
        return pl.DataFrame(pl.from_arrow(out)).select("id", "q", "answer")

    return run


def make_spark(url: str, df: pl.DataFrame) -> Callable[[], pl.DataFrame]:
    from pyspark.sql import SparkSession

    import polars_azurechat.spark as pac_spark

    spark = (
        SparkSession.builder.master("local[2]")
        .appName("polars-azurechat-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    arrow = df.to_arrow(compat_level=pl.CompatLevel.oldest())
    sdf = spark.createDataFrame(arrow).repartition(4).cache()
    sdf.count()  # the input in Spark's memory before the clock

    def run() -> pl.DataFrame:
        out = pac_spark.complete(
            sdf,
            column="q",
            config=config(url),
            max_tokens=5,
            concurrent_tasks=1,  # no quota given: nothing to share out
        )
        return pl.DataFrame(pl.from_arrow(out.toArrow())).select("id", "q", "answer")

    return run


def best_of(
    label: str, n: int, run: Callable[[], pl.DataFrame], repeats: int = 2
) -> float:
    best = float("inf")
    for i in range(repeats):
        t0 = time.perf_counter()
        out = run()
        wall = time.perf_counter() - t0
        check(out, n, label)
        print(f"  {label:<28} run {i + 1}: {wall:6.2f} s  {n / wall:9,.0f} rows/s")
        best = min(best, wall)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 2000 if args.quick else 20_000
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings(
        "ignore", message="PySpark does not yet fully support pandas"
    )
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    df = frame(n)
    walls: dict[str, float] = {}
    print(f"{n:,} rows, latency 0, max_tokens=5 (the emulator in its own process)")
    with emulator_process(latency_ms=0) as url:
        walls["Polars expression (1 proc)"] = best_of(
            "Polars expression (1 proc)", n, lambda: run_polars(url, df)
        )
        try:
            ray_run = make_ray(url, df)
        except ImportError:
            print("  Ray: not installed (pip install 'polars-azurechat[ray]'): skipped")
        else:
            walls["Ray adapter (2 workers)"] = best_of(
                "Ray adapter (2 workers)", n, ray_run
            )
            import ray

            ray.shutdown()
        spark_run = make_spark(url, df)
        walls["Spark adapter (local[2])"] = best_of(
            "Spark adapter (local[2])", n, spark_run
        )
    print()
    print(f"{'way':<28} {'wall s':>8} {'rows/s':>10}")
    for label, wall in walls.items():
        print(f"{label:<28} {wall:8.2f} {n / wall:10,.0f}")
    spark_rate = n / walls["Spark adapter (local[2])"]
    for label, wall in walls.items():
        if not label.startswith("Spark"):
            print(f"Spark / {label}: {spark_rate / (n / wall):.2f}x rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
