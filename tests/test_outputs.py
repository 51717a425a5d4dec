"""Every file the CLI writes is taken for one job, checked before any request, and
never clobbered; one batch state is run by one job at a time (issue 23: 2, 3, 4, 12).

Each test here failed on the version before: ``plan --rows-out`` overwrote any file
(the input included) and printed a traceback for a missing directory; two runs to one
output both succeeded and the second replaced the first's answers; an output at the
cache's path was written over the cache after the job paid; two jobs could run the
batches of one cache file at once.

The concurrent jobs are real: a child process (``python -m polars_azurechat run``)
against the emulator in this process, held mid-run by the emulator (its
``on_request`` waits for the test), or a child killed with SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

import polars_azurechat as pac
from polars_azurechat.batch.state import BatchStateStore
from polars_azurechat.cli import app
from polars_azurechat.emulator import Emulator
from polars_azurechat.emulator._batch import BatchService
from polars_azurechat.outputs import OutputFile
from polars_azurechat.store.sqlite import SqliteCache

from .fakes import FakeClock

runner = CliRunner()
QUESTIONS = [f"What is {i} + 1000?" for i in range(3)]
ANSWERS = [str(i + 1000) for i in range(3)]


def _flat(text: str) -> str:
    """Text without whitespace or the boxes the CLI draws (long paths wrap)."""
    return re.sub(r"[\s│╭╮╰╯─]+", "", text)


def _input(tmp_path: Path, name: str = "in.parquet", start: int = 0) -> Path:
    path = tmp_path / name
    pl.DataFrame(
        {"q": [f"What is {i} + 1000?" for i in range(start, start + 3)]}
    ).write_parquet(path)
    return path


def _files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes (what a refusal must not change)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _answers_in(cache: Path) -> int:
    store = SqliteCache(cache)
    try:
        return len(store)
    finally:
        store.close()


def _run(src: Path, out: Path, *extra: str) -> Any:
    return runner.invoke(
        app, ["run", str(src), str(out), "--column", "q", "--no-progress", *extra]
    )


# -- plan --rows-out: the rules of run's output (item 2) -----------------------------


@pytest.mark.parametrize(
    ("make_out", "extra", "message"),
    [
        (lambda d: d / "missing" / "rows.parquet", [], "the directory"),
        (lambda d: d / "in.parquet", [], "exists; pass --overwrite"),
        (lambda d: d / "in.parquet", ["--overwrite"], "is the input file"),
        (lambda d: d / "c.sqlite", ["--overwrite"], "is the cache file"),
        (lambda d: d / "c.sqlite-wal", [], "is the cache's -wal file"),
        (lambda d: d, [], "is a directory"),
    ],
    ids=["missing-dir", "exists", "input", "cache", "cache-wal", "directory"],
)
def test_plan_rows_out_follows_the_rules_of_run_outputs(
    tmp_path: Path, make_out: Any, extra: list[str], message: str
) -> None:
    src = _input(tmp_path)
    cache = tmp_path / "c.sqlite"
    SqliteCache(cache).close()
    before = _files(tmp_path)
    out = make_out(tmp_path)
    result = runner.invoke(
        app,
        [
            *("plan", str(src), "--column", "q", "--cache", str(cache)),
            *("--rows-out", str(out), *extra),
        ],
    )
    assert result.exit_code == 2, result.output
    assert _flat(message) in _flat(result.output)
    assert "Traceback" not in result.output
    assert "requests" not in result.output  # refused before the estimate
    assert _files(tmp_path) == before  # nothing written: no output, lock or partial


def test_plan_rows_out_replaces_a_file_only_with_overwrite(tmp_path: Path) -> None:
    src = _input(tmp_path)
    out = tmp_path / "rows.parquet"
    out.write_bytes(b"keep me")
    args = ["plan", str(src), "--column", "q", "--rows-out", str(out)]
    assert runner.invoke(app, args).exit_code == 2
    assert out.read_bytes() == b"keep me"
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out).height == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "rows.parquet"]


# -- an output at the cache's path (item 4) ------------------------------------------


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_an_output_at_the_cache_path_is_refused_before_any_request(
    emulator: Emulator, tmp_path: Path, suffix: str
) -> None:
    cache = tmp_path / "answers.sqlite"
    first = _run(_input(tmp_path), tmp_path / "first.parquet", "--cache", str(cache))
    assert first.exit_code == 0, first.output
    assert emulator.stats()["requests"] == 3 and _answers_in(cache) == 3
    other = _input(tmp_path, "more.parquet", start=10)  # new questions: they would cost
    out = cache.with_name(cache.name + suffix)
    result = _run(other, out, "--cache", str(cache), "--overwrite")
    assert result.exit_code == 2, result.output
    assert _flat(f"{out} is the cache") in _flat(result.output)
    assert emulator.stats()["requests"] == 3  # not one more
    assert _answers_in(cache) == 3  # the cache is still the cache


# -- two runs to one output (item 3) -------------------------------------------------


def test_a_run_is_refused_while_another_job_holds_its_output(
    emulator: Emulator, tmp_path: Path
) -> None:
    src, out = _input(tmp_path), tmp_path / "out.parquet"
    with OutputFile(out, name="OUTPUT_PATH"):  # what a run holds from start to end
        result = _run(src, out)
    assert result.exit_code == 2, result.output
    flat = _flat(result.output)
    assert _flat(f"pid {os.getpid()} (this process) on {socket.gethostname()}") in flat
    assert _flat(f"{out}.lock") in flat
    assert emulator.stats()["requests"] == 0
    assert not out.exists()
    assert _run(src, out).exit_code == 0  # released: the next run takes it
    assert pl.read_parquet(out)["answer"].to_list() == ANSWERS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "out.parquet"]


def test_a_file_that_appears_at_the_output_during_the_run_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, out = _input(tmp_path), tmp_path / "out.parquet"

    def another_program_writes(n: int) -> None:
        if n == 1:
            out.write_bytes(b"another program's file")

    with Emulator(on_request=another_program_writes) as emu:
        for key, value in emu.env().items():
            monkeypatch.setenv(key, value)
        result = _run(src, out)
        assert emu.stats()["requests"] == 3
    assert result.exit_code == 1, result.output
    assert "appeared while the job ran" in result.output
    assert out.read_bytes() == b"another program's file"
    partial = out.with_name("out.parquet.partial")
    assert pl.read_parquet(partial)["answer"].to_list() == ANSWERS  # nothing lost
    assert not out.with_name("out.parquet.lock").exists()


@pytest.fixture
def held_emulator(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Emulator, threading.Event, threading.Event]]:
    """An emulator that holds every request until the test sets ``release``."""
    seen, release = threading.Event(), threading.Event()

    def hold(n: int) -> None:
        seen.set()
        release.wait(60)

    with Emulator(on_request=hold) as emu:
        for key, value in emu.env().items():
            monkeypatch.setenv(key, value)
        try:
            yield emu, seen, release
        finally:
            release.set()


@pytest.mark.slow
def test_two_runs_to_one_output_the_second_is_refused_naming_the_first(
    held_emulator: tuple[Emulator, threading.Event, threading.Event], tmp_path: Path
) -> None:
    emu, seen, release = held_emulator
    src, out = _input(tmp_path), tmp_path / "out.parquet"
    args = [sys.executable, "-m", "polars_azurechat", "run", str(src), str(out)]
    args += ["--column", "q", "--no-progress"]
    first = subprocess.Popen(
        args, env={**os.environ, **emu.env()}, stderr=subprocess.PIPE, text=True
    )
    try:
        assert seen.wait(60), "the first run never sent a request"
        second = _run(src, out)  # while the first one is answering
        assert second.exit_code == 2, second.output
        flat = _flat(second.output)
        assert _flat(f"pid {first.pid} on {socket.gethostname()}") in flat
        release.set()
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr
    assert f"wrote {out}" in stderr
    assert pl.read_parquet(out)["answer"].to_list() == ANSWERS
    assert emu.stats()["requests"] == 3  # the second run sent nothing
    again = _run(src, out)  # after it: the file exists
    assert again.exit_code == 2 and "--overwrite" in again.output


HOLD = textwrap.dedent(
    """
    import sys
    from polars_azurechat.outputs import OutputFile
    held = OutputFile(sys.argv[1], name="OUTPUT_PATH").open()
    print("held", flush=True)
    sys.stdin.read()
    """
)


@pytest.mark.slow
def test_the_output_of_a_killed_run_is_taken_over(
    emulator: Emulator, tmp_path: Path
) -> None:
    src, out = _input(tmp_path), tmp_path / "out.parquet"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        refused = _run(src, out)
        assert refused.exit_code == 2
        assert _flat(f"pid {child.pid} on") in _flat(refused.output)
    finally:
        child.kill()  # a kill -9: the lock file stays, the lock goes with the process
        child.communicate()
    lock = out.with_name("out.parquet.lock")
    assert lock.exists()
    result = _run(src, out)
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out)["answer"].to_list() == ANSWERS
    assert not lock.exists()
    assert emulator.stats()["requests"] == 3


# -- one batch state, one job (item 12) ----------------------------------------------

DEPLOYMENT = "gpt-4o-mini-batch"


def _batch_job(emu: Emulator, cache: Path, clock: FakeClock) -> pac.Completer:
    config = pac.ChatConfig(
        azure_endpoint=emu.url, api_key=emu.api_key, deployment=DEPLOYMENT
    )
    job = pac.Completer(
        config=config,
        cache=str(cache),
        mode="batch",
        max_tokens=20,
        progress=False,
        batch_poll_s=1.0,
    )
    assert job._batch is not None
    job._batch.settings.update(sleep=clock.blocking_sleep, clock=clock)
    return job


def test_a_batch_job_on_a_cache_another_job_runs_is_refused_before_any_upload(
    tmp_path: Path,
) -> None:
    clock = FakeClock(10_000.0)
    cache = tmp_path / "c.sqlite"
    with Emulator(clock=clock) as emu:
        with BatchStateStore(cache):  # what a job in batch mode holds while it runs
            with (
                _batch_job(emu, cache, clock) as job,
                pytest.raises(pac.CacheError, match="its batches are being run by"),
            ):
                job.run(QUESTIONS)
            refused = emu.stats()["batch"]
        more = [f"What is {i} + 1000?" for i in range(3, 6)]
        with _batch_job(emu, cache, clock) as job:  # the other job ended
            assert job.run(QUESTIONS) == ANSWERS
            # the file is a job's for one run, not for the job's life
            with _batch_job(emu, cache, clock) as later:
                assert later.run(more) == ["1003", "1004", "1005"]
        done = emu.stats()["batch"]
    assert (refused["files_uploaded"], refused["batches_created"]) == (0, 0)
    assert (done["files_uploaded"], done["batches_created"]) == (2, 2)
    assert not cache.with_name("c.sqlite.batch-lock").exists()


def test_batches_cancel_is_refused_while_a_job_runs_them(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite"
    SqliteCache(cache).close()
    with BatchStateStore(cache):
        listed = runner.invoke(app, ["batches", "--cache", str(cache)])
        cancel = runner.invoke(app, ["batches", "--cache", str(cache), "--cancel"])
    assert listed.exit_code == 0, listed.output  # reading needs no lock
    assert cancel.exit_code == 2, cancel.output
    assert "Traceback" not in cancel.output
    assert _flat("its batches are being run by another job") in _flat(cancel.output)


@pytest.mark.slow
def test_a_second_cli_run_on_a_batch_cache_is_refused_at_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, cache = _input(tmp_path), tmp_path / "c.sqlite"
    service = BatchService(
        validating_s=0.05,
        line_s=0.5,
        finalizing_s=0.05,
        cancelling_s=0.05,
        file_processing_s=0.02,
        tick_s=0.01,
    )
    batch = ["--mode", "batch", "--cache", str(cache), "--batch-poll-s", "0.05"]
    with Emulator(batches=service) as emu:
        for key, value in emu.env().items():
            monkeypatch.setenv(key, value)
        args = [sys.executable, "-m", "polars_azurechat", "run", str(src)]
        args += [str(tmp_path / "first.parquet"), "--column", "q", "--no-progress"]
        first = subprocess.Popen(
            [*args, *batch, "-v"],
            env={**os.environ, **emu.env(), "PYTHONUNBUFFERED": "1"},
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert first.stderr is not None
            for line in first.stderr:
                if "created batch" in line:
                    break
            second = _run(src, tmp_path / "second.parquet", *batch)
            stats = emu.stats()["batch"]
            first.send_signal(signal.SIGINT)
            first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    assert second.exit_code == 2, second.output
    flat = _flat(second.output)
    assert _flat(f"its batches are being run by another job (pid {first.pid}") in flat
    assert (stats["files_uploaded"], stats["batches_created"]) == (1, 1)
    assert not (tmp_path / "second.parquet").exists()
