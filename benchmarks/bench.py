"""Benchmark chat.complete() against its baselines on the emulator, in one run.

    python benchmarks/bench.py                 # every scenario (about 5 minutes)
    python benchmarks/bench.py --only demo s1  # some of them
    python benchmarks/bench.py --quick --only overhead startup import  # smoke test

Scenarios, each printing its figures, its target and whether it was met:

- ``demo``: the 100-question demo at 186 ms; target within 1.15x of a bare aiohttp
  client on the same questions;
- ``s1``-``s5``: overhead, latency-bound (1,000 rows at 200 ms, concurrency 100: within
  1.1x of the ideal 2.0 s), at the request quota, at the token quota, wide (5,000 rows at
  2 s, concurrency 1,000: within 1.1x of the ideal 10 s);
- ``faults`` and ``stragglers``: the fault matrix, and slow requests costing only their
  own time;
- ``overhead``: client CPU per request (user + sys of this process; the emulator is
  another), 20,000 rows at latency 0, concurrency 64: chat.complete() within 1.5x of
  a bare aiohttp client;
- ``startup``: fixed cost per collect: rows/s at 2,000 rows >= 0.8x rows/s at 20,000
  rows (a fresh expression each); a second collect of a warmed-up expression on 10 rows
  costs <= 15 ms beyond the same 10 requests sent on an open aiohttp session;
- ``import``: ``python -c "import polars_azurechat"`` within 1.3x of ``import polars``
  (fresh processes, best of 5), and none of openai, aiohttp, pyarrow, tiktoken imported.

``--quick`` shrinks the row counts (and repeats) for smoke tests: the figures it prints
are not the real ones. S3/S4 are bound by the emulator's 10-s quota windows and are not
shrunk.

The emulator runs in its own process (so it never competes with the client for the GIL),
with ~186 ms latency: the average the original parallel-requests demo measured. The 100
questions of data/questions.parquet are sent four ways:

1. sequentially with the openai SDK (the original demo's "one by one": 18.6 s);
2. seed-style: ThreadPoolExecutor + Semaphore(rate_limit) + tenacity + the SDK, as the
   original parallel-requests handler does it (2.6 s in its README);
3. a bare aiohttp client (no retries, no limiter, no Polars: the client-side limit);
4. ``pl.col("messages").chat.complete()``.

It prints wall time, rows/s, the ratios and whether every answer is correct and aligned.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import polars as pl
import tenacity

import polars_azurechat
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import DEFAULT_API_KEY

ROOT = Path(__file__).resolve().parents[1]
API_VERSION = "2024-10-21"
DEPLOYMENT = "gpt-4o-mini"
#: Set by ``--quick``: smaller row counts for smoke tests (the figures are not the real ones).
QUICK = False


def size(full: int, quick: int) -> int:
    """A row count (or repeat count): ``full``, or ``quick`` under ``--quick``."""
    return quick if QUICK else full


@contextlib.contextmanager
def emulator_process(**flags: Any) -> Iterator[str]:
    """Start ``polars-azurechat emulator`` in a subprocess; yield its URL."""
    with emulator_process_pid(**flags) as (url, _):
        yield url


@contextlib.contextmanager
def emulator_process_pid(**flags: Any) -> Iterator[tuple[str, int]]:
    """:func:`emulator_process`, yielding its process id too (to read its CPU)."""
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
        yield url, proc.pid
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
    df = df.head(size(df.height, 20))
    messages = df["messages"].to_list()
    expected = df["expected"].to_list()
    n = df.height
    print(
        f"\n## demo: {n} questions, emulator latency {latency_ms:.0f} ms (own process)"
    )
    rows = []
    with emulator_process(latency_ms=latency_ms) as url:
        ways: list[tuple[str, Callable[[], list[str | None]]]] = [
            ("sequential SDK", lambda: run_sequential(url, messages, 20)),
            (
                "seed-style pool+semaphore+SDK",
                lambda: run_seed_style(url, messages, 20),
            ),
            (
                "bare aiohttp (client limit)",
                lambda: run_bare_aiohttp(url, messages, 20, 100),
            ),
            ("chat.complete()", lambda: run_complete(url, df, 20, max_concurrency=100)),
        ]
        first_call = 0.0
        for name, fn in ways:
            # the two fast ways: best of 5 (the first call in a process also pays
            # one-off lazy imports, printed below; noise on 2 cores is a few 10 ms)
            tries = 5 if name.startswith(("bare", "chat")) else 1
            best: tuple[float, float, bool, dict[str, Any]] | None = None
            for k in range(tries):
                emulator_stats(url, reset=True)
                wall, cpu, answers = timed(fn)
                if k == 0 and name.startswith("chat"):
                    first_call = wall
                stats = emulator_stats(url)
                if best is None or wall < best[0]:
                    best = (wall, cpu, answers == expected, stats)
            assert best is not None
            rows.append((name, *best))
    print(f"chat.complete() first call in this process: {first_call:.3f} s")
    seq = rows[0][1]
    print(
        f"{'way':32} {'wall s':>8} {'rows/s':>8} {'x seq':>7} {'CPU ms/req':>11} {'peak':>5}  correct"
    )
    for name, wall, cpu, ok, stats in rows:
        print(
            f"{name:32} {wall:8.3f} {n / wall:8.0f} {seq / wall:7.1f} "
            f"{1000 * cpu / n:11.2f} {stats['peak_in_flight']:5d}  {ok}"
        )
    ours, bare = rows[-1][1], rows[-2][1]
    print(
        f"chat.complete(): {ours:.3f} s, {seq / ours:.1f}x sequential, "
        f"{rows[1][1] / ours:.1f}x seed-style, {ours / bare:.2f}x bare aiohttp "
        f"({bare:.3f} s); ideal {latency_ms / 1000:.3f} s"
    )
    return verdict(
        "wall / bare aiohttp wall, all correct",
        ours / bare,
        "<= 1.15",
        ours / bare <= 1.15 and rows[-1][3],
    )


def run_async_sdk(
    url: str, messages: list[Any], max_tokens: int, conc: int
) -> list[str | None]:
    async def go() -> list[str | None]:
        client = openai.AsyncAzureOpenAI(
            azure_endpoint=url,
            api_key=DEFAULT_API_KEY,
            api_version=API_VERSION,
            max_retries=0,
        )
        sem = asyncio.Semaphore(conc)

        async def one(m: Any) -> str | None:
            async with sem:
                r = await client.chat.completions.create(
                    model=DEPLOYMENT, messages=m, max_tokens=max_tokens
                )
                return r.choices[0].message.content

        try:
            return list(await asyncio.gather(*(one(m) for m in messages)))
        finally:
            await client.close()

    return asyncio.run(go())


def run_bare_aiohttp(
    url: str, messages: list[Any], max_tokens: int, conc: int
) -> list[str | None]:
    """The client-side limit: no retries, no limiter, no Polars."""
    endpoint = f"{url}/openai/deployments/{DEPLOYMENT}/chat/completions?api-version={API_VERSION}"

    async def go() -> list[str | None]:
        sem = asyncio.Semaphore(conc)
        connector = aiohttp.TCPConnector(limit=conc)
        async with aiohttp.ClientSession(
            connector=connector, headers={"api-key": DEFAULT_API_KEY}
        ) as session:

            async def one(m: Any) -> str | None:
                async with (
                    sem,
                    session.post(
                        endpoint, json={"messages": m, "max_tokens": max_tokens}
                    ) as resp,
                ):
                    body = await resp.json()
                    return body["choices"][0]["message"]["content"]  # type: ignore[no-any-return]

            return list(await asyncio.gather(*(one(m) for m in messages)))

    return asyncio.run(go())


def arithmetic(n: int, pad: str = "") -> tuple[pl.DataFrame, list[str]]:
    msgs = [
        [{"role": "user", "content": f"{pad}What is {i} + {i % 7}?"}] for i in range(n)
    ]
    return pl.DataFrame({"messages": msgs}), [str(i + i % 7) for i in range(n)]


class Table:
    def __init__(self, title: str, n: int) -> None:
        self.n = n
        self.rows: list[tuple[str, float, float, dict[str, Any], bool]] = []
        print(f"\n## {title}")
        print(
            f"{'way':34} {'wall s':>8} {'rows/s':>8} {'CPU ms/req':>11} {'peak':>5} {'429s':>5}  correct"
        )

    def run(
        self,
        url: str,
        name: str,
        fn: Callable[[], list[str | None]],
        expected: list[str],
        n: int | None = None,
    ) -> tuple[float, dict[str, Any], bool]:
        emulator_stats(url, reset=True)
        wall, cpu, answers = timed(fn)
        stats = emulator_stats(url)
        ok = answers == expected
        n429 = stats["statuses"].get("429", 0)
        rows = self.n if n is None else n
        print(
            f"{name:34} {wall:8.3f} {rows / wall:8.0f} {1000 * cpu / max(1, stats['requests']):11.2f} "
            f"{stats['peak_in_flight']:5d} {n429:5d}  {ok}",
            flush=True,
        )
        self.rows.append((name, wall, cpu, stats, ok))
        return wall, stats, ok


def verdict(label: str, value: float, target: str, met: bool) -> bool:
    print(
        f"  target {label}: {target}; measured {value:.3g} -> {'MET' if met else 'MISSED'}"
    )
    return met


def s1() -> bool:
    n, conc = size(2000, 500), 64
    df, expected = arithmetic(n)
    msgs = df["messages"].to_list()
    t = Table(f"S1 overhead: {n} rows, latency 0, concurrency {conc}", n)
    with emulator_process() as url:
        run_complete(url, df.head(50), 20, conc)  # warm imports
        t.run(url, "sequential SDK", lambda: run_sequential(url, msgs, 20), expected)
        seed, _, _ = t.run(
            url,
            "seed-style pool+semaphore+SDK",
            lambda: run_seed_style(url, msgs, 20, conc),
            expected,
        )
        t.run(
            url,
            "asyncio + AsyncAzureOpenAI",
            lambda: run_async_sdk(url, msgs, 20, conc),
            expected,
        )
        t.run(
            url,
            "bare aiohttp (client limit)",
            lambda: run_bare_aiohttp(url, msgs, 20, conc),
            expected,
        )
        ours, _, ok = t.run(
            url, "chat.complete()", lambda: run_complete(url, df, 20, conc), expected
        )
    a = verdict("rows/s", n / ours, ">= 2000", n / ours >= 2000 and ok)
    b = verdict("x seed-style rows/s", seed / ours, ">= 4", seed / ours >= 4)
    return a and b


def _versus_ideal(ours: float, bare: float, ideal: float) -> None:
    """Print where the client limit (bare aiohttp) and chat.complete() stand."""
    print(
        f"ideal {ideal:.1f} s (waves x latency); bare aiohttp / ideal {bare / ideal:.2f},"
        f" chat.complete() / ideal {ours / ideal:.2f}, chat.complete() / bare aiohttp"
        f" {ours / bare:.2f}"
    )


def s2() -> bool:
    n, conc = size(1000, 200), 100
    ideal = math.ceil(n / conc) * 0.2
    df, expected = arithmetic(n)
    msgs = df["messages"].to_list()
    t = Table(f"S2 latency-bound: {n} rows, latency 200 ms, concurrency {conc}", n)
    with emulator_process(latency_ms=200) as url:
        t.run(
            url,
            "seed-style pool+semaphore+SDK",
            lambda: run_seed_style(url, msgs, 20, conc),
            expected,
        )
        bare, _, _ = t.run(
            url,
            "bare aiohttp (client limit)",
            lambda: run_bare_aiohttp(url, msgs, 20, conc),
            expected,
        )
        ours, _, ok = t.run(
            url, "chat.complete()", lambda: run_complete(url, df, 20, conc), expected
        )
    _versus_ideal(ours, bare, ideal)
    return verdict(
        f"wall / ideal {ideal:.1f} s",
        ours / ideal,
        "<= 1.1",
        ours / ideal <= 1.1 and ok,
    )


def _quota(
    title: str,
    df: pl.DataFrame,
    expected: list[str],
    max_tokens: int,
    emu: dict[str, Any],
    given: dict[str, Any],
    seed: bool,
) -> bool:
    n = df.height
    t = Table(title, n)
    per_window = 100  # both quota scenarios allow 100 requests per 10-s window
    fastest = 10.0 * ((n - 1) // per_window) + 0.2
    ok_all = True
    with emulator_process(latency_ms=200, **emu) as url:
        if seed:
            t.run(
                url,
                "seed-style pool+semaphore+SDK",
                lambda: run_seed_style(url, df["messages"].to_list(), max_tokens, 100),
                expected,
            )
        for label, kw in (("quota given", given), ("headers only", {})):
            wall, stats, ok = t.run(
                url,
                f"chat.complete() {label}",
                lambda kw=kw: run_complete(url, df, max_tokens, 100, **kw),
                expected,
            )
            n429 = stats["statuses"].get("429", 0)
            limit = 0.02 if kw else 0.10
            ok_all &= verdict(
                f"{label}: wall / fastest {fastest:.1f} s",
                wall / fastest,
                "<= 1.1" if kw else "(none)",
                (wall / fastest <= 1.1 or not kw) and ok,
            )
            ok_all &= verdict(
                f"{label}: 429s / requests",
                n429 / stats["requests"],
                f"<= {limit:.0%}",
                n429 / stats["requests"] <= limit,
            )
            time.sleep(10.5)  # let the emulator's window empty between runs
    return ok_all


def s3() -> bool:
    df, expected = arithmetic(300)
    return _quota(
        "S3 at the request quota: 300 rows, 200 ms, emulator 600 RPM (100 per 10 s)",
        df,
        expected,
        20,
        {"requests_per_minute": 600},
        {"requests_per_minute": 600},
        seed=True,
    )


def s4() -> bool:
    pad = "Consider the following carefully. " * 60  # ~ 360 prompt tokens
    df, expected = arithmetic(300, pad)
    from polars_azurechat.emulator._tokens import estimator
    from polars_azurechat.transport.tokens import request_tokens

    # The quota is sized with what the SERVER charges (the emulator's own estimate, as
    # Azure's); the client counts with tiktoken and disagrees a little, as it will on Azure.
    msgs = df["messages"][0].to_list()
    cost = estimator("chars").prompt([(m["role"], m["content"]) for m in msgs]) + 200
    client_cost = request_tokens(msgs, 200)
    tpm = cost * 100 * 6  # 100 requests' tokens per 10-s window
    print(
        f"server charges {cost} tokens per request; the client estimates {client_cost}"
    )
    return _quota(
        f"S4 at the token quota: 300 rows x ~{cost} tokens, 200 ms, emulator {tpm} TPM",
        df,
        expected,
        200,
        {"tokens_per_minute": tpm, "requests_per_minute": 100_000},
        {"tokens_per_minute": tpm},
        seed=False,
    )


def s5() -> bool:
    n, conc = size(5000, 1000), 1000
    ideal = math.ceil(n / conc) * 2.0
    df, expected = arithmetic(n)
    msgs = df["messages"].to_list()
    t = Table(f"S5 wide: {n} rows, latency 2 s, concurrency {conc}", n)
    with emulator_process(latency_ms=2000) as url:
        bare, _, _ = t.run(
            url,
            "bare aiohttp (client limit)",
            lambda: run_bare_aiohttp(url, msgs, 20, conc),
            expected,
        )
        ours, _, ok = t.run(
            url, "chat.complete()", lambda: run_complete(url, df, 20, conc), expected
        )
    _versus_ideal(ours, bare, ideal)
    return verdict(
        f"wall / ideal {ideal:.0f} s",
        ours / ideal,
        "<= 1.1",
        ours / ideal <= 1.1 and ok,
    )


def faults() -> bool:
    """The fault matrix: 5,000 rows through 10% 5xx, 2% hangs, 2% drops, 1% malformed."""
    n, conc = size(5000, 1000), 200
    df, expected = arithmetic(n)
    cfg_kw: dict[str, Any] = {"timeout_s": 0.5, "output": "struct"}
    print(f"\n## faults: {n:,} rows; 10% 500/503, 2% hangs, 2% dropped, 1% malformed")
    print("   (no retry-after sent: exponential backoff with jitter; timeout_s=0.5)")
    ok = True
    with emulator_process(
        latency_ms=20,
        error_rate=0.10,
        hang_rate=0.02,
        drop_rate=0.02,
        malformed_rate=0.01,
        retry_after_ms=-1,
        seed=7,
    ) as url:
        cfg = ChatConfig(
            azure_endpoint=url, api_key=DEFAULT_API_KEY, deployment=DEPLOYMENT
        )
        job = polars_azurechat.Completer(
            config=cfg, max_concurrency=conc, max_tokens=20, **cfg_kw
        )
        t0 = time.perf_counter()
        out = df.select(job.expr("messages").struct.field("content"))["content"]
        wall = time.perf_counter() - t0
        stats = emulator_stats(url)
    s = job.summary()
    print(
        f"injected by the emulator: {stats['faults']} in {stats['requests']} requests"
    )
    print(f"failed attempts seen:     {s.failed_attempts}")
    print(
        f"rows answered {s.answered} / {n}, failed {s.failed}, retries {s.retries}, "
        f"wall {wall:.2f} s, all answers correct: {out.to_list() == expected}"
    )
    ok &= verdict("rows answered", s.answered / n, "100%", s.answered == n)
    ok &= out.to_list() == expected

    print("\n## faults at 100%: 300 rows, max_attempts=3, deadline_s=20")
    df2, _ = arithmetic(300)
    with emulator_process(error_rate=1.0, retry_after_ms=-1) as url:
        cfg = ChatConfig(
            azure_endpoint=url, api_key=DEFAULT_API_KEY, deployment=DEPLOYMENT
        )
        job = polars_azurechat.Completer(
            config=cfg, max_attempts=3, deadline_s=20, output="struct", max_tokens=20
        )
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = df2.select(job.expr("messages"))["messages"]
        wall = time.perf_counter() - t0
    errors = res.struct.field("error")
    print(f"wall {wall:.2f} s; rows with an error: {errors.is_not_null().sum()} / 300")
    ok &= verdict(
        "every row explained, bounded",
        wall,
        "all 300 carry an error, < 20 s",
        errors.is_not_null().sum() == 300 and wall < 20,
    )
    return ok


def stragglers() -> bool:
    """Slow requests must cost their own time, not stall a chunk or batch behind them.

    Each path runs twice, without and with stragglers. What stragglers may cost: their
    extra request-time spread over the slots, plus one straggler's duration (the last
    one cannot overlap with anything). More than that means rows waited behind them.
    """
    n, conc, latency, slow_ms, every = size(10_000, 2_000), 64, 50, 2000, 200
    row_group = n // 2
    allowed = (n // every) * slow_ms / 1000 / conc + slow_ms / 1000
    print(f"\n## stragglers: {n:,} rows from Parquet (row groups of {row_group:,}),")
    print(
        f"   latency {latency} ms, concurrency {conc}; 1 row in {every} takes {slow_ms} ms more;"
    )
    print(f"   unavoidable cost of the stragglers: {allowed:.2f} s")
    ok = True
    with (
        tempfile.TemporaryDirectory() as d,
        emulator_process(latency_ms=latency) as url,
    ):
        cfg = ChatConfig(
            azure_endpoint=url, api_key=DEFAULT_API_KEY, deployment=DEPLOYMENT
        )
        env = {
            **os.environ,
            "AZURE_OPENAI_ENDPOINT": url,
            "AZURE_OPENAI_API_KEY": DEFAULT_API_KEY,
            "AZURE_OPENAI_DEPLOYMENT": DEPLOYMENT,
        }
        walls: dict[tuple[str, bool], float] = {}
        for slow in (False, True):
            src, dst = Path(d) / f"in{slow}.parquet", Path(d) / f"out{slow}.parquet"
            prompts = [
                (f"[emu:delay={slow_ms}] " if slow and i % every == 0 else "")
                + f"What is {i} + {int(slow)}?"
                for i in range(n)
            ]
            expected = [str(i + int(slow)) for i in range(n)]
            pl.DataFrame({"i": range(n), "q": prompts}).write_parquet(
                src, row_group_size=row_group
            )
            t0 = time.perf_counter()
            ok &= (
                polars_azurechat.complete_many(
                    prompts, config=cfg, max_concurrency=conc, max_tokens=5
                )
                == expected
            )
            walls["complete_many (engine alone)", slow] = time.perf_counter() - t0
            expr = pl.col("q").chat.complete(
                config=cfg, max_concurrency=conc, max_tokens=5
            )
            t0 = time.perf_counter()
            out = pl.scan_parquet(src).with_columns(a=expr).collect(engine="streaming")
            walls["Polars streaming collect", slow] = time.perf_counter() - t0
            ok &= out["a"].to_list() == expected
            args = [sys.executable, "-m", "polars_azurechat", "run", str(src), str(dst)]
            args += ["--column", "q", "--max-concurrency", str(conc), "--no-progress"]
            t0 = time.perf_counter()
            subprocess.run(args, env=env, check=True, capture_output=True)
            walls["polars-azurechat run", slow] = time.perf_counter() - t0
            ok &= pl.read_parquet(dst)["answer"].to_list() == expected
    print(f"{'path':30} {'without':>8} {'with':>8} {'cost s':>7} {'/ unavoidable':>14}")
    for path in (
        "complete_many (engine alone)",
        "Polars streaming collect",
        "polars-azurechat run",
    ):
        base, slow_wall = walls[path, False], walls[path, True]
        cost = slow_wall - base
        print(
            f"{path:30} {base:8.2f} {slow_wall:8.2f} {cost:7.2f} {cost / allowed:14.2f}"
        )
        if (
            path != "Polars streaming collect"
        ):  # Polars holds a chunk until its last row
            ok &= verdict(
                f"{path}: straggler cost / unavoidable",
                cost / allowed,
                "<= 1.2",
                cost / allowed <= 1.2,
            )
    return ok


def overhead() -> bool:
    """Client CPU per request: chat.complete() against a bare aiohttp client.

    Both run in this process against the emulator in its own process, at latency 0, so
    what ``getrusage(RUSAGE_SELF)`` (user + sys, every thread) counts is the client's
    work. Runs alternate; the best run of each way is compared.
    """
    n, conc, rounds = size(20_000, 2_000), 64, size(3, 2)
    df, expected = arithmetic(n)
    msgs = df["messages"].to_list()
    t = Table(
        f"overhead: client CPU per request, {n:,} rows, latency 0, concurrency {conc}"
        f" ({rounds} alternating rounds)",
        n,
    )
    ways: dict[str, Callable[[str], list[str | None]]] = {
        "bare aiohttp (client limit)": lambda url: run_bare_aiohttp(
            url, msgs, 20, conc
        ),
        "chat.complete()": lambda url: run_complete(url, df, 20, conc),
    }
    best: dict[str, float] = {}
    ok = True
    with emulator_process() as url:
        run_complete(url, df.head(200), 20, conc)  # warm imports and first-use costs
        run_bare_aiohttp(url, msgs[:200], 20, conc)
        for r in range(rounds):
            for name, way in ways.items():
                _, stats, correct = t.run(
                    url, f"{name} #{r + 1}", functools.partial(way, url), expected
                )
                cpu = t.rows[-1][2]
                per_request = cpu / max(1, stats["requests"])
                best[name] = min(best.get(name, math.inf), per_request)
                ok &= correct
    ours, bare = best["chat.complete()"], best["bare aiohttp (client limit)"]
    print(
        f"best CPU per request: chat.complete() {1000 * ours:.3f} ms, "
        f"bare aiohttp {1000 * bare:.3f} ms; ratio {ours / bare:.2f}"
    )
    return verdict(
        "CPU/request chat.complete() / bare aiohttp, all correct",
        ours / bare,
        "<= 1.5",
        ours / bare <= 1.5 and ok,
    )


def bare_session_walls(
    url: str, messages: list[Any], max_tokens: int, conc: int, repeats: int
) -> list[float]:
    """Walls of ``repeats`` batches of ``messages`` on one already open aiohttp session.

    One untimed batch first opens the session's connections.
    """
    endpoint = f"{url}/openai/deployments/{DEPLOYMENT}/chat/completions?api-version={API_VERSION}"

    async def go() -> list[float]:
        sem = asyncio.Semaphore(conc)
        connector = aiohttp.TCPConnector(limit=conc)
        async with aiohttp.ClientSession(
            connector=connector, headers={"api-key": DEFAULT_API_KEY}
        ) as session:

            async def one(m: Any) -> str:
                async with (
                    sem,
                    session.post(
                        endpoint, json={"messages": m, "max_tokens": max_tokens}
                    ) as resp,
                ):
                    body = await resp.json()
                    return body["choices"][0]["message"]["content"]  # type: ignore[no-any-return]

            await asyncio.gather(*(one(m) for m in messages))
            walls = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                await asyncio.gather(*(one(m) for m in messages))
                walls.append(time.perf_counter() - t0)
            return walls

    return asyncio.run(go())


def startup() -> bool:
    """Fixed cost per collect: a small job's rows/s against a large one's, and a warm rerun.

    Each size gets a fresh expression (fresh ``complete(...)``), so whatever a job sets up
    (event loop, HTTP session, engine) is paid once per collect; the two rates differ by
    that fixed cost spread over fewer rows.
    """
    small, large, conc = size(2_000, 200), size(20_000, 2_000), 64
    rounds, repeats = size(2, 2), size(7, 5)
    df, expected = arithmetic(large)
    t = Table(
        f"startup: {small:,} vs {large:,} rows, latency 0, concurrency {conc}, "
        f"a fresh complete(...) each (best of {rounds})",
        large,
    )
    walls: dict[int, float] = {}
    ok = True
    with emulator_process() as url:
        cfg = ChatConfig(
            azure_endpoint=url, api_key=DEFAULT_API_KEY, deployment=DEPLOYMENT
        )
        run_complete(url, df.head(200), 20, conc)  # warm imports and first-use costs
        for _ in range(rounds):
            for n in (small, large):
                wall, _, correct = t.run(
                    url,
                    f"chat.complete() {n:,} rows",
                    functools.partial(polars_azurechat_select, df.head(n), cfg, conc),
                    expected[:n],
                    n=n,
                )
                walls[n] = min(walls.get(n, math.inf), wall)
                ok &= correct

        # A warmed-up job: the same expression collected again on 10 rows.
        df10, expected10 = df.head(10), expected[:10]
        expr = polars_azurechat.complete(
            "messages", config=cfg, max_tokens=20, max_concurrency=conc
        )
        first_wall, _, _ = timed(lambda: df10.select(expr)["messages"].to_list())
        ours_walls: list[float] = []
        second_requests, ok10 = 0, True
        for i in range(repeats):
            emulator_stats(url, reset=True)
            wall, _, answers = timed(lambda: df10.select(expr)["messages"].to_list())
            requests = emulator_stats(url)["requests"]
            ours_walls.append(wall)
            ok10 &= answers == expected10
            if i == 0:
                second_requests = requests
        bare_walls = bare_session_walls(
            url, df10["messages"].to_list(), 20, conc, repeats
        )

    rate_small, rate_large = small / walls[small], large / walls[large]
    per_row = (walls[large] - walls[small]) / (large - small)
    fixed = walls[small] - small * per_row
    print(
        f"rows/s: {rate_small:,.0f} at {small:,} rows, {rate_large:,.0f} at {large:,} "
        f"rows; ratio {rate_small / rate_large:.2f}; implied fixed cost per collect "
        f"{1000 * fixed:.0f} ms, {1e6 * per_row:.0f} us per row"
    )
    a = verdict(
        f"rows/s at {small:,} / rows/s at {large:,}, all correct",
        rate_small / rate_large,
        ">= 0.8",
        rate_small / rate_large >= 0.8 and ok,
    )
    ours_second, bare_second = ours_walls[0], bare_walls[0]
    print(
        f"\n10 rows, same expression: first collect {1000 * first_wall:.1f} ms, "
        f"second {1000 * ours_second:.1f} ms ({second_requests} requests sent), "
        f"median of {repeats} reruns {1000 * statistics.median(ours_walls):.1f} ms"
    )
    print(
        f"10 requests on an open aiohttp session: second batch "
        f"{1000 * bare_second:.1f} ms, median of {repeats} "
        f"{1000 * statistics.median(bare_walls):.1f} ms"
    )
    extra_ms = 1000 * (ours_second - bare_second)
    median_extra_ms = 1000 * (
        statistics.median(ours_walls) - statistics.median(bare_walls)
    )
    print(
        f"cost beyond the requests: second collect {extra_ms:.1f} ms, "
        f"medians {median_extra_ms:.1f} ms"
    )
    b = verdict(
        "second collect on 10 rows - bare aiohttp on an open session, ms, correct",
        extra_ms,
        "<= 15 ms",
        extra_ms <= 15 and second_requests == 10 and ok10,
    )
    return a and b


def polars_azurechat_select(
    df: pl.DataFrame, cfg: ChatConfig, conc: int
) -> list[str | None]:
    """``df.select(complete(...))`` with a fresh expression (a fresh job)."""
    expr = polars_azurechat.complete(
        "messages", config=cfg, max_tokens=20, max_concurrency=conc
    )
    return df.select(expr)["messages"].to_list()


HEAVY_MODULES = ("openai", "aiohttp", "pyarrow", "tiktoken")


#: The import scenario's environment: bytecode may be cached, as in a user's install
#: (pip compiles a wheel's modules when it installs them, and Python writes the cache of
#: an editable install on first import). Where PYTHONDONTWRITEBYTECODE is set (it is on
#: some build machines) the package would be compiled from source at every import and
#: timed against polars' precompiled modules: 1.33x instead of 1.2x in one run.
_WITH_BYTECODE = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _python_wall(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=tempfile.gettempdir(),
        env=_WITH_BYTECODE,
    )
    return time.perf_counter() - t0


def _imported_by(package: str) -> dict[str, float]:
    """Cumulative import ms of what ``package``'s own modules import, by top package."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {package}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    ).stderr
    entries = []
    for line in err.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2][1:]
        depth = len(name) - len(name.lstrip())
        entries.append((depth, name.strip(), int(parts[1])))
    # importtime prints a module after what it imports, one level deeper: the parent of
    # an entry is the next entry below it with a smaller depth.
    out: dict[str, float] = {}
    stack: list[tuple[int, str]] = []
    for depth, name, cumulative_us in reversed(entries):
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        top = name.split(".")[0]
        if parent.split(".")[0] == package and top != package:
            out[top] = out.get(top, 0.0) + cumulative_us / 1000
        stack.append((depth, name))
    return out


