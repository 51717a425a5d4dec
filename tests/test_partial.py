"""Never call a partial answer done; check every path before paying; small things.

Each test here failed on the version before: truncated and filtered answers counted as
answered and cached, the CLI writing (and paying) before checking where to write, an
unusable cache failing with raw sqlite errors, a bar per chunk, a Null column raising,
a one-minute default timeout.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

import polars_azurechat as pac
from polars_azurechat.cli import app
from polars_azurechat.emulator import Emulator

runner = CliRunner()


def _flat(text: str) -> str:
    """Text without whitespace or the boxes the CLI draws (long paths wrap)."""
    return re.sub(r"[\s│╭╮╰╯─]+", "", text)


LONG = "Say hello to everyone in the room, one by one, by name."  # > 3 tokens


def test_a_truncated_answer_is_kept_marked_counted_and_reported(
    emulator: Emulator, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    cache = tmp_path / "c.sqlite"
    with pac.Completer(max_tokens=3, output="struct", cache=cache) as job:
        [row] = job.run([LONG])
        summary = job.summary()
    assert row is not None and row["finish_reason"] == "length"
    assert row["content"] and row["error"] is None  # kept (on_truncated="keep")
    assert (summary.answered, summary.truncated) == (1, 1)
    assert "1 cut at max_tokens" in str(summary)
    assert "1 of 1 answers were cut at max_tokens" in caplog.text


def test_on_truncated_error_fails_the_row_and_caches_nothing(
    emulator: Emulator, tmp_path: Path
) -> None:
    cache = tmp_path / "c.sqlite"
    for _ in range(2):
        with pac.Completer(
            max_tokens=3, output="struct", on_truncated="error", cache=cache
        ) as job:
            [row] = job.run([LONG])
        assert row is not None and row["content"] is None
        assert row["error"].startswith(
            "TruncatedError: the answer was cut at max_tokens=3"
        )
    assert emulator.stats()["requests"] == 2  # not cached: sent again


def test_an_answer_cut_by_the_output_filter_is_an_error_with_its_categories(
    emulator: Emulator, tmp_path: Path
) -> None:
    cache = tmp_path / "c.sqlite"
    for _ in range(2):
        with (
            pac.Completer(output="struct", cache=cache, on_error="raise") as job,
            pytest.raises(pac.CompletionFailed) as info,
        ):
            job.run(["[emu:filter_output] What is 2 + 2?", "What is 1 + 1?"])
        cause = info.value.exceptions[0].__cause__
        assert isinstance(cause, pac.ContentFilterError)
        assert cause.categories == ("violence",)
        assert "cut by Azure's output content filter (categories: violence)" in str(
            cause
        )
    # the filtered one is never cached; the good one is
    assert emulator.stats()["requests"] == 3


def test_cli_output_shows_the_finish_reason(tmp_path: Path) -> None:
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pl.DataFrame({"q": [LONG, "What is 1 + 1?"]}).write_parquet(src)
    result = runner.invoke(
        app,
        ["run", str(src), str(out), "--column", "q", "--emulator", "--max-tokens", "3"],
    )
    assert result.exit_code == 0, result.output
    df = pl.read_parquet(out)
    assert df["answer_finish_reason"].to_list() == ["length", "stop"]
    assert "1 cut at max_tokens" in result.output


def _run_cli(tmp_path: Path, out: Path, *extra: str) -> Any:
    src = tmp_path / "in.parquet"
    pl.DataFrame({"q": ["What is 1 + 1?", "[emu:filter] no"]}).write_parquet(src)
    return runner.invoke(
        app, ["run", str(src), str(out), "--column", "q", "--emulator", *extra]
    )


@pytest.mark.parametrize(
    ("make_out", "message"),
    [
        (lambda d: d / "missing" / "out.parquet", "does not exist"),
        (lambda d: d, "is a directory"),
        (lambda d: d / "in.parquet", "exists; pass --overwrite"),
    ],
    ids=["missing-dir", "directory", "input-itself"],
)
def test_cli_checks_the_output_before_any_request(
    tmp_path: Path, make_out: Any, message: str
) -> None:
    out = make_out(tmp_path)
    result = _run_cli(tmp_path, out)
    assert result.exit_code == 2, result.output
    assert _flat(message) in _flat(result.output)
    assert "Traceback" not in result.output
    assert "requests:" not in result.output  # no run happened


def test_cli_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    src = tmp_path / "in.parquet"
    result = _run_cli(tmp_path, src, "--overwrite")
    assert result.exit_code == 2
    assert _flat("is the input file") in _flat(result.output)


def test_cli_with_on_error_raise_keeps_every_answer_and_counts_the_file(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.parquet"
    result = _run_cli(tmp_path, out, "--on-error", "raise")
    assert result.exit_code == 1
    assert "1 of 2 rows failed (--on-error raise)" in result.output
    partial = tmp_path / "out.parquet.partial"
    assert not out.exists() and partial.exists()
    df = pl.read_parquet(partial)
    assert df["answer"].to_list() == ["2", None]
    assert "content filter" in df["answer_error"][1]


@pytest.mark.parametrize("kind", ["directory", "not-sqlite", "other-program"])
def test_cli_unusable_cache_is_one_clear_usage_error(tmp_path: Path, kind: str) -> None:
    cache = tmp_path / "cache.sqlite"
    if kind == "directory":
        cache.mkdir()
    elif kind == "not-sqlite":
        cache.write_bytes(b"these are not the bytes of a database" * 10)
    else:
        with sqlite3.connect(cache) as db:
            db.execute("CREATE TABLE orders (id INTEGER)")
        db.close()
    result = _run_cli(tmp_path, tmp_path / "out.parquet", "--cache", str(cache))
    assert result.exit_code == 2, result.output
    assert _flat(f"cache {cache.resolve()}:") in _flat(result.output)
    assert "Traceback" not in result.output and "requests:" not in result.output


def test_a_null_column_gives_nulls_and_sends_nothing(emulator: Emulator) -> None:
    df = pl.DataFrame({"q": [None, None, None]})
    assert df.schema["q"] == pl.Null
    out = df.select(
        pl.col("q").chat.complete(), s=pl.col("q").chat.complete(output="struct")
    )
    assert out["q"].to_list() == [None, None, None]
    assert out["q"].dtype == pl.String
    assert out["s"].null_count() == 3
    assert emulator.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("kw", "expected"),
    [({"max_tokens": 20}, 10.4), ({}, 91.92), ({"timeout_s": 3.0}, 3.0)],
)
def test_attempt_timeout_fits_the_answer(
    emulator: Emulator, kw: dict[str, Any], expected: float
) -> None:
    with pac.Completer(**kw) as job:
        transport: Any = job.engine.transport
        assert transport._timeout.total == expected


def test_one_bar_per_run_that_ends_at_100_percent(
    emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    df = pl.DataFrame({"q": [f"What is {i} + 1?" for i in range(150)]})
    frame = pl.concat([df] * 4, rechunk=False)
    with pac.Completer(progress=True, max_concurrency=8) as job:
        frame.lazy().select(job.expr("q")).collect(engine="streaming")
        job.summary()  # ends the run (it would end 0.2 s after its last chunk)
        err = capsys.readouterr().err
    final = [line for line in err.replace("\r", "\n").splitlines() if "600/600" in line]
    assert final and "100%" in final[-1]
    # one bar: tqdm starts each bar at 0 rows
    starts = [line for line in err.replace("\r", "\n").splitlines() if " 0/" in line]
    assert len({line.split("|")[0] for line in starts}) <= 1
    assert err.count("\n") == 1, err  # a closed bar ends its line once


def test_cache_unusable_in_python_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(pac.CacheError, match=str(tmp_path)):
        pac.Completer(
            config=pac.ChatConfig(azure_endpoint="http://127.0.0.1:9", api_key="k"),
            deployment="d",
            cache=tmp_path,
        )
    assert os.listdir(tmp_path) == []
