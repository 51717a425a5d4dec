"""Ctrl-C and SIGTERM stop a job (chat or embeddings) at once, on real subprocesses.

Each test runs a 3,000-row job (200 ms latency, concurrency 16: about 37 s if left to
run) in a child process against the emulator in this process, waits until the emulator
has seen 40 requests, sends the signal, and checks how fast the child ended, what it said,
and how many requests reached the emulator after the signal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from polars_azurechat.emulator import Emulator
from polars_azurechat.store.sqlite import SqliteCache, request_key

pytestmark = pytest.mark.slow  # every test runs a child process

ROWS = 3000
CONCURRENCY = 16
#: The one wall-clock bound of the suite's own tests, kept on purpose: how soon a real
#: child process ends after a real signal is what a user feels, and no counter can
#: stand for it. It is generous (a stopped job needs milliseconds; left alone it runs
#: about 37 s); the counted bound beside it is ``after <= CONCURRENCY`` requests.
STOPS_WITHIN_S = 2.0

CHILD = textwrap.dedent(
    """
    import sys
    import polars as pl
    import polars_azurechat as pac

    mode, cache = sys.argv[1], sys.argv[2]
    rows = [f"What is {i} + 1?" for i in range(3000)]
    if mode == "complete_many":
        pac.complete_many(rows, max_concurrency=16, cache=cache)
    else:
        df = pl.DataFrame({"q": rows})
        expr = pac.complete("q", max_concurrency=16, cache=cache)
        if mode == "eager":
            df.select(expr)
        else:
            df.lazy().select(expr).collect(engine="streaming")
    print("finished")
    """
)


@pytest.fixture
def slow_emulator() -> Iterator[tuple[Emulator, threading.Event]]:
    seen_40 = threading.Event()

    def on_request(n: int) -> None:
        if n >= 40:
            seen_40.set()

    with Emulator(latency_ms=200, on_request=on_request) as emu:
        yield emu, seen_40


def _interrupt(
    args: list[str], emu: Emulator, seen_40: threading.Event, sig: int
) -> tuple[int, str, float, int]:
    """Run ``args``, signal it after 40 requests; return rc, stderr, seconds, requests after."""
    env = {**os.environ, **emu.env(), "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert seen_40.wait(60), "the child never reached 40 requests"
        at_signal = emu.stats()["requests"]
        sent = time.monotonic()
        child.send_signal(sig)
        _, stderr = child.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, stderr, elapsed, emu.stats()["requests"] - at_signal


@pytest.mark.parametrize("mode", ["complete_many", "eager", "streaming"])
def test_ctrl_c_stops_a_python_job_at_once_and_a_rerun_resumes(
    quick_disk: Path,
    slow_emulator: tuple[Emulator, threading.Event],
    mode: str,
) -> None:
    emu, seen_40 = slow_emulator
    cache = quick_disk / "answers.sqlite"
    args = [sys.executable, "-c", CHILD, mode, str(cache)]
    rc, stderr, elapsed, after = _interrupt(args, emu, seen_40, signal.SIGINT)
    assert elapsed < STOPS_WITHIN_S, stderr
    assert rc != 0 and "finished" not in stderr
    assert "KeyboardInterrupt" in stderr
    # at most what was on its way when the signal landed; nothing admitted after
    assert after <= CONCURRENCY, after
    sent_first = emu.stats()["requests"]
    kept = _answers_in(cache)
    assert kept > 0  # answers received before the signal were committed
    if mode == "complete_many":
        assert "interrupted by Ctrl-C" in stderr and str(cache) in stderr
    # everything answered before the signal is reused: the rerun sends only the rest
    reused = _cached_among_first(cache, emu, 60)
    assert reused > 0
    emu.reset()
    done = subprocess.run(
        [sys.executable, "-c", CHILD.replace("3000", "60"), mode, str(cache)],
        env={**os.environ, **emu.env()},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "finished" in done.stdout
    assert emu.stats()["requests"] == 60 - reused
    assert sent_first >= kept


def _answers_in(path: Path) -> int:
    cache = SqliteCache(path)
    try:
        return len(cache)
    finally:
        cache.close()


def _cached_among_first(path: Path, emu: Emulator, n: int) -> int:
    """How many of the first ``n`` rows' requests the cache holds."""
    keys = [
        request_key(
            host=emu.url.split("://")[1],
            deployment="gpt-4o-mini",
            messages=[{"role": "user", "content": f"What is {i} + 1?"}],
            params={},
        )
        for i in range(n)
    ]
    cache = SqliteCache(path)
    try:
        return len(cache.get_many(keys))
    finally:
        cache.close()


