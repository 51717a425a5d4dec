from __future__ import annotations

from pathlib import Path

import polars as pl
from typer.testing import CliRunner

import polars_azurechat as pac
from polars_azurechat.cli import app
from polars_azurechat.emulator import Emulator

QUESTIONS = Path(__file__).parents[1] / "data" / "questions.parquet"


def test_plan_sends_nothing_and_matches_what_a_run_counts(emulator: Emulator) -> None:
    df = pl.read_parquet(QUESTIONS)
    estimate = pac.plan(df["messages"], max_tokens=20)
    assert emulator.stats()["requests"] == 0
    job = pac.Completer(max_tokens=20)
    df.select(job.expr("messages"))
    summary = job.summary()
    assert estimate.requests == summary.requests == 100
    # the emulator estimates tokens its own way, as Azure does: close, not equal
    assert estimate.prompt_tokens != summary.prompt_tokens
    assert (
        abs(estimate.prompt_tokens - summary.prompt_tokens)
        <= 0.1 * summary.prompt_tokens
    )
    assert estimate.estimated_cost_usd is not None
    assert summary.estimated_cost_usd is not None
    assert summary.estimated_cost_usd <= estimate.estimated_cost_usd  # an upper bound


def test_plan_flags_rows_and_bounds_wall_time() -> None:
    rows: list[object] = ["short", "x " * 5000, None, []]
    estimate = pac.plan(
        rows, max_tokens=100, context_tokens=2000, requests_per_minute=6
    )
    frame = estimate.rows
    assert frame["over_context"].to_list() == [False, True, None, None]
    assert frame["error"].to_list() == [None, None, None, "empty message list"]
    assert estimate.unsendable == 1 and estimate.over_context == 1
    # 2 requests, 1 per 10-s window: the second waits one window
    assert estimate.bound_by == "requests_per_minute"
    assert estimate.estimated_wall_s == 11.0


def test_plan_without_max_tokens_counts_the_reserved_context() -> None:
    estimate = pac.plan(["hi"], tokens_per_minute=6000)
    assert estimate.rows["request_tokens"][0] > 4096
    assert "prompt only" in str(estimate)


def test_cli_plan_prints_totals_and_writes_rows(tmp_path: Path) -> None:
    out = tmp_path / "plan.parquet"
    result = CliRunner().invoke(
        app, ["plan", str(QUESTIONS), "--max-tokens", "20", "--rows-out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "100 requests" in result.output
    assert pl.read_parquet(out).height == 100
