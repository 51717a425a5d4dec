"""Batch mode against the emulator: 10,000 rows, a split job, a kill -9 and its rerun.

    python benchmarks/batch.py           # 10,000 rows
    python benchmarks/batch.py --quick   # 1,000 rows (smoke test)

The emulator runs in its own process with a fast batch pace (validating 0.2 s, 0.05 ms
a line, finalizing 0.2 s, files processed in 0.1 s). After a warm-up of 20 rows each
way, four runs, each on a fresh cache:

1. ``mode="batch"``: every row must be joined to its own answer (the sum), with zero
   requests to the chat endpoint and one file and one batch (10,000 lines fit one
   file);
2. ``mode="batch", enqueued_tokens_limit=...`` set to hold about a quarter of the
   job: the files the limit requires (4), submitted as earlier ones finish;
3. ``polars-azurechat run --mode batch`` in a child process killed with SIGKILL
   right after its batch is created, then the same command again: the rerun must
   upload nothing and create no batch;
4. online at latency 0 (concurrency 64) for the same rows, to compare the
   client's own work: batch mode gathers the column, writes and uploads the JSONL,
   downloads the output and joins it back; online sends a request per row.

Client CPU is this process's (the emulator's is its own). The batch runs' wall time
is mostly the emulator's pace and the polls (every 0.05 s here).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

import polars_azurechat as pac
from polars_azurechat.emulator import DEFAULT_API_KEY

DEPLOYMENT = "gpt-4o-mini-batch"
SERVER = textwrap.dedent(
    """
    import sys, threading
    from polars_azurechat.emulator import Emulator
    from polars_azurechat.emulator._batch import BatchService

    pace = BatchService(validating_s=0.2, line_s=0.00005, finalizing_s=0.2,
                        cancelling_s=0.2, file_processing_s=0.1, tick_s=0.01)
    with Emulator(port=int(sys.argv[1]), batches=pace):
        print("ready", flush=True)
        threading.Event().wait()
    """
)


@contextlib.contextmanager
def emulator_process() -> Iterator[str]:
    """The emulator with a fast batch pace, in a subprocess; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("emulator did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/stats", timeout=5) as r:
        data: dict[str, Any] = json.load(r)
    return {**data["batch"], "requests": data["requests"]}