def import_time() -> bool:
    """``import polars_azurechat`` against ``import polars``, each in a fresh process."""
    runs = size(5, 3)
    codes = {
        "python -c pass": "pass",
        "import polars": "import polars",
        "import polars_azurechat": "import polars_azurechat",
    }
    print(f"\n## import: fresh processes, best of {runs} after one warm-up each")
    for code in codes.values():
        _python_wall(code)
    walls: dict[str, list[float]] = {name: [] for name in codes}
    for _ in range(runs):
        for name, code in codes.items():
            walls[name].append(_python_wall(code))
    best = {name: min(w) for name, w in walls.items()}
    for name, w in walls.items():
        print(
            f"{name:26} best {1000 * best[name]:7.1f} ms  "
            f"median {1000 * statistics.median(w):7.1f} ms"
        )
    ratio = best["import polars_azurechat"] / best["import polars"]
    extra = best["import polars_azurechat"] - best["import polars"]
    print(f"ratio {ratio:.2f} ({1000 * extra:.0f} ms more than import polars)")
    heavy = sorted(_imported_by("polars_azurechat").items(), key=lambda kv: -kv[1])
    print(
        "first imported by polars_azurechat's own modules (cumulative ms, one "
        "-X importtime run): " + ", ".join(f"{top} {ms:.0f}" for top, ms in heavy[:8])
    )
    probe = (
        "import json, sys, polars_azurechat; "
        f"print(json.dumps([m for m in {list(HEAVY_MODULES)!r} if m in sys.modules]))"
    )
    # the import's own loads: the prewarm thread (on by default) loads aiohttp after
    loaded: list[str] = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            check=True,
            cwd=tempfile.gettempdir(),
            env={**os.environ, "POLARS_AZURECHAT_PREWARM": "0"},
        ).stdout
    )
    print(
        "in sys.modules after import polars_azurechat (prewarm off): "
        f"{', '.join(loaded) or 'none'} (of {', '.join(HEAVY_MODULES)})"
    )
    a = verdict(
        "import polars_azurechat / import polars", ratio, "<= 1.3", ratio <= 1.3
    )
    b = verdict(
        "heavy modules imported",
        len(loaded),
        f"0 of {', '.join(HEAVY_MODULES)}",
        not loaded,
    )
    return a and b


