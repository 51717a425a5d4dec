"""Batch mode's waits are bounded: the run's deadline, and a file that never processes.

Issue 23, item 8: ``deadline_s`` was ignored in batch mode (2 s asked, 18 s taken), and
an uploaded file whose status never became ``processed`` was polled for ever. The
runner and the emulator share one fake clock that moves only when the runner sleeps
(as in tests/test_batch.py), so a wait of half an hour passes in milliseconds; the
emulator keeps a file ``pending`` with ``[emu:file_pending]`` in its content.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import polars_azurechat as pac
from polars_azurechat.batch.state import BatchStateStore
from polars_azurechat.cli import app
from polars_azurechat.emulator import Emulator
from polars_azurechat.emulator._batch import BatchService
from polars_azurechat.errors import BatchFailedError, DeadlineExceededError

from .fakes import FakeClock
from .test_batch import _arith, _client, _content, _rows, _runner

DEPLOYMENT = "gpt-4o-mini-batch"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(10_000.0)


@pytest.fixture
def emu(clock: FakeClock) -> Iterator[Emulator]:
    with Emulator(clock=clock) as emulator:
        yield emulator


@pytest.fixture
def state(tmp_path: Path) -> Iterator[BatchStateStore]:
    with BatchStateStore(tmp_path / "state.sqlite") as store:
        yield store


# -- a file that never becomes processed ---------------------------------------------


def test_the_emulator_keeps_a_file_pending_when_told(
    emu: Emulator, clock: FakeClock
) -> None:
    client = _client(emu)
    held = client.files.create(
        file=("a.jsonl", b'{"x": "[emu:file_pending]"}\n'), purpose="batch"
    )
    plain = client.files.create(file=("b.jsonl", b'{"x": 1}\n'), purpose="batch")
    clock.advance(3600.0)
    assert str(client.files.retrieve(held.id).status) == "pending"
    assert client.files.retrieve(plain.id).status == "processed"


def test_a_file_that_stays_pending_fails_its_rows_naming_it(
    emu: Emulator, clock: FakeClock, state: BatchStateStore
) -> None:
    # two files of 3 lines: the first (sorted by key) holds the held line or not;
    # either way only the held file's rows fail
    rows = _rows(emu, [*_arith(5), "[emu:file_pending] What is 1 + 1?"])
    start = clock()
    results = _runner(emu, clock, state, max_lines=3, file_wait_s=600.0).run(rows)
    waited = clock() - start
    [held_chunk] = [c for c in state.chunks() if c.status == "failed"]
    held_keys = set(state.keys(held_chunk.chunk))
    assert rows[5][0] in held_keys
    for key, _ in rows:
        r = results[key]
        if key in held_keys:
            assert isinstance(r.exception, BatchFailedError)
            message = str(r.exception)
            assert held_chunk.file_id is not None and held_chunk.file_id in message
            assert "still 'pending' after 600 s" in message
            assert "batch_file_wait_s=600" in message
        else:
            assert r.exception is None and r.content is not None
    # bounded: the wait ended at file_wait_s (plus the other file's batch)
    assert 600 <= waited < 700
    stats = emu.stats()["batch"]
    assert (stats["files_uploaded"], stats["batches_created"]) == (2, 1)
    assert held_chunk.phase == "done" and "600 s" in (held_chunk.error or "")


def test_a_rerun_waits_for_the_same_file_again(
    emu: Emulator, clock: FakeClock, state: BatchStateStore
) -> None:
    rows = _rows(emu, ["[emu:file_pending=1000] What is 2 + 2?", "What is 3 + 3?"])
    first = _runner(emu, clock, state, file_wait_s=600.0).run(rows)
    assert all(isinstance(r.exception, BatchFailedError) for r in first.values())
    again = _runner(emu, clock, state, file_wait_s=600.0).run(rows)
    assert _content(again, rows) == ["4", "6"]
    stats = emu.stats()["batch"]
    # the file was kept and waited for again: one upload, one batch
    assert (stats["files_uploaded"], stats["batches_created"]) == (1, 1)


# -- the run's deadline ---------------------------------------------------------------


def test_the_deadline_stops_polling_and_the_batch_keeps_running(
    emu: Emulator, clock: FakeClock, state: BatchStateStore
) -> None:
    rows = _rows(emu, [*_arith(3), "[emu:batch_slow=500] What is 5 + 5?"])
    start = clock()
    results = _runner(emu, clock, state, deadline=start + 30.0, deadline_s=30.0).run(
        rows
    )
    assert clock() - start <= 30.0  # 2 s asked took 18 s: now it takes what is asked
    for key, _ in rows:
        error = results[key].exception
        assert isinstance(error, DeadlineExceededError)
        message = str(error)
        assert message.startswith("deadline_s=30 passed while batch batch_")
        assert "keeps running on Azure" in message
        assert str(state.path) in message and "--cancel" in message
    [chunk] = state.chunks()
    assert chunk.phase == "submitted" and chunk.live  # resumable
    assert emu.stats()["batch"]["batches"] == {"in_progress": 1}
    # a rerun without a deadline collects the same batch: nothing submitted twice
    again = _runner(emu, clock, state).run(rows)
    assert _content(again, rows) == ["1000", "1001", "1002", "10"]
    stats = emu.stats()["batch"]
    assert (stats["files_uploaded"], stats["batches_created"]) == (1, 1)


def test_the_deadline_bounds_the_wait_for_a_file(
    emu: Emulator, clock: FakeClock, state: BatchStateStore
) -> None:
    rows = _rows(emu, ["[emu:file_pending] What is 2 + 2?"])
    start = clock()
    results = _runner(emu, clock, state, deadline=start + 45.0, deadline_s=45.0).run(
        rows
    )
    assert clock() - start <= 45.0
    error = results[rows[0][0]].exception
    assert isinstance(error, DeadlineExceededError)
    [chunk] = state.chunks()
    assert f"its input file {chunk.file_id} was uploaded" in str(error)
    assert "nothing was sent for it" in str(error)
    assert chunk.phase == "uploaded" and chunk.live  # a rerun waits for it again
    assert emu.stats()["batch"]["batches_created"] == 0


def test_chunks_not_yet_submitted_at_the_deadline_are_submitted_by_a_rerun(
    clock: FakeClock, state: BatchStateStore
) -> None:
    # an enqueued-token limit lets one batch run at a time; each takes 25 s
    service = BatchService(enqueued_tokens_limit=100, line_s=5.0)
    with Emulator(clock=clock, batches=service) as emu:
        rows = _rows(emu, [*_arith(9), "What is 7 + 7?"])
        start = clock()
        runner = _runner(
            emu,
            clock,
            state,
            max_lines=5,
            enqueued_tokens_limit=100,
            deadline=start + 20.0,
            deadline_s=20.0,
        )
        results = runner.run(rows)
        assert clock() - start <= 20.0
        messages = {str(results[k].exception).split(" (", 1)[0] for k, _ in rows}
        assert any("was still 'in_progress'" in m for m in messages)
        assert any("before this request's batch was created" in m for m in messages)
        phases = sorted(c.phase for c in state.chunks())
        assert phases == ["planned", "submitted"]  # both live: resumable
        assert emu.stats()["batch"]["files_uploaded"] == 1
        again = _runner(emu, clock, state, max_lines=5, enqueued_tokens_limit=100).run(
            rows
        )
        stats = emu.stats()["batch"]
    assert _content(again, rows) == [*(str(i + 1000) for i in range(9)), "14"]
    assert (stats["files_uploaded"], stats["batches_created"]) == (2, 2)


# -- the option, end to end -----------------------------------------------------------


def _job(emu: Emulator, cache: Path, clock: FakeClock, **kw: Any) -> pac.Completer:
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
        output="struct",
        **kw,
    )
    assert job._batch is not None
    job._batch.settings.update(sleep=clock.blocking_sleep, clock=clock)
    return job


def test_deadline_s_is_honoured_in_batch_mode_and_a_rerun_collects(
    emu: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    rows = [*_arith(2), "[emu:batch_slow=600] What is 1 + 1?"]
    start = clock()
    with _job(emu, tmp_path / "c.sqlite", clock, deadline_s=2.0) as job:
        out = job.run(rows)
        summary = job.summary()
    assert clock() - start <= 2.0
    assert all(r is not None and r["content"] is None for r in out)
    assert all(
        r is not None and r["error"].startswith("DeadlineExceededError: deadline_s=2 ")
        for r in out
    )
    assert summary.failed == 3
    with _job(emu, tmp_path / "c.sqlite", clock) as job:
        again = job.run(rows)
    assert [r and r["content"] for r in again] == ["1000", "1001", "2"]
    assert emu.stats()["batch"]["batches_created"] == 1


def test_batch_file_wait_s_is_an_option(
    emu: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="batch_file_wait_s must be a positive"):
        pac.ChatOptions(mode="batch", cache="c.sqlite", batch_file_wait_s=0)
    start = clock()
    with _job(emu, tmp_path / "c.sqlite", clock, batch_file_wait_s=90.0) as job:
        [row] = job.run(["[emu:file_pending] hello"])
    assert 90.0 <= clock() - start < 100.0
    assert row is not None and "still 'pending' after 90 s" in row["error"]


def test_the_cli_honours_deadline_s_in_batch_mode(tmp_path: Path) -> None:
    import polars as pl

    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pl.DataFrame({"q": ["What is 1 + 1?", "[emu:batch_slow=600] hi"]}).write_parquet(
        src
    )
    args = ["run", str(src), str(out), "--column", "q", "--emulator"]
    args += ["--mode", "batch", "--cache", str(tmp_path / "c.sqlite")]
    args += ["--deadline-s", "0.3", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    errors = pl.read_parquet(out)["answer_error"].to_list()
    assert all(e.startswith("DeadlineExceededError: deadline_s=0.3 ") for e in errors)
