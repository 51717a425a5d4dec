"""BatchRunner and its state against the emulator's Batch API, over HTTP with the openai SDK.

The runner and the emulator share one fake clock that moves only when the runner
sleeps, so a batch's 24 hours pass in milliseconds. A crash is stood for by raising
from the runner's hook at each step, in-process; one test kills a child process with
SIGKILL for real. After a rerun, the emulator's counters show that no file was uploaded
and no batch created twice, and no line answered twice.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import openai
import pytest

from polars_azurechat._types import ChatRequest, ChatResult
from polars_azurechat.batch.poll import BatchProgress
from polars_azurechat.batch.runner import (
    BatchFailedError,
    BatchIncompleteError,
    BatchRunner,
)
from polars_azurechat.batch.state import BatchStateStore, _transaction
from polars_azurechat.emulator import Emulator
from polars_azurechat.emulator._batch import BatchService
from polars_azurechat.engine import loop as _loop
from polars_azurechat.errors import (
    ConfigurationError,
    ContentFilterError,
    InputError,
    ServerError,
    TruncatedError,
)
from polars_azurechat.store.sqlite import request_key

from .fakes import FakeClock

DEPLOYMENT = "gpt-4o-mini-batch"
API_VERSION = "2024-10-21"
PARAMS = {"max_tokens": 50}


class Killed(BaseException):
    """Stands for a kill -9: nothing after it runs."""


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


_CLIENTS: list[openai.AzureOpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close the clients a test made (a crashed run leaves its own open)."""
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def _client(emu: Emulator) -> openai.AzureOpenAI:
    client = openai.AzureOpenAI(
        azure_endpoint=emu.url,
        api_key=emu.api_key,
        api_version=API_VERSION,
        max_retries=0,
    )
    _CLIENTS.append(client)
    return client


def _key(emu: Emulator, prompt: str) -> str:
    return request_key(
        host=emu.url.split("://")[1],
        deployment=DEPLOYMENT,
        messages=[{"role": "user", "content": prompt}],
        params=PARAMS,
    )


def _rows(emu: Emulator, prompts: list[str]) -> list[tuple[str, ChatRequest]]:
    return [
        (_key(emu, p), ChatRequest(messages=[{"role": "user", "content": p}]))
        for p in prompts
    ]


def _runner(
    emu: Emulator, clock: FakeClock, state: BatchStateStore, **kw: Any
) -> BatchRunner:
    options: dict[str, Any] = {
        "deployment": DEPLOYMENT,
        "state": state,
        "params": PARAMS,
        "poll_interval_s": 1.0,
        "max_poll_interval_s": 20.0,
        "file_poll_s": 0.25,
        "sleep": clock.blocking_sleep,
        "clock": clock,
        **kw,
    }
    return BatchRunner(_client(emu), **options)


def _content(
    results: Mapping[str, ChatResult], rows: list[tuple[str, Any]]
) -> list[Any]:
    return [results[key].content for key, _ in rows]


def _arith(n: int) -> list[str]:
    return [f"What is {i} + 1000?" for i in range(n)]