def prompts(n: int) -> tuple[list[str], list[str]]:
    a = [i % 997 for i in range(n)]
    b = [i // 997 for i in range(n)]
    rows = [f"What is {x} + {y}?" for x, y in zip(a, b, strict=True)]
    return rows, [str(x + y) for x, y in zip(a, b, strict=True)]


def config(url: str) -> pac.ChatConfig:
    return pac.ChatConfig(
        azure_endpoint=url, api_key=DEFAULT_API_KEY, deployment=DEPLOYMENT
    )


def measured(
    url: str, df: pl.DataFrame, expected: list[str], **kw: Any
) -> dict[str, Any]:
    before = stats(url)
    wall, cpu = time.perf_counter(), time.process_time()
    with pac.Completer(config=config(url), max_tokens=20, progress=False, **kw) as job:
        out = df.select(job.expr("q"))["q"].to_list()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = stats(url)
    return {
        "wall": wall,
        "cpu": cpu,
        "correct": sum(a == e for a, e in zip(out, expected, strict=True)),
        **{k: after[k] - before[k] for k in ("files_uploaded", "batches_created")},
        "lines": after["lines_answered"] - before["lines_answered"],
        "chat": after["requests"] - before["requests"],
    }


def killed_and_rerun(url: str, df: pl.DataFrame, workdir: Path) -> dict[str, Any]:
    """``run --mode batch`` killed after its batch is created, then run again."""
    src, out, cache = workdir / "in.parquet", workdir / "out.parquet", workdir / "k"
    df.write_parquet(src)
    args = [sys.executable, "-m", "polars_azurechat", "run", str(src), str(out)]
    args += ["--column", "q", "--mode", "batch", "--cache", str(cache)]
    args += ["--batch-poll-s", "0.05", "--max-tokens", "20", "--no-progress", "-v"]
    env = {
        **os.environ,
        "AZURE_OPENAI_ENDPOINT": url,
        "AZURE_OPENAI_API_KEY": DEFAULT_API_KEY,
        "AZURE_OPENAI_DEPLOYMENT": DEPLOYMENT,
        "PYTHONUNBUFFERED": "1",
    }
    start = stats(url)
    child = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert child.stderr is not None
    for line in child.stderr:
        if "created batch" in line:
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    child.stderr.close()
    killed = stats(url)
    wall = time.perf_counter()
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - wall
    end = stats(url)
    if rerun.returncode != 0:
        raise RuntimeError(rerun.stderr[-2000:])
    answers = pl.read_parquet(out)["answer"].to_list()
    return {
        "killed_by": -child.returncode,
        "first_files": killed["files_uploaded"] - start["files_uploaded"],
        "first_batches": killed["batches_created"] - start["batches_created"],
        "rerun_files": end["files_uploaded"] - killed["files_uploaded"],
        "rerun_batches": end["batches_created"] - killed["batches_created"],
        "lines": end["lines_answered"] - start["lines_answered"],
        "chat": end["requests"] - start["requests"],
        "wall": wall,
        "answers": answers,
    }


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 rows")
    args = parser.parse_args(argv)
    n = 1_000 if args.quick else 10_000
    rows, expected = prompts(n)
    df = pl.DataFrame({"q": rows})
    ok = True
    with emulator_process() as url, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        batch: dict[str, Any] = {"mode": "batch", "batch_poll_s": 0.05}
        # the prompts' tokens (as the job counts them), for a limit of ~1/4 of them
        from polars_azurechat.transport import tokens as _tokens

        tokens = sum(
            _tokens.prompt_tokens([{"role": "user", "content": r}]) for r in rows
        )
        limit = tokens // 4 + 50
        small = df.head(20)  # warm-up: imports and connections out of the figures
        measured(url, small, expected[:20], cache=str(work / "w1"), **batch)
        measured(url, small, expected[:20], cache=str(work / "w2"))
        runs = {
            "batch": measured(url, df, expected, cache=str(work / "a"), **batch),
            f"batch, enqueued limit {limit:,}": measured(
                url,
                df,
                expected,
                cache=str(work / "b"),
                enqueued_tokens_limit=limit,
                **batch,
            ),
            "online, latency 0": measured(
                url, df, expected, cache=str(work / "c"), max_concurrency=64
            ),
        }
        kill = killed_and_rerun(url, df, work)
    print(f"## batch mode: {n:,} rows against the emulator (own process, fast pace)")
    print(
        f"{'run':34} {'wall s':>7} {'client CPU s':>13} {'CPU ms/row':>11} "
        f"{'files':>6} {'batches':>8} {'lines':>7} {'chat req':>9} {'correct':>9}"
    )
    for name, r in runs.items():
        print(
            f"{name:34} {r['wall']:7.2f} {r['cpu']:13.2f} {1000 * r['cpu'] / n:11.3f} "
            f"{r['files_uploaded']:6} {r['batches_created']:8} {r['lines']:7,} "
            f"{r['chat']:9,} {r['correct']:>5,}/{n:,}"
        )
    a, b, online = runs.values()
    ok &= a["correct"] == n and a["chat"] == 0 and a["files_uploaded"] == 1
    ok &= b["correct"] == n and b["chat"] == 0 and b["files_uploaded"] == 4
    ok &= online["correct"] == n
    kill_ok = (
        kill["killed_by"] == signal.SIGKILL
        and kill["first_batches"] == 1
        and kill["rerun_files"] == 0
        and kill["rerun_batches"] == 0
        and kill["answers"] == expected
        and kill["chat"] == 0
    )
    ok &= kill_ok
    print(
        f"kill -9 after the batch was created: first run uploaded "
        f"{kill['first_files']} file(s), created {kill['first_batches']} batch(es); the "
        f"rerun uploaded {kill['rerun_files']}, created {kill['rerun_batches']}, took "
        f"{kill['wall']:.2f} s; {kill['lines']:,} lines answered in all, "
        f"{kill['chat']} chat requests; every row right: {kill['answers'] == expected}"
    )
    print(
        "client overhead of batch mode vs online at latency 0: "
        f"{1000 * a['cpu'] / n:.3f} vs {1000 * online['cpu'] / n:.3f} CPU ms/row"
    )
    print("result:", "PASS" if ok else "FAIL")
    return bool(ok)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