FIRST_JOB = """
import sys, time
import polars as pl
import polars_azurechat
from polars_azurechat.config import ChatConfig
url, pause = sys.argv[1], float(sys.argv[2])
df = pl.read_parquet(sys.argv[3])
time.sleep(pause)  # a user between the import cell and the first job
cfg = ChatConfig(azure_endpoint=url, api_key=sys.argv[4], deployment="gpt-4o-mini")
for _ in range(2):
    t0 = time.perf_counter()
    out = df.with_columns(
        answer=pl.col("messages").chat.complete(
            config=cfg, max_tokens=20, max_concurrency=100
        )
    )
    assert out["answer"].null_count() == 0
    print(f"{time.perf_counter() - t0:.3f}")
"""


def first_job() -> bool:
    """The first job of a fresh process against its second (a user's first cell).

    The 100 questions at 186 ms, after a 0.5-s pause following the import (a notebook
    user between cells) and right after it (a script), with and without the prewarm.
    No target: the figures say what the first job pays.
    """
    print("\n## first job: 100 questions at 186 ms in a fresh process (best of 3)")
    path = ROOT / "data" / "questions.parquet"
    with emulator_process(latency_ms=186) as url:
        for pause in (0.5, 0.0):
            for prewarm in ("1", "0"):
                env = {**os.environ, "POLARS_AZURECHAT_PREWARM": prewarm}
                runs = []
                for _ in range(3):
                    out = subprocess.run(
                        [
                            sys.executable,
                            "-c",
                            FIRST_JOB,
                            url,
                            str(pause),
                            str(path),
                            DEFAULT_API_KEY,
                        ],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    runs.append([float(x) for x in out.stdout.split()])
                first = min(r[0] for r in runs)
                second = min(r[1] for r in runs)
                print(
                    f"pause {pause:.1f} s, prewarm {'on ' if prewarm == '1' else 'off'}: "
                    f"first job {first:.3f} s, second {second:.3f} s "
                    f"({first / second:.2f}x)"
                )
    return True


SCENARIOS: dict[str, Callable[[], bool]] = {
    "demo": lambda: demo(186.0),
    "firstjob": first_job,
    "s1": s1,
    "s2": s2,
    "s3": s3,
    "s4": s4,
    "s5": s5,
    "faults": faults,
    "stragglers": stragglers,
    "overhead": overhead,
    "startup": startup,
    "import": import_time,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", nargs="*", choices=sorted(SCENARIOS), default=list(SCENARIOS)
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller row counts for a smoke test (the figures are not the real ones)",
    )
    args = parser.parse_args()
    global QUICK
    QUICK = args.quick
    banner = (
        "QUICK MODE: smaller row counts; smoke-test figures, NOT the real benchmark"
    )
    if QUICK:
        print(f"## {banner}")
    results = {name: SCENARIOS[name]() for name in args.only}
    print("\n## summary" + (f" ({banner})" if QUICK else ""))
    for name, ok in results.items():
        print(f"{name:10} {'all targets met' if ok else 'target missed'}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