def test_rows_come_back_in_order_from_shuffled_output(
    emu: Emulator, clock: FakeClock, state: BatchStateStore
) -> None:
    prompts = _arith(25) + _arith(5)  # 5 asked twice: one line each
    rows = _rows(emu, prompts)
    bad = ("bad-key", ChatRequest(messages=[], error=InputError("empty messages")))
    seen: list[BatchProgress] = []
    runner = _runner(emu, clock, state, progress=seen.append, delete_files=False)
    results = runner.run([*rows, bad])  # its file kept, to be read below
    assert _content(results, rows) == [str(i + 1000) for i in [*range(25), *range(5)]]
    assert all(results[k].error is None and results[k].attempts == 1 for k, _ in rows)
    assert results["bad-key"].error == "InputError: empty messages"
    assert (
        results[rows[0][0]].prompt_tokens
        and results[rows[0][0]].finish_reason == "stop"
    )
    stats = emu.stats()
    assert stats["requests"] == 0  # not one request to the chat endpoint
    assert stats["batch"]["files_uploaded"] == 1
    assert stats["batch"]["batches_created"] == 1
    assert stats["batch"]["lines_answered"] == 25
    statuses = [p.batches[0].status for p in seen]
    assert statuses[0] in ("planned", "validating")
    assert "in_progress" in statuses and statuses[-1] == "completed"
    assert seen[-1].completed == 25 and seen[-1].finished == 1
    # the file: one line per distinct request, keyed by the cache key
    client = _client(emu)
    [file] = client.files.list(purpose="batch")
    assert file.filename.startswith("polars-azurechat-") and file.filename.endswith(
        ".jsonl"
    )
    lines = [json.loads(x) for x in client.files.content(file.id).text.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted({k for k, _ in rows})
    line = lines[0]
    assert (line["method"], line["url"], line["body"]["model"]) == (
        "POST",
        "/chat/completions",
        DEPLOYMENT,
    )
    assert line["body"]["max_tokens"] == 50
    [chunk] = state.chunks()
    assert (chunk.phase, chunk.status, chunk.lines) == ("done", "completed", 25)
    assert [job.batch_id for job in state.jobs()] == [chunk.batch_id]
    assert clock.slept < 60  # polled with backoff on the fake clock


def test_a_job_past_the_file_limits_is_split(
    emu: Emulator, clock: FakeClock, state: BatchStateStore
) -> None:
    rows = _rows(emu, _arith(23))
    results = _runner(emu, clock, state, max_lines=5).run(rows)
    assert _content(results, rows) == [str(i + 1000) for i in range(23)]
    stats = emu.stats()["batch"]
    assert (stats["files_uploaded"], stats["batches_created"]) == (5, 5)
    assert sorted(c.lines for c in state.chunks()) == [3, 5, 5, 5, 5]
    # by bytes: 1,000 bytes hold 4 lines of ~220 bytes
    rows = _rows(emu, [f"Say {i}" for i in range(12)])
    runner = _runner(emu, clock, state, max_bytes=1000, delete_files=False)
    assert 200 < len(runner._chunker.line(*rows[0])) <= 250
    results = runner.run(rows)
    assert _content(results, rows) == [f"Echo: Say {i}" for i in range(12)]
    sizes = [f.bytes for f in _client(emu).files.list(purpose="batch")]  # newest first
    # the first run's 5 files were deleted once its chunks were done
    assert len(sizes) == 3 and max(sizes) <= 1000


def test_per_line_errors_become_row_errors(
    emu: Emulator, clock: FakeClock, state: BatchStateStore
) -> None:
    prompts = [
        "What is 2 + 2?",
        "[emu:filter] hello",
        "[emu:500*5] hello",
        "[emu:filter_output] a long enough answer to cut",
        "x " * 200,  # longer than max_tokens
    ]
    rows = _rows(emu, prompts)
    results = _runner(emu, clock, state, on_truncated="error").run(rows)
    ok, filtered, server, cut, long = (results[k] for k, _ in rows)
    assert ok.content == "4" and ok.error is None
    assert isinstance(filtered.exception, ContentFilterError)
    assert filtered.exception.status_code == 400
    assert isinstance(server.exception, ServerError)
    assert server.exception.request_id is not None
    assert server.exception.request_id in str(server.exception)
    assert isinstance(cut.exception, ContentFilterError) and cut.content is None
    assert isinstance(long.exception, TruncatedError) and long.finish_reason == "length"
    assert emu.stats()["batch"]["lines_failed"] == 2


def test_an_expired_batch_gives_errors_for_the_rows_it_never_answered(
    clock: FakeClock, state: BatchStateStore
) -> None:
    with Emulator(clock=clock, batches=BatchService(completion_window_s=3600)) as emu:
        rows = _rows(emu, [*_arith(4), "[emu:batch_expire] What is 1 + 1?"])
        results = _runner(emu, clock, state).run(rows)
    assert _content(results, rows)[:4] == [str(i + 1000) for i in range(4)]
    late = results[rows[4][0]].exception
    assert isinstance(late, BatchIncompleteError) and late.status == "expired"
    assert "expired before this request was answered" in str(late)
    assert late.batch_id is not None and late.batch_id in str(late)
    [chunk] = state.chunks()
    assert (chunk.phase, chunk.status) == ("done", "expired")
    assert chunk.error == "1 of 5 failed"


def test_a_cancelled_batch_keeps_what_was_answered(
    emu: Emulator, clock: FakeClock, state: BatchStateStore
) -> None:
    rows = _rows(emu, [f"[emu:batch_slow=30] What is {i} + 1?" for i in range(6)])
    cancelled: list[str] = []

    def progress(p: BatchProgress) -> None:
        if p.completed >= 2 and not cancelled:
            cancelled.extend(runner.cancel())

    runner = _runner(emu, clock, state, progress=progress)
    results = runner.run(rows)
    done = [r for r in results.values() if r.exception is None]
    left = [r.exception for r in results.values() if r.exception is not None]
    assert len(cancelled) == 1 and 2 <= len(done) < 6
    assert all(isinstance(e, BatchIncompleteError) for e in left)
    assert {e.status for e in left if isinstance(e, BatchIncompleteError)} == {
        "cancelled"
    }
    assert state.chunks()[0].status == "cancelled"


def test_a_batch_that_fails_validation_names_the_reason(
    clock: FakeClock, state: BatchStateStore
) -> None:
    with Emulator(clock=clock, deployments=frozenset({"gpt-4o-mini"})) as emu:
        rows = _rows(emu, _arith(3))
        results = _runner(emu, clock, state).run(rows)
    errors = [results[k].exception for k, _ in rows]
    assert all(isinstance(e, BatchFailedError) for e in errors)
    first = errors[0]
    assert isinstance(first, BatchFailedError) and first.code == "model_not_found"
    assert "failed validation: model_not_found" in str(first)
    assert DEPLOYMENT in str(first)
    assert state.chunks()[0].status == "failed"


def test_a_line_named_by_a_validation_error_gets_its_own_message(
    emu: Emulator, clock: FakeClock, state: BatchStateStore
) -> None:
    rows = _rows(emu, _arith(3))
    runner = _runner(emu, clock, state)
    # one line the server refuses: its url is not the batch's endpoint
    chunker = runner._chunker
    chunker.line = _with_a_bad_url(chunker.line, rows[1][0])  # type: ignore[method-assign]
    results = runner.run(rows)
    mine = results[rows[1][0]].exception
    other = results[rows[0][0]].exception
    assert isinstance(mine, BatchFailedError) and mine.code == "url_mismatch"
    assert mine.line is not None and "at this row's line" in str(mine)
    assert isinstance(other, BatchFailedError) and "url_mismatch" in str(other)


def _with_a_bad_url(line: Callable[[str, ChatRequest], bytes], key: str) -> Any:
    def patched(k: str, req: ChatRequest) -> bytes:
        data = line(k, req)
        return (
            data.replace(b'"/chat/completions"', b'"/v1/responses"')
            if k == key
            else data
        )

    return patched


def _peak_enqueued(seen: list[BatchProgress]) -> int:
    running = ("validating", "in_progress", "finalizing")
    return max(sum(b.status in running for b in p.batches) for p in seen)


def test_a_given_enqueued_token_limit_submits_batches_one_after_another(
    clock: FakeClock, state: BatchStateStore
) -> None:
    service = BatchService(enqueued_tokens_limit=200, line_s=1.0)
    with Emulator(clock=clock, batches=service) as emu:
        rows = _rows(emu, _arith(20))  # ~16 tokens each: ~320 in all
        seen: list[BatchProgress] = []
        runner = _runner(
            emu, clock, state, enqueued_tokens_limit=200, progress=seen.append
        )
        results = runner.run(rows)
        stats = emu.stats()["batch"]
    assert _content(results, rows) == [str(i + 1000) for i in range(20)]
    assert stats["batches"] == {"completed": stats["batches_created"]}
    assert stats["batches_created"] >= 2
    assert all(c.tokens <= 200 for c in state.chunks())
    assert _peak_enqueued(seen) == 1  # never two at once: they would not fit


def test_the_limit_is_learned_from_token_limit_exceeded(
    clock: FakeClock, state: BatchStateStore
) -> None:
    service = BatchService(enqueued_tokens_limit=100, line_s=1.0)
    with Emulator(clock=clock, batches=service) as emu:
        rows = _rows(emu, _arith(15))  # 3 files of 5 lines, ~80 tokens each
        seen: list[BatchProgress] = []
        runner = _runner(emu, clock, state, max_lines=5, progress=seen.append)
        results = runner.run(rows)
        stats = emu.stats()["batch"]
    assert _content(results, rows) == [str(i + 1000) for i in range(15)]
    # all 3 went at once; the quota took one: the others were refused, then sent
    # again one at a time as the one before finished
    refused = stats["batches"].get("failed", 0)
    assert refused >= 1 and stats["batches"]["completed"] == 3
    assert stats["batches_created"] == 3 + refused and stats["files_uploaded"] == 3
    assert stats["lines_answered"] == 15
    assert runner.learned_limit is not None
    assert sum(len(state.jobs(c.chunk)) for c in state.chunks()) == 3 + refused
    submitted_after = seen[next(i for i, p in enumerate(seen) if p.finished) :]
    assert _peak_enqueued(submitted_after) == 1


def test_a_file_alone_over_the_quota_fails_with_the_reason(
    clock: FakeClock, state: BatchStateStore
) -> None:
    with Emulator(clock=clock, batches=BatchService(enqueued_tokens_limit=20)) as emu:
        rows = _rows(emu, _arith(5))
        results = _runner(emu, clock, state).run(rows)
    error = results[rows[0][0]].exception
    assert isinstance(error, BatchFailedError) and error.code == "token_limit_exceeded"
    assert "limit of 20" in str(error)


def test_a_request_over_the_given_limit_is_refused_before_sending(
    emu: Emulator, clock: FakeClock, state: BatchStateStore
) -> None:
    rows = _rows(emu, ["word " * 100, "What is 1 + 1?"])
    results = _runner(emu, clock, state, enqueued_tokens_limit=50).run(rows)
    assert isinstance(results[rows[0][0]].exception, BatchFailedError)
    assert results[rows[1][0]].content == "2"
    assert emu.stats()["batch"]["lines_answered"] == 1


def test_structured_outputs_need_a_recent_api_version(
    emu: Emulator, state: BatchStateStore
) -> None:
    old = openai.AzureOpenAI(
        azure_endpoint=emu.url, api_key=emu.api_key, api_version="2024-06-01"
    )
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    with pytest.raises(ConfigurationError, match="2024-08-01"):
        BatchRunner(
            old,
            deployment=DEPLOYMENT,
            state=state,
            params={"response_format": schema},
        )


def test_an_async_client_works_too(
    emu: Emulator, clock: FakeClock, state: BatchStateStore
) -> None:
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=emu.url,
        api_key=emu.api_key,
        api_version=API_VERSION,
        max_retries=0,
    )
    rows = _rows(emu, _arith(3))
    runner = BatchRunner(
        client,
        deployment=DEPLOYMENT,
        state=state,
        params=PARAMS,
        poll_interval_s=1,
        sleep=clock.blocking_sleep,
        clock=clock,
    )
    try:
        assert _content(runner.run(rows), rows) == ["1000", "1001", "1002"]
    finally:
        _loop.call(client.close())


