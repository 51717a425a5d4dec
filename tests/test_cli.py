from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from polars_azurechat.cli import app
from polars_azurechat.emulator import Emulator

QUESTIONS = Path(__file__).parents[1] / "data" / "questions.parquet"
runner = CliRunner()


def test_run_offline_answers_every_question(tmp_path: Path) -> None:
    out = tmp_path / "answers.parquet"
    result = runner.invoke(
        app,
        [
            "run",
            str(QUESTIONS),
            str(out),
            "--column",
            "messages",
            "--emulator",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    df = pl.read_parquet(out)
    assert df.columns == [
        "id",
        "messages",
        "expected",
        "answer",
        "answer_error",
        "answer_finish_reason",
    ]
    assert df["answer_finish_reason"].to_list() == ["stop"] * 100
    assert df.height == 100
    assert (df["answer"] == df["expected"]).all()
    assert df["answer_error"].null_count() == 100
    assert "100 answered, 0 failed" in result.output


def test_run_against_a_configured_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pl.DataFrame({"q": ["What is 2 + 2?", None, "[emu:filter] no"]}).write_parquet(src)
    with Emulator() as emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        result = runner.invoke(
            app,
            [
                "run",
                str(src),
                str(out),
                "--column",
                "q",
                "--output-column",
                "a",
                "--max-tokens",
                "5",
                "--no-progress",
            ],
        )
        assert emu.stats()["requests"] == 2
    assert result.exit_code == 1  # a row failed
    df = pl.read_parquet(out)
    assert df["a"].to_list() == ["4", None, None]
    errors = df["a_error"].to_list()
    assert errors[:2] == [None, None] and "content filter" in errors[2]
    assert "1 answered, 1 failed, 1 null" in result.output
    assert emu.api_key not in result.output


def test_existing_output_is_refused_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "answers.parquet"
    out.write_bytes(b"keep me")
    args = ["run", str(QUESTIONS), str(out), "--emulator", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "--overwrite" in result.output
    assert out.read_bytes() == b"keep me"
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert pl.read_parquet(out).height == 100


@pytest.mark.parametrize(
    ("make_input", "column", "message"),
    [
        (lambda p: p.write_text("not parquet"), "messages", "not a readable Parquet"),
        (
            lambda p: pl.DataFrame({"x": [1]}).write_parquet(p),
            "messages",
            "no column 'messages'",
        ),
        (lambda p: pl.DataFrame({"x": [1]}).write_parquet(p), "x", "not Int64"),
    ],
)
def test_bad_input_is_a_usage_error(
    tmp_path: Path, make_input: object, column: str, message: str
) -> None:
    src = tmp_path / "in.parquet"
    make_input(src)  # type: ignore[operator]
    result = runner.invoke(
        app,
        [
            "run",
            str(src),
            str(tmp_path / "o.parquet"),
            "--column",
            column,
            "--emulator",
        ],
    )
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.slow
def test_module_entry_point_shows_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "polars_azurechat", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    assert "run" in proc.stdout and "emulator" in proc.stdout


def test_wrong_key_stops_with_a_clear_message_and_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "answers.parquet"
    with Emulator() as emu:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", emu.url)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", "sk-wrong-secret-value")
        monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", "gpt-4o-mini")
        caplog.set_level("DEBUG")
        result = runner.invoke(
            app,
            [
                "run",
                str(QUESTIONS),
                str(out),
                "--max-concurrency",
                "3",
                "--no-progress",
            ],
        )
        assert emu.stats()["requests"] <= 3
    assert result.exit_code == 1
    assert "access denied" in result.output
    assert "sk-wrong-secret-value" not in result.output
    assert "sk-wrong-secret-value" not in caplog.text
    assert not out.exists()
    assert not list(tmp_path.glob("*.partial"))


def _answer_q(src: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> pl.DataFrame:
    """``run`` on column ``q`` of ``src`` against an emulator; the output file read."""
    with Emulator() as emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        result = runner.invoke(
            app, ["run", str(src), str(out), "--column", "q", "--no-progress"]
        )
    assert result.exit_code == 0, result.output
    return pl.read_parquet(out)


def test_run_streams_in_batches_and_keeps_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import polars_azurechat.cli as cli

    monkeypatch.setattr(cli, "BATCH_ROWS", 64)
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    n = 500
    pl.DataFrame(
        {
            "i": range(n),
            "q": [f"[emu:delay={i % 7}] What is {i} + 3?" for i in range(n)],
        }
    ).write_parquet(src, row_group_size=100)
    df = _answer_q(src, out, monkeypatch)
    assert df["i"].to_list() == list(range(n))  # written in input order
    assert df["answer"].to_list() == [str(i + 3) for i in range(n)]


def test_run_cuts_batches_of_large_rows_by_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    import polars_azurechat.cli as cli
    import polars_azurechat.functions as functions

    # rows of ~2 KB (a photo's data URL is 67 KB) in batches of about 10 KB
    monkeypatch.setattr(functions, "SLICE_BYTES", 10_000)
    monkeypatch.setattr(functions, "MIN_SLICE_ROWS", 2)
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    n = 60
    padding = " " * 2_000
    pl.DataFrame(
        {"i": range(n), "q": [f"What is {i} + 3?{padding}" for i in range(n)]}
    ).write_parquet(src, row_group_size=25, compression="uncompressed")
    assert 3 <= cli._batch_rows(pq.ParquetFile(src)) <= 5
    sizes: list[int] = []
    real = cli.Completer.requests

    def counted(self: object, rows: pl.Series) -> object:
        sizes.append(len(rows))
        return real(self, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(cli.Completer, "requests", counted)
    df = _answer_q(src, out, monkeypatch)
    assert df["i"].to_list() == list(range(n))
    assert df["answer"].to_list() == [str(i + 3) for i in range(n)]
    assert sum(sizes) == n and max(sizes) <= 5


def test_run_on_an_empty_file_writes_the_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pl.DataFrame({"q": []}, schema={"q": pl.String}).write_parquet(src)
    with Emulator() as emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        result = runner.invoke(
            app, ["run", str(src), str(out), "--column", "q", "--no-progress"]
        )
        assert emu.stats()["requests"] == 0
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out).schema == pl.Schema(
        {
            "q": pl.String,
            "answer": pl.String,
            "answer_error": pl.String,
            "answer_finish_reason": pl.String,
        }
    )


def test_run_with_a_schema_file_writes_typed_columns(tmp_path: Path) -> None:
    import json

    src, dst, schema = (
        tmp_path / "in.parquet",
        tmp_path / "out.parquet",
        tmp_path / "sum.json",
    )
    pl.DataFrame({"q": ["What is 2 + 3?", "What is 40 + 2?"]}).write_parquet(src)
    schema.write_text(
        json.dumps(
            {
                "title": "Sum",
                "type": "object",
                "properties": {"total": {"type": "integer"}},
                "required": ["total"],
            }
        )
    )
    args = ["run", str(src), str(dst), "--column", "q", "--emulator", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--response-format", str(schema)])
    assert result.exit_code == 0, result.output
    out = pl.read_parquet(dst)
    assert out.schema["answer"] == pl.Struct({"total": pl.Int64})
    assert out["answer"].struct.field("total").to_list() == [5, 42]

    schema.write_text("{not json")
    bad = CliRunner().invoke(
        app, [*args, "--overwrite", "--response-format", str(schema)]
    )
    assert bad.exit_code == 2
    assert "not JSON" in " ".join(bad.output.replace("│", " ").split())


def _free_cache(tmp_path: Path) -> Path:
    """A cache file whose emulator port (a hash of its path) no program holds now."""
    import socket

    from polars_azurechat._cli_emulator import cache_port

    for i in range(20):
        cache = tmp_path / f"c{i}.sqlite"
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", cache_port(cache)))
            except OSError:
                continue
        return cache
    pytest.fail("20 cache ports taken")


def test_an_emulator_run_with_a_cache_resumes_on_the_cache_s_port(
    tmp_path: Path,
) -> None:
    # run --emulator started its own emulator on a free port, and the cache's keys name
    # the port: a rerun sent everything again. With --cache it listens on a port the
    # cache file names, so a rerun finds the answers
    src, cache = tmp_path / "in.parquet", _free_cache(tmp_path)
    pl.DataFrame({"q": ["What is 1 + 1?", "What is 2 + 2?"]}).write_parquet(src)
    args = ["run", str(src), str(tmp_path / "out.parquet"), "--column", "q"]
    args += ["--emulator", "--cache", str(cache), "--no-progress", "--overwrite"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert re.search(r"requests:\s+2 ", first.output), first.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "2 from cache" in again.output
    assert re.search(r"requests:\s+0 ", again.output), again.output


def test_an_emulator_off_its_cache_s_port_says_a_rerun_cannot_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import contextlib
    import socket

    import polars_azurechat as pac
    from polars_azurechat._cli_emulator import cache_port, start_emulator
    from polars_azurechat.cli import _kept_after_stop

    cache = _free_cache(tmp_path)
    options = pac.ChatOptions(cache=str(cache))
    with contextlib.ExitStack() as stack:
        config, _, resumes = start_emulator(stack, options)
        assert resumes and config.azure_endpoint.endswith(f":{cache_port(cache)}")
    with contextlib.ExitStack() as stack, socket.socket() as taken:
        taken.bind(("127.0.0.1", cache_port(cache)))
        taken.listen()
        config, _, resumes = start_emulator(stack, options)
        assert not resumes
        assert not config.azure_endpoint.endswith(f":{cache_port(cache)}")
    assert "a rerun will not find this run's answers" in caplog.text
    # a Redis URL names its port as given (no password in the warning)
    secret = "redis://:s3cr3t@127.0.0.1:1/0"
    assert cache_port(secret) == cache_port(secret) and "/" in secret
    with contextlib.ExitStack() as stack, socket.socket() as taken:
        taken.bind(("127.0.0.1", cache_port(secret)))
        taken.listen()
        caplog.clear()
        start_emulator(stack, pac.ChatOptions(cache=secret))
    assert "redis://127.0.0.1:1/0" in caplog.text and "s3cr3t" not in caplog.text
    with pac.Completer(config=config, cache=str(cache)) as job:
        own = _kept_after_stop(job, job.options, emulator=True)
        fixed = _kept_after_stop(job, job.options)
    assert own.startswith(f"what was answered is in {cache}, but this run's own")
    assert "sends everything again" in own and "emulator --port N" in own
    batch = job.options.replace(mode="batch")
    with pac.Completer(config=config, cache=str(cache)) as job:
        gone = _kept_after_stop(job, batch, emulator=True)
    assert "its batches with it: a rerun sends what was not collected" in gone
    assert fixed == f"answers so far are in {cache}: run the same command to resume"
    # batch mode: the emulator's batches end with it, whatever its port
    with contextlib.ExitStack() as stack:
        _, _, resumes = start_emulator(stack, options.replace(mode="batch"))
    assert not resumes
