"""A held cache lock: another process holds the SQLite write lock while a job runs.

    python benchmarks/cache_lock.py              # 100 rows, lock held 8 s
    python benchmarks/cache_lock.py --rows 1000 --hold 3

A child process opens the job's cache file and holds ``BEGIN EXCLUSIVE`` for
``--hold`` seconds; meanwhile a job answers ``--rows`` rows against the emulator
(in this process, 20 ms latency, concurrency 32); the job opens its cache
before the lock is taken (opening a locked file waits 5 s, then is refused). Printed: the job's wall time (its
``run`` call), the time until ``close()`` returned, and the answers the cache file
holds afterwards (read by a fresh connection).
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import polars_azurechat as pac
from polars_azurechat.emulator import Emulator

HOLDER = textwrap.dedent(
    """
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    db.execute("COMMIT")
    """
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--hold", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Emulator(latency_ms=20) as emu:
        path = Path(tmp) / "answers.sqlite"
        questions = [f"What is {i} + 1?" for i in range(args.rows)]
        config = pac.ChatConfig(
            azure_endpoint=emu.url, api_key=emu.api_key, deployment="gpt-4o-mini"
        )
        job = pac.Completer(
            config=config, cache=path, max_concurrency=32, progress=False
        )
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path), str(args.hold)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        started = time.perf_counter()
        answers = job.run(questions)
        ran = time.perf_counter() - started
        summary = job.summary()
        job.close()
        closed = time.perf_counter() - started
        holder.wait()
        with contextlib.closing(sqlite3.connect(path)) as db:
            kept = db.execute("SELECT count(*) FROM answers").fetchone()[0]
        right = sum(a == str(i + 1) for i, a in enumerate(answers))
        print(f"rows {args.rows}, lock held {args.hold:g} s by another process")
        print(f"run:    {ran:.2f} s ({right} right answers)")
        print(f"close:  {closed:.2f} s after the start")
        print(f"kept:   {kept} of {args.rows} answers in the cache file")
        print(summary)


if __name__ == "__main__":
    main()