# -- resume --------------------------------------------------------------------------

STEPS = [
    "planned",
    "uploading",
    "uploaded",
    "file_recorded",
    "file_processed",
    "creating",
    "created",
    "batch_recorded",
    "polled",
    "collected",
    "on_results",
    "done",
]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("which", [0, 1])
def test_a_rerun_after_a_crash_at_any_step_submits_nothing_twice(
    emu: Emulator, clock: FakeClock, tmp_path: Path, step: str, which: int
) -> None:
    """Crash at ``step`` of the first or second of two chunks, then rerun."""
    rows = _rows(emu, _arith(8))
    cache: dict[str, ChatResult] = {}  # what the integrator's answer cache would hold
    path = tmp_path / "state.sqlite"
    chunks_seen: list[str] = []

    def hook(name: str, chunk: str) -> None:
        if chunk not in chunks_seen:
            chunks_seen.append(chunk)
        if name == step and chunks_seen.index(chunk) == which:
            raise Killed

    delivered: list[int] = []

    def on_results(results: Mapping[str, ChatResult]) -> None:
        keep(results)
        delivered.append(len(results))
        if step == "on_results" and len(delivered) == which + 1:
            raise Killed  # cached, but the chunk is not marked done

    def keep(results: Mapping[str, ChatResult]) -> None:
        cache.update((k, r) for k, r in results.items() if r.exception is None)

    with BatchStateStore(path) as store:
        runner = _runner(
            emu, clock, store, max_lines=4, hook=hook, on_results=on_results
        )
        with pytest.raises(Killed):
            runner.run(rows)
    with BatchStateStore(path) as store:
        todo = [(k, r) for k, r in rows if k not in cache]
        rerun = _runner(emu, clock, store, max_lines=4, on_results=keep)
        results = rerun.run(todo, cached=set(cache))
        chunks = store.chunks()
    answers = {**cache, **results}
    assert [answers[k].content for k, _ in rows] == [str(i + 1000) for i in range(8)]
    stats = emu.stats()["batch"]
    assert stats["files_uploaded"] == 2, stats
    assert stats["batches_created"] == 2, stats
    assert stats["lines_answered"] == 8, stats
    assert sorted(c.phase for c in chunks) == ["done", "done"]


