"""Batch housekeeping against the emulator over HTTP: expiry, deletion, ``--cleanup``.

Azure keeps at most 500 files per resource. Every file batch mode uploads expires,
so do its batches' output and error files, a done chunk's files are deleted by the
job, and ``polars-azurechat batches --cleanup`` deletes what a crashed job left. The
emulator checks ``expires_after`` as Azure does and forgets a file once its expiry
is reached on its (fake) clock.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from typer.testing import CliRunner

import polars_azurechat as pac
from polars_azurechat.batch.api import FILE_EXPIRY_S
from polars_azurechat.cli import app
from polars_azurechat.config import DEFAULT_API_VERSION
from polars_azurechat.emulator import Emulator
from polars_azurechat.emulator._batch import BatchService
from polars_azurechat.emulator._errors import error_response
from polars_azurechat.emulator._files import FileStore

from .fakes import FakeClock

DEPLOYMENT = "gpt-4o-mini-batch"
API_VERSION = "2025-03-01-preview"  # the first classic one that takes expiries
OLD_API_VERSION = "2024-10-21"
CHAT: Any = "/chat/completions"  # Azure's endpoint (the SDK's types name OpenAI's)
FAST: dict[str, Any] = {
    "validating_s": 0.05,
    "line_s": 0.001,
    "finalizing_s": 0.05,
    "cancelling_s": 0.05,
    "file_processing_s": 0.02,
    "tick_s": 0.01,
}
cli = CliRunner()


class Killed(BaseException):
    """Stands for a crash of the job: nothing after it runs."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(10_000.0)


@pytest.fixture
def emu(clock: FakeClock) -> Iterator[Emulator]:
    with Emulator(clock=clock) as emulator:
        yield emulator


@pytest.fixture
def client(emu: Emulator) -> Iterator[openai.AzureOpenAI]:
    c = openai.AzureOpenAI(
        azure_endpoint=emu.url,
        api_key=emu.api_key,
        api_version=API_VERSION,
        max_retries=0,
    )
    yield c
    c.close()


def _job(
    emu: Emulator,
    cache: Path,
    clock: FakeClock | None = None,
    api_version: str | None = None,
    **kw: Any,
) -> pac.Completer:
    config = pac.ChatConfig(
        azure_endpoint=emu.url,
        api_key=emu.api_key,
        deployment=DEPLOYMENT,
        api_version=api_version or DEFAULT_API_VERSION,
    )
    options: dict[str, Any] = {
        "max_tokens": 20,
        "progress": False,
        "mode": "batch",
        "batch_poll_s": 1.0,
        **kw,
    }
    job = pac.Completer(config=config, cache=str(cache), **options)
    assert job._batch is not None
    if clock is not None:
        job._batch.settings.update(sleep=clock.blocking_sleep, clock=clock)
    return job


def _arith(n: int, start: int = 0) -> list[str]:
    return [f"What is {i} + 1000?" for i in range(start, start + n)]


def _all_files(c: openai.AzureOpenAI) -> list[Any]:
    return [*c.files.list(purpose="batch"), *c.files.list(purpose="batch_output")]


def _batch_files(cache: Path) -> list[tuple[str, str, float | None, str | None]]:
    with sqlite3.connect(cache) as db:
        rows = db.execute(
            "SELECT file_id, kind, deleted_at, outcome FROM batch_files ORDER BY rowid"
        ).fetchall()
    return [tuple(r) for r in rows]


# -- the emulator ------------------------------------------------------------------


def test_the_emulator_checks_expires_after_as_azure_does(
    client: openai.AzureOpenAI,
) -> None:
    data = b'{"x": 1}\n'
    for bad, why in [
        ({"anchor": "last_active_at", "seconds": 1_209_600}, "anchor"),
        ({"anchor": "created_at", "seconds": 3600}, "between 1209600 and 2592000"),
        ({"anchor": "created_at", "seconds": 2_592_001}, "between 1209600 and 2592000"),
    ]:
        with pytest.raises(openai.BadRequestError, match=why):
            client.files.create(
                file=("a.jsonl", data),
                purpose="batch",
                expires_after=bad,  # type: ignore[arg-type]
            )
    plain = client.files.create(file=("b.jsonl", data), purpose="batch")
    assert plain.expires_at is None
    for seconds in (1_209_600, 2_592_000):
        kept = client.files.create(
            file=("c.jsonl", data),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": seconds},
        )
        assert kept.expires_at == kept.created_at + seconds


