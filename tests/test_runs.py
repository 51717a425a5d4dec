"""Runs: each collect is a run with its own deadline, fatal error and counters.

The job's concurrency bound, quota, connections and cache outlive runs; one background
loop serves every job; the pipeline answers batches in order with bounded read-ahead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_series_equal

import polars_azurechat as pac
from polars_azurechat import functions
from polars_azurechat._types import ChatRequest
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator
from polars_azurechat.errors import AuthenticationError, DeadlineExceededError


def _questions(n: int, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame({"q": [f"What is {i} + 1?" for i in range(start, start + n)]})


def _answers(n: int, start: int = 0) -> list[str]:
    return [str(i + 1) for i in range(start, start + n)]


def test_an_expression_collected_again_after_its_deadline_gets_a_fresh_one(
    emulator: Emulator,
) -> None:
    job = pac.Completer(deadline_s=0.3, max_attempts=1, output="struct")
    expr = job.expr("q")
    hanging = pl.DataFrame({"q": ["[emu:hang*1] What is 1 + 1?"]})
    first = hanging.select(expr)["q"].struct.field("error").to_list()
    assert first[0] is not None and ("deadline" in first[0] or "Timeout" in first[0])
    # collected again at once: a new run, a new deadline, every row answered
    second = _questions(5).select(expr)["q"].struct.field("content").to_list()
    assert second == _answers(5)
    assert job.engine.runs.count == 2
    last, total = job.summary(last_run=True), job.summary()
    assert (last.rows, last.answered, last.failed) == (5, 5, 0)
    assert (total.rows, total.answered, total.failed) == (6, 5, 1)
    job.close()


def test_deadline_error_is_the_runs_own(emulator: Emulator) -> None:
    with pac.Completer(deadline_s=0.2, max_attempts=1, output="struct") as job:
        [row] = job.run(["[emu:hang*1] What is 1 + 1?"])
        assert row is not None and row["content"] is None
        assert "DeadlineExceededError" in row["error"] or "Timeout" in row["error"]
        [row] = job.run(["What is 2 + 2?"])
        assert row is not None
        assert {k: row[k] for k in list(row)[:6]} == {
            "content": "4",
            "finish_reason": "stop",
            "prompt_tokens": job.summary(last_run=True).prompt_tokens,
            "completion_tokens": 1,
            "attempts": 1,
            "error": None,
        }
    assert issubclass(DeadlineExceededError, pac.AzureChatError)


def test_a_stopped_run_does_not_stop_the_next_and_each_401_keeps_its_request_id(
    emulator: Emulator,
) -> None:
    config = ChatConfig(
        azure_endpoint=emulator.url, api_key="sk-not-this-one-123", deployment="d"
    )
    job = pac.Completer(config=config)
    expr = job.expr("q")
    seen = []
    for _ in range(2):
        with pytest.raises(AuthenticationError) as info:
            _questions(3).select(expr)
        seen.append(info.value)
        original = job.last_error
        assert isinstance(original, AuthenticationError)
        assert info.value.request_id == original.request_id is not None
        assert info.value.status_code == 401
    assert seen[0].request_id != seen[1].request_id
    assert "sk-not-this-one-123" not in str(seen[0])
    # the same expression after the key is fixed: a new run, nothing sticky
    emulator.settings.api_key = "sk-not-this-one-123"
    assert _questions(3).select(expr)["q"].to_list() == _answers(3)
    job.close()


def test_chunks_larger_than_a_slice_are_answered_in_order(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(functions, "SLICE_ROWS", 7)
    df = _questions(100).with_columns(
        pl.when(pl.int_range(100) % 9 == 0).then(None).otherwise(pl.col("q")).alias("q")
    )
    with pac.Completer(max_concurrency=5) as job:
        out = df.select(job.expr("q"))["q"]
        summary = job.summary()
    expected = pl.Series(
        "q", [None if i % 9 == 0 else str(i + 1) for i in range(100)], dtype=pl.String
    )
    assert_series_equal(out, expected)
    assert summary.null_rows == 12 and summary.answered == 88
    assert emulator.stats()["peak_in_flight"] <= 5


def test_large_rows_are_sliced_by_bytes_and_answered_in_order(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a slice holds about SLICE_BYTES of the column: rows of ~1 KB in 4 KB slices
    monkeypatch.setattr(functions, "SLICE_BYTES", 4_000)
    monkeypatch.setattr(functions, "MIN_SLICE_ROWS", 2)
    padding = " " * 1_000
    df = pl.DataFrame({"q": [f"What is {i} + 1?{padding}" for i in range(30)]})
    assert functions.slice_rows(df["q"]) in (3, 4)
    sizes: list[int] = []
    real = functions.series_to_requests

    def counted(s: pl.Series, **kw: object) -> object:
        sizes.append(len(s))
        return real(s, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(functions, "series_to_requests", counted)
    with pac.Completer(max_concurrency=4) as job:
        out = df.select(job.expr("q"))["q"].to_list()
    assert out == [str(i + 1) for i in range(30)]
    assert sum(sizes) == 30 and max(sizes) <= 4 and len(sizes) >= 8


def test_pipeline_reads_ahead_at_most_what_it_is_told(emulator: Emulator) -> None:
    pulled = 0
    yielded = 0
    ahead: list[int] = []

    def batches() -> Iterator[tuple[int, list[ChatRequest | None]]]:
        nonlocal pulled
        for b in range(10):
            pulled += 1
            ahead.append(pulled - yielded)
            yield b, [ChatRequest([{"role": "user", "content": f"What is {b} + 0?"}])]

    with pac.Completer() as job:
        out = []
        for key, results in job.engine.pipeline(batches(), read_ahead=3):
            yielded += 1
            out.append((key, results[0].content if results[0] else None))
    assert out == [(b, str(b)) for b in range(10)]
    assert max(ahead) <= 3


def test_one_loop_thread_serves_every_job(emulator: Emulator) -> None:
    before = {t.name for t in threading.enumerate()}
    jobs = [pac.Completer() for _ in range(5)]
    for i, job in enumerate(jobs):
        assert job.run([f"What is {i} + 0?"]) == [str(i)]
    loops = [t for t in threading.enumerate() if t.name == "polars-azurechat-loop"]
    assert len(loops) == 1
    assert {t.name for t in threading.enumerate()} - before <= {"polars-azurechat-loop"}
    for job in jobs:
        job.close()


def test_connections_stay_open_across_collects(emulator: Emulator) -> None:
    with pac.Completer() as job:
        expr = job.expr("q")
        _questions(3).select(expr)
        transport: Any = job.engine.transport
        session = transport._session
        assert session is not None and not session.closed
        _questions(3, start=3).select(expr)
        assert transport._session is session
    assert session.closed


@pytest.mark.slow
def test_import_loads_no_network_or_arrow_stack() -> None:
    code = (
        "import sys, polars_azurechat; "
        "print(sorted(m for m in ('openai', 'aiohttp', 'pyarrow', 'tiktoken', "
        "'tenacity', 'typer', 'tqdm') if m in sys.modules))"
    )
    # the import itself, without the prewarm thread (which loads some of them after)
    env = {**os.environ, "POLARS_AZURECHAT_PREWARM": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_prewarm_loads_what_a_job_needs_off_the_importing_thread() -> None:
    code = (
        "import sys, threading, polars_azurechat\n"
        "from polars_azurechat import _warm\n"
        "names = [t.name for t in threading.enumerate()]\n"
        "_warm.wait(60)\n"
        "print('polars-azurechat-prewarm' in names, "
        "sorted(m for m in ('aiohttp', 'tenacity', 'pyarrow', 'openai') "
        "if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if k != "POLARS_AZURECHAT_PREWARM"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert out.stdout.strip() == "True ['aiohttp', 'tenacity']"