def test_a_rerun_of_a_finished_job_sends_nothing(
    emu: Emulator, clock: FakeClock, state: BatchStateStore
) -> None:
    rows = _rows(emu, _arith(4))
    cache: dict[str, ChatResult] = {}
    _runner(emu, clock, state, on_results=cache.update).run(rows)
    before = emu.stats()["batch"]
    assert _runner(emu, clock, state).run([r for r in rows if r[0] not in cache]) == {}
    assert emu.stats()["batch"] == before


def test_rows_that_failed_are_sent_again_reusing_the_file(
    clock: FakeClock, state: BatchStateStore
) -> None:
    with Emulator(clock=clock, batches=BatchService(completion_window_s=100)) as emu:
        rows = _rows(emu, _arith(3))
        client = _client(emu)

        def cancel_at_once(step: str, chunk: str) -> None:
            if step == "batch_recorded":  # cancelled before it starts: no row answered
                for batch in client.batches.list():
                    client.batches.cancel(batch.id)

        results = _runner(emu, clock, state, hook=cancel_at_once).run(rows)
        assert all(
            isinstance(r.exception, BatchIncompleteError) for r in results.values()
        )
        again = _runner(emu, clock, state).run(rows)
        stats = emu.stats()["batch"]
    assert _content(again, rows) == ["1000", "1001", "1002"]
    # the same chunk again: its file was still there, so only a new batch
    assert (stats["files_uploaded"], stats["batches_created"]) == (1, 2)
    [chunk] = state.chunks()
    assert chunk.attempt == 2 and chunk.status == "completed"