def test_a_file_is_gone_once_its_expiry_passes(
    client: openai.AzureOpenAI, clock: FakeClock
) -> None:
    data = b'{"x": 1}\n'
    short = client.files.create(
        file=("a.jsonl", data),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 1_209_600},
    )
    plain = client.files.create(file=("b.jsonl", data), purpose="batch")
    clock.advance(1_209_599)
    assert client.files.retrieve(short.id).expires_at == short.expires_at
    clock.advance(1)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(short.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(short.id)
    assert [f.id for f in client.files.list(purpose="batch")] == [plain.id]


def test_output_expires_after_on_batch_create(
    client: openai.AzureOpenAI, clock: FakeClock
) -> None:
    line = {
        "custom_id": "k1",
        "method": "POST",
        "url": "/chat/completions",
        "body": {
            "model": DEPLOYMENT,
            "messages": [{"role": "user", "content": "What is 1 + 1?"}],
        },
    }
    file = client.files.create(
        file=("in.jsonl", json.dumps(line).encode() + b"\n"), purpose="batch"
    )
    clock.advance(1)
    with pytest.raises(openai.BadRequestError, match="output_expires_after"):
        client.batches.create(
            input_file_id=file.id,
            endpoint=CHAT,
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 60},
        )
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint=CHAT,
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 1_300_000},
    )
    clock.advance(10)
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.output_file_id and done.error_file_id
    output = client.files.retrieve(done.output_file_id)
    assert output.expires_at == output.created_at + 1_300_000
    clock.advance(1_300_000)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(done.output_file_id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(done.error_file_id)


# -- the job -----------------------------------------------------------------------


@pytest.mark.parametrize("version", [API_VERSION, OLD_API_VERSION])
def test_uploads_and_batch_outputs_carry_an_expiry(
    emu: Emulator,
    clock: FakeClock,
    client: openai.AzureOpenAI,
    tmp_path: Path,
    version: str,
) -> None:
    # an api-version older than 2025-03-01-preview takes no expiry (the emulator,
    # as Azure, refuses the argument): none is sent, and the job still deletes
    seen: list[Any] = []

    def look(step: str, chunk: str) -> None:
        if step == "done":  # before the files are deleted
            seen.extend(_all_files(client))

    with _job(emu, tmp_path / "c.sqlite", clock, api_version=version) as job:
        assert job._batch is not None
        job._batch.settings["hook"] = look
        assert job.run(_arith(3)) == ["1000", "1001", "1002"]
    assert sorted(f.purpose for f in seen) == ["batch", "batch_output", "batch_output"]
    assert FILE_EXPIRY_S == 14 * 24 * 3600  # Azure takes 14 to 30 days
    for f in seen:
        expected = None if version == OLD_API_VERSION else f.created_at + FILE_EXPIRY_S
        assert f.expires_at == expected, f
    assert _all_files(client) == []  # deleted either way


def test_a_finished_job_leaves_no_files_and_a_rerun_answers_from_the_cache(
    emu: Emulator, clock: FakeClock, client: openai.AzureOpenAI, tmp_path: Path
) -> None:
    cache = tmp_path / "c.sqlite"
    with _job(emu, cache, clock) as job:
        assert job.run(_arith(4)) == [str(i + 1000) for i in range(4)]
    first = emu.stats()["batch"]
    assert (first["files_uploaded"], first["files_deleted"]) == (1, 3)
    assert _all_files(client) == []
    recorded = _batch_files(cache)
    assert sorted(kind for _, kind, _, _ in recorded) == ["error", "input", "output"]
    assert all(
        at is not None and outcome == "deleted" for _, _, at, outcome in recorded
    )
    with _job(emu, cache, clock) as job:  # a rerun: nothing uploaded or deleted again
        assert job.run(_arith(4)) == [str(i + 1000) for i in range(4)]
        assert job.summary().cached == 4
    assert emu.stats()["batch"] == first
    cleaned = cli.invoke(
        app, ["batches", "--cache", str(cache), "--cleanup"], env=emu.env()
    )
    assert cleaned.exit_code == 0, cleaned.output
    assert "deleted 0 file(s) of 1 finished batch chunk(s)" in cleaned.output
    assert emu.stats()["batch"] == first  # recorded as deleted: not tried again


def test_a_failing_delete_does_not_fail_the_job_and_cleanup_retries(
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refuse = [True]
    delete = FileStore.delete_file

    async def flaky_delete(self: FileStore, request: Any) -> Any:
        if refuse[0]:
            return error_response(403, "Forbidden", "This key may not delete files.")
        return await delete(self, request)

    monkeypatch.setattr(FileStore, "delete_file", flaky_delete)  # before the routes
    cache = tmp_path / "c.sqlite"
    with Emulator(clock=clock) as emu:
        with (
            caplog.at_level(logging.WARNING, "polars_azurechat"),
            _job(emu, cache, clock) as job,
        ):
            assert job.run(_arith(2)) == ["1000", "1001"]
        assert "could not delete batch" in caplog.text
        assert emu.stats()["batch"]["files_deleted"] == 0
        recorded = _batch_files(cache)
        assert len(recorded) == 3
        assert all(
            at is None and "403" in str(outcome) for _, _, at, outcome in recorded
        )
        refuse[0] = False
        cleaned = cli.invoke(
            app, ["batches", "--cache", str(cache), "--cleanup"], env=emu.env()
        )
        stats = emu.stats()["batch"]
    assert cleaned.exit_code == 0, cleaned.output
    assert "deleted 3 file(s) of 1 finished batch chunk(s): file-" in cleaned.output
    assert stats["files_deleted"] == 3


def test_a_crashed_job_is_cleaned_by_batches_cleanup_and_running_batches_are_kept(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "c.sqlite"
    with Emulator(batches=BatchService(**FAST)) as emu:
        env = emu.env()
        c = openai.AzureOpenAI(
            azure_endpoint=emu.url, api_key=emu.api_key, api_version=API_VERSION
        )

        def crash_at(step: str) -> Any:
            def hook(name: str, chunk: str) -> None:
                if name == step:
                    raise Killed

            return hook

        # 1: killed after its answers were cached and its chunk marked done
        job = _job(emu, cache, batch_poll_s=0.05)
        assert job._batch is not None
        job._batch.settings["hook"] = crash_at("done")
        with pytest.raises(Killed):
            job.run(_arith(3))
        job.close()
        left = {f.id for f in _all_files(c)}
        assert len(left) == 3
        # 2: killed while its batch runs (an hour per line): live, never cleaned
        job = _job(emu, cache, batch_poll_s=0.05)
        assert job._batch is not None
        job._batch.settings["hook"] = crash_at("batch_recorded")
        with pytest.raises(Killed):
            job.run(["[emu:batch_slow=3600] What is 5 + 5?"])
        job.close()
        [running] = [f for f in c.files.list(purpose="batch") if f.id not in left]
        cleaned = cli.invoke(
            app, ["batches", "--cache", str(cache), "--cleanup"], env=env
        )
        after = {f.id for f in _all_files(c)}
        [batch] = [b for b in c.batches.list() if b.input_file_id == running.id]
        stats = emu.stats()["batch"]
        c.close()
    assert cleaned.exit_code == 0, cleaned.output
    assert "deleted 3 file(s) of 1 finished batch chunk(s)" in cleaned.output
    assert all(file_id in cleaned.output for file_id in left)
    assert "1 batch chunk(s) not finished: their files are kept" in cleaned.output
    assert emu.api_key not in cleaned.output
    assert after == {running.id}
    assert batch.status in ("validating", "in_progress")
    assert stats["files_deleted"] == 3 and stats["cancels"] == 0


def test_cleanup_finds_the_files_of_a_job_recorded_before_batch_files(
    emu: Emulator, clock: FakeClock, client: openai.AzureOpenAI, tmp_path: Path
) -> None:
    """A cache file from before this version: no batch_files rows for its chunks."""
    cache = tmp_path / "c.sqlite"
    with _job(emu, cache, clock) as job:
        assert job._batch is not None
        job._batch.settings["delete_files"] = False  # as an older version left them
        assert job.run(_arith(2)) == ["1000", "1001"]
    assert len(_all_files(client)) == 3
    with sqlite3.connect(cache) as db:
        db.execute("DELETE FROM batch_files")
    cleaned = cli.invoke(
        app, ["batches", "--cache", str(cache), "--cleanup"], env=emu.env()
    )
    assert cleaned.exit_code == 0, cleaned.output
    assert "deleted 3 file(s) of 1 finished batch chunk(s)" in cleaned.output
    assert _all_files(client) == []