def _parquet(tmp_path: Path) -> Path:
    path = tmp_path / "in.parquet"
    pl.DataFrame({"q": [f"What is {i} + 1?" for i in range(ROWS)]}).write_parquet(path)
    return path


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_stops_at_once_names_the_cache_and_exits_128_plus_signal(
    quick_disk: Path,
    slow_emulator: tuple[Emulator, threading.Event],
    tmp_path: Path,
    sig: int,
    code: int,
) -> None:
    emu, seen_40 = slow_emulator
    cache = quick_disk / "answers.sqlite"
    out = tmp_path / "out.parquet"
    args = [
        sys.executable,
        "-m",
        "polars_azurechat",
        "run",
        str(_parquet(tmp_path)),
        str(out),
        "--column",
        "q",
        "--max-concurrency",
        str(CONCURRENCY),
        "--cache",
        str(cache),
    ]
    rc, stderr, elapsed, after = _interrupt(args, emu, seen_40, sig)
    assert elapsed < STOPS_WITHIN_S, stderr
    assert rc == code, stderr
    assert after <= CONCURRENCY
    assert "Traceback" not in stderr
    name = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C"
    assert f"interrupted by {name}" in stderr and str(cache) in stderr
    assert not out.exists() and not out.with_name("out.parquet.partial").exists()
    assert _answers_in(cache) > 0


def test_a_notebook_user_interrupts_a_cell_and_reruns_it(
    slow_emulator: tuple[Emulator, threading.Event],
) -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from ._kernel import KERNEL_NAME, kernel_spec_dir

    emu, seen_40 = slow_emulator
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_"))
    }
    env.update(emu.env())
    with kernel_spec_dir() as kernels:
        km = KernelManager(
            kernel_name=KERNEL_NAME,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernels]),
        )
        km.start_kernel(env=env)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            setup = (
                "import polars as pl, polars_azurechat as pac\n"
                "df = pl.DataFrame({'q': [f'What is {i} + 1?' for i in range(3000)]})\n"
                "job = pac.Completer(max_concurrency=16)"
            )
            assert (
                kc.execute_interactive(setup, timeout=60)["content"]["status"] == "ok"
            )
            msg_id = kc.execute(
                "out = df.lazy().select(job.expr('q')).collect(engine='streaming')"
            )
            assert seen_40.wait(60)
            at_signal = emu.stats()["requests"]
            sent = time.monotonic()
            km.interrupt_kernel()
            reply = kc.get_shell_msg(timeout=30)
            elapsed = time.monotonic() - sent
            assert reply["parent_header"]["msg_id"] == msg_id
            assert reply["content"]["status"] == "error"
            assert reply["content"]["ename"] == "KeyboardInterrupt"
            assert elapsed < STOPS_WITHIN_S
            assert emu.stats()["requests"] - at_signal <= CONCURRENCY
            # the same job, the same expression: a new run that answers every row
            rerun = kc.execute_interactive(
                "print(df.head(5).lazy().select(job.expr('q'))"
                ".collect(engine='streaming')['q'].to_list())",
                timeout=60,
                output_hook=_collect_stdout,
            )
            assert rerun["content"]["status"] == "ok"
            assert _STDOUT[-1].strip() == "['1', '2', '3', '4', '5']"
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)


_STDOUT: list[str] = []


def _collect_stdout(msg: dict[str, Any]) -> None:
    if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
        _STDOUT.append(msg["content"]["text"])


def test_embed_cli_stops_at_once_keeps_what_it_had_and_a_rerun_resumes(
    quick_disk: Path, slow_emulator: tuple[Emulator, threading.Event], tmp_path: Path
) -> None:
    # one text per request, so the signal comes in the middle of many requests
    emu, seen_40 = slow_emulator
    cache = quick_disk / "vectors.sqlite"
    out = tmp_path / "out.parquet"
    src = tmp_path / "texts.parquet"
    pl.DataFrame({"t": [f"text number {i}" for i in range(ROWS)]}).write_parquet(src)
    args = [
        sys.executable,
        "-m",
        "polars_azurechat",
        "embed",
        str(src),
        str(out),
        "--column",
        "t",
        "--deployment",
        "text-embedding-3-small",
        "--inputs-per-request",
        "1",
        "--max-concurrency",
        str(CONCURRENCY),
        "--cache",
        str(cache),
        "--no-progress",
    ]
    rc, stderr, elapsed, after = _interrupt(args, emu, seen_40, signal.SIGINT)
    assert elapsed < STOPS_WITHIN_S, stderr
    assert rc == 130, stderr
    assert after <= CONCURRENCY
    assert "Traceback" not in stderr
    assert "interrupted by Ctrl-C" in stderr and str(cache) in stderr
    assert not out.exists() and not out.with_name("out.parquet.partial").exists()
    kept = _answers_in(cache)
    assert kept > 0
    # the rerun (many texts a request now) sends only the texts the cache does not hold
    emu.reset()
    env = {**os.environ, **emu.env(), "PYTHONUNBUFFERED": "1"}
    i = args.index("--inputs-per-request")
    rerun = args[:i] + args[i + 2 :]
    done = subprocess.run(rerun, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert emu.stats()["embeddings"]["inputs"] == ROWS - kept
    written = pl.read_parquet(out)
    assert written["t"].to_list() == [f"text number {i}" for i in range(ROWS)]
    assert written["embedding_error"].null_count() == ROWS