def test_a_chunk_never_uploaded_and_no_longer_asked_for_is_abandoned(
    emu: Emulator, clock: FakeClock, state: BatchStateStore
) -> None:
    rows = _rows(emu, _arith(4))

    def crash(step: str, chunk: str) -> None:
        if step == "uploading":
            raise Killed

    with pytest.raises(Killed):
        _runner(emu, clock, state, hook=crash).run(rows)
    results = _runner(emu, clock, state).run(rows[:2])  # a smaller job
    assert _content(results, rows[:2]) == ["1000", "1001"]
    phases = sorted(c.phase for c in state.chunks())
    assert phases == ["abandoned", "done"]
    assert emu.stats()["batch"]["files_uploaded"] == 1


def test_the_state_file_is_private_and_holds_no_secret(
    emu: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "state.sqlite"
    with BatchStateStore(path) as store:
        _runner(emu, clock, store).run(_rows(emu, _arith(2)))
    assert path.stat().st_mode & 0o777 == 0o600
    db = sqlite3.connect(path)
    dump = "\n".join(db.iterdump())
    db.close()
    assert emu.api_key not in dump
    assert "What is" not in dump  # prompts stay out of the state


# -- a real kill -9 ------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, logging, os, signal, sys
    import openai
    from polars_azurechat.batch.runner import BatchRunner
    from polars_azurechat.batch.state import BatchStateStore
    from polars_azurechat._types import ChatRequest
    from polars_azurechat.store.sqlite import request_key

    logging.basicConfig(level=logging.INFO)
    state_path, kill_at = sys.argv[1], sys.argv[2]
    client = openai.AzureOpenAI(
        azure_endpoint=os.environ["AZURE_OPENAI_ENDPOINT"],
        api_key=os.environ["AZURE_OPENAI_API_KEY"],
        api_version="2024-10-21",
        max_retries=0,
    )
    host = client.base_url.host
    prompts = [f"What is {i} + 1000?" for i in range(40)]
    rows = []
    for p in prompts:
        messages = [{"role": "user", "content": p}]
        key = request_key(host=host, deployment="gpt-4o-mini-batch",
                          messages=messages, params={})
        rows.append((key, ChatRequest(messages=messages)))
    created = []

    def hook(step, chunk):
        if step == "created":
            created.append(chunk)
            if kill_at == "created" and len(created) == 2:
                os.kill(os.getpid(), signal.SIGKILL)  # before the id is written
        if step == "polled" and kill_at == "polling":
            print("polling", flush=True)

    with BatchStateStore(state_path) as store:
        runner = BatchRunner(client, deployment="gpt-4o-mini-batch", state=store,
                             max_lines=10, poll_interval_s=0.05,
                             max_poll_interval_s=0.2, file_poll_s=0.02, hook=hook)
        results = runner.run(rows)
    print(json.dumps([results[k].content for k, _ in rows]))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["created", "polling"])
def test_a_real_kill_9_then_a_rerun_sends_no_request_twice(
    tmp_path: Path, kill_at: str
) -> None:
    service = BatchService(
        validating_s=0.05,
        line_s=0.02,
        finalizing_s=0.05,
        cancelling_s=0.05,
        file_processing_s=0.02,
        tick_s=0.01,
    )
    state_path = tmp_path / "state.sqlite"
    with Emulator(batches=service) as emu:
        env = {**os.environ, **emu.env(), "PYTHONUNBUFFERED": "1"}
        args = [sys.executable, "-c", CHILD, str(state_path), kill_at]
        child = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            if kill_at == "polling":
                assert child.stdout is not None
                assert child.stdout.readline().strip() == "polling"
                child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            for stream in (child.stdout, child.stderr):
                if stream is not None:
                    stream.close()
        assert child.returncode == -signal.SIGKILL
        first = emu.stats()["batch"]
        rerun = subprocess.run(
            [sys.executable, "-c", CHILD, str(state_path), "never"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert rerun.returncode == 0, rerun.stderr
        stats = emu.stats()["batch"]
    answers = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert answers == [str(i + 1000) for i in range(40)]
    assert first["batches_created"] >= 1
    # 4 files of 10 lines: each uploaded once, each batch created once
    assert stats["files_uploaded"] == 4, (first, stats)
    assert stats["batches_created"] == 4, (first, stats)
    assert stats["lines_answered"] == 40, (first, stats)
    if kill_at == "created":  # its id was never written: found by its metadata
        assert (
            "found batch" in rerun.stderr and "created before a crash" in rerun.stderr
        )
    else:
        assert "attaching to batch chunk" in rerun.stderr


@pytest.mark.parametrize("after_commit", [False, True])
def test_an_interrupt_in_a_state_transaction_stays_an_interrupt(
    tmp_path: Path, after_commit: bool
) -> None:
    """Ctrl-C inside a write: rolled back; just after its COMMIT: kept. Either way the
    KeyboardInterrupt goes on (a ROLLBACK with no transaction used to replace it)."""
    db = sqlite3.connect(tmp_path / "s.sqlite", isolation_level=None)
    db.execute("CREATE TABLE t (x INTEGER)")

    def write() -> None:
        with _transaction(db):
            db.execute("INSERT INTO t VALUES (1)")
            if after_commit:
                db.execute("COMMIT")  # the interrupt lands right after the commit
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write()
    assert not db.in_transaction
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == int(after_commit)
    db.close()
