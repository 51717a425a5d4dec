"""Batch mode and the spending cap end to end: Completer, complete_many, the CLI.

Against the emulator over HTTP. Where waiting matters the emulator and the job's
BatchRunner share one fake clock that moves only when the runner sleeps (as in
tests/test_batch.py), so a batch's hours pass in milliseconds. The CLI tests run on
the real clock against an emulator at a fast batch pace; child processes running
``run --mode batch`` are killed with SIGKILL, or interrupted with SIGINT or SIGTERM,
and the rerun must submit nothing twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

import polars_azurechat as pac
from polars_azurechat.cli import app
from polars_azurechat.emulator import Emulator
from polars_azurechat.emulator._batch import BatchService
from polars_azurechat.summary import PRICES, SpendingCap, price_for
from polars_azurechat.transport import tokens as _tokens

from .fakes import FakeClock

DEPLOYMENT = "gpt-4o-mini-batch"
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


def _job(
    emu: Emulator, cache: Path, clock: FakeClock | None = None, **kw: Any
) -> pac.Completer:
    config = pac.ChatConfig(
        azure_endpoint=emu.url, api_key=emu.api_key, deployment=DEPLOYMENT
    )
    options: dict[str, Any] = {"max_tokens": 20, "progress": False, **kw}
    if options.get("mode") == "batch":
        options.setdefault("batch_poll_s", 1.0)
    job = pac.Completer(config=config, cache=str(cache), **options)
    if clock is not None and job._batch is not None:
        job._batch.settings.update(sleep=clock.blocking_sleep, clock=clock)
    return job


def _batch_stats(emu: Emulator) -> dict[str, Any]:
    stats = emu.stats()
    return {**stats["batch"], "requests": stats["requests"]}


def _arith(n: int, start: int = 0) -> list[str]:
    return [f"What is {i} + 1000?" for i in range(start, start + n)]


def _kind(row: dict[str, Any] | None) -> str | None:
    if row is None or row["error"] is None:
        return None
    return str(row["error"]).split(":", 1)[0]


# -- the same column as online ---------------------------------------------------------


def test_batch_mode_gives_the_same_rows_and_errors_as_online(
    emu: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    rows: list[Any] = [
        "What is 2 + 2?",
        None,
        "What is 2 + 2?",  # asked twice: one line
        [],  # cannot be sent: InputError in both modes
        "[emu:filter] hello",
        "[emu:filter_output] a long enough answer to cut",
        "[emu:500*99] hello",
        "x " * 200,  # cut at max_tokens: a TruncatedError with on_truncated="error"
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    ]
    common: dict[str, Any] = {
        "output": "struct",
        "on_truncated": "error",
        "max_attempts": 2,
    }
    with _job(emu, tmp_path / "online.sqlite", **common) as job:
        online = job.run(rows)
    emu.reset()
    with _job(emu, tmp_path / "batch.sqlite", clock, mode="batch", **common) as job:
        batch = job.run(rows)
        summary = job.summary()
    stats = _batch_stats(emu)
    assert stats["requests"] == 0  # nothing to the chat endpoint in batch mode
    assert (stats["files_uploaded"], stats["batches_created"]) == (1, 1)
    assert stats["lines_answered"] == 6  # distinct sendable rows
    assert [None if r is None else r["content"] for r in batch] == [
        None if r is None else r["content"] for r in online
    ]
    assert [_kind(r) for r in batch] == [_kind(r) for r in online]
    assert [_kind(r) for r in batch] == [
        None,
        None,
        None,
        "InputError",
        "ContentFilterError",
        "ContentFilterError",
        "ServerError",
        "TruncatedError",
        None,
    ]
    assert batch[0] is not None and batch[0]["content"] == "4"
    # provenance from the output lines
    assert batch[0]["request_id"] and batch[0]["model"] == "gpt-4o-mini"
    assert batch[0]["deployment"] == DEPLOYMENT
    assert (summary.mode, summary.batches, summary.batch_lines) == ("batch", 1, 6)
    assert (summary.answered, summary.failed, summary.null_rows) == (3, 5, 1)
    assert summary.deduplicated == 1 and summary.requests == 0
    assert "batches:   1 (6 lines" in str(summary)


def test_the_expression_in_batch_mode_equals_online(
    emu: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    df = pl.DataFrame({"q": [*_arith(6), None, "[emu:filter] no"]})
    with _job(emu, tmp_path / "o.sqlite") as job:
        online = df.select(job.expr("q"))
    with _job(emu, tmp_path / "b.sqlite", clock, mode="batch") as job:
        batch = df.select(job.expr("q"))
        summary = job.summary()
    assert batch.equals(online)
    assert batch["q"].to_list()[:6] == [str(i + 1000) for i in range(6)]
    assert summary.failed == 1 and summary.batch_answered == 6
    # the cost of batch rows is the batch price
    price = price_for("gpt-4o-mini")
    assert price is not None and summary.estimated_cost_usd is not None
    cost = (
        summary.prompt_tokens * price[0] + summary.completion_tokens * price[1]
    ) / 1e6
    assert summary.estimated_cost_usd == pytest.approx(cost / 2)


def test_typed_answers_in_batch_mode(
    emu: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    typed: dict[str, Any] = {
        "response_format": pl.Struct({"total": pl.Int64}),
        "max_tokens": 50,
    }
    rows = ["What is 53 + 53?", "What is 6 * 7?", "[emu:bad_json] What is 1 + 1?"]
    with _job(emu, tmp_path / "o.sqlite", max_attempts=1, **typed) as job:
        online = job.run(rows)
    with _job(emu, tmp_path / "b.sqlite", clock, mode="batch", **typed) as job:
        batch = job.run(rows)
        failed = job.summary().failed
    assert batch == online
    assert batch[:2] == [{"total": 106}, {"total": 42}]
    assert batch[2] is None and failed == 1  # a SchemaValidationError, as online


def test_two_batch_columns_of_one_eager_select_share_a_cache(
    emu: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    # Polars runs both at once: the second job of this process waits for the first
    # (another process would be refused), then runs its own batch
    cache = tmp_path / "b.sqlite"
    df = pl.DataFrame({"q": _arith(5), "p": _arith(5, 100)})
    with (
        _job(emu, cache, clock, mode="batch") as first,
        _job(emu, cache, clock, mode="batch", max_tokens=30) as second,
    ):
        out = df.with_columns(a=first.expr("q"), b=second.expr("p"))
    assert out["a"].to_list() == [str(i + 1000) for i in range(5)]
    assert out["b"].to_list() == [str(i + 1000) for i in range(100, 105)]
    assert _batch_stats(emu)["batches_created"] == 2


def test_a_streaming_collect_is_one_set_of_batches(
    emu: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    parts = [pl.DataFrame({"q": _arith(50, start)}) for start in (0, 50, 100)]
    lf = pl.concat(parts, rechunk=False).lazy()
    with _job(emu, tmp_path / "b.sqlite", clock, mode="batch") as job:
        out = lf.with_columns(a=job.expr("q")).collect(engine="streaming")
    assert out["a"].to_list() == [str(i + 1000) for i in range(150)]
    stats = _batch_stats(emu)
    assert (stats["files_uploaded"], stats["batches_created"]) == (1, 1)


def test_batch_mode_with_an_entra_token_provider(tmp_path: Path) -> None:
    issued: list[str] = []
    with Emulator(key_auth=False, batches=BatchService(**FAST)) as emu:

        def provider() -> str:
            issued.append(emu.issue_token(ttl_s=600))
            return issued[-1]

        config = pac.ChatConfig(
            azure_endpoint=emu.url,
            azure_ad_token_provider=provider,
            deployment=DEPLOYMENT,
        )
        with pac.Completer(
            config=config,
            mode="batch",
            cache=str(tmp_path / "c.sqlite"),
            batch_poll_s=0.05,
            progress=False,
        ) as job:
            # key auth is off: every files/batches call carried the token
            assert job.run(_arith(3)) == ["1000", "1001", "1002"]
        assert emu.stats()["batch"]["batches_created"] == 1
    assert len(issued) == 1  # one token, cached by the job


def test_batch_mode_needs_a_cache_file() -> None:
    with pytest.raises(ValueError, match=r"mode='batch' needs cache=FILE"):
        pac.Completer(mode="batch")
    with pytest.raises(ValueError, match="not a redis:// URL"):
        pac.ChatOptions(mode="batch", cache="redis://localhost:6379/0")
    with pytest.raises(ValueError, match="batch_fallback is for mode='batch' only"):
        pac.ChatOptions(batch_fallback="online")


# -- cache, rerun, fallback ---------------------------------------------------------


def test_cache_hits_are_not_resubmitted_and_a_finished_job_sends_nothing(
    emu: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    cache = tmp_path / "c.sqlite"
    with _job(emu, cache) as job:  # online, the same deployment: the same keys
        job.run(_arith(5))
    emu.reset()
    with _job(emu, cache, clock, mode="batch") as job:
        answers = job.run(_arith(12))
        cached = job.summary().cached
    assert answers == [str(i + 1000) for i in range(12)]
    assert cached == 5
    first = _batch_stats(emu)
    assert (first["lines_answered"], first["files_uploaded"], first["requests"]) == (
        7,
        1,
        0,
    )
    with _job(emu, cache, clock, mode="batch") as job:  # a rerun: all in the cache
        assert job.run(_arith(12)) == answers
        assert job.summary().cached == 12
    assert _batch_stats(emu) == first


def test_an_expired_batch_falls_back_online(clock: FakeClock, tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite"
    rows = [*_arith(4), "[emu:batch_expire] What is 3 + 3?"]
    service = BatchService(completion_window_s=3600)
    with Emulator(clock=clock, batches=service) as emu:
        with _job(emu, cache, clock, mode="batch", output="struct") as job:
            out = job.run(rows)
        late = out[4]
        assert late is not None and _kind(late) == "BatchIncompleteError"
        assert "expired before this request was answered" in late["error"]
        assert emu.stats()["requests"] == 0
        with _job(
            emu, cache, clock, mode="batch", batch_fallback="online"
        ) as job:  # only the expired row is left: its batch expires again, then online
            answers = job.run(rows)
            summary = job.summary()
        stats = _batch_stats(emu)
    assert answers == [*(str(i + 1000) for i in range(4)), "6"]
    assert stats["requests"] == 1 and summary.requests == 1
    assert (stats["batches_created"], stats["lines_answered"]) == (2, 4)
    assert (summary.cached, summary.batch_answered, summary.answered) == (4, 0, 5)


# -- the spending cap ---------------------------------------------------------------


def _worst(prompts: list[str], *, batch: bool) -> list[float]:
    price = PRICES["gpt-4o-mini"]
    cap = SpendingCap(1.0, price)
    return [
        cap.worst_case(
            _tokens.prompt_tokens([{"role": "user", "content": p}]), 20, batch=batch
        )
        for p in prompts
    ]


def test_the_cap_in_batch_mode(emu: Emulator, clock: FakeClock, tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite"
    prompts = _arith(10)
    cap = sum(_worst(prompts, batch=True)[:4]) * 1.000001  # four fit, the fifth not
    with _job(
        emu, cache, clock, mode="batch", max_cost_usd=cap, output="struct"
    ) as job:
        out = job.run(prompts)
        summary = job.summary()
    assert [r["content"] for r in out if r is not None][:4] == [
        str(i + 1000) for i in range(4)
    ]
    assert [_kind(r) for r in out] == [None] * 4 + ["SpendingCapError"] * 6
    assert out[4] is not None and "max_cost_usd" in out[4]["error"]
    assert emu.stats()["batch"]["lines_answered"] == 4
    assert summary.capped == 6 and summary.max_cost_usd == cap
    assert summary.spent_usd is not None and 0 < summary.spent_usd <= cap
    assert "rows not sent (SpendingCapError)" in str(summary)
    # a rerun with a higher cap sends only the six (they were not cached)
    with _job(emu, cache, clock, mode="batch", max_cost_usd=1.0) as job:
        answers = job.run(prompts)
        assert job.summary().cached == 4
    assert answers == [str(i + 1000) for i in range(10)]
    stats = _batch_stats(emu)
    assert (stats["lines_answered"], stats["files_uploaded"], stats["requests"]) == (
        10,
        2,
        0,
    )


def test_the_cap_online(emu: Emulator, tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite"
    prompts = _arith(10)
    worst = _worst(prompts, batch=False)
    cap = 1.5 * max(worst)  # the worst case of one row, and real costs of a few more
    with _job(emu, cache, max_cost_usd=cap, max_concurrency=1, output="struct") as job:
        out = job.run(prompts)
        summary = job.summary()
    kinds = [_kind(r) for r in out]
    answered = kinds.count(None)
    assert 1 <= answered < 10
    assert kinds == [None] * answered + ["SpendingCapError"] * (10 - answered)
    assert emu.stats()["requests"] == answered
    assert summary.spent_usd is not None and summary.spent_usd <= cap
    assert summary.capped == 10 - answered
    with _job(emu, cache, max_cost_usd=1.0) as job:  # only the refused rows are sent
        assert job.run(prompts) == [str(i + 1000) for i in range(10)]
    assert emu.stats()["requests"] == 10


def test_the_cap_online_answers_as_many_rows_at_any_concurrency(
    emu: Emulator, tmp_path: Path
) -> None:
    # rows sent together each hold their worst case: a row that fits once those end
    # waits for them, instead of being refused for what the job never spends (at 64
    # at once, 3 of 10 rows were answered where one at a time answered 10)
    prompts = _arith(10)
    worst = _worst(prompts, batch=False)
    cap = 3.5 * max(worst)  # room for three worst cases, and every row's real cost
    answered = []
    for conc in (1, 64):
        emu.reset()
        with _job(
            emu, tmp_path / f"c{conc}.sqlite", max_cost_usd=cap, max_concurrency=conc
        ) as job:
            out = job.run(prompts)
            summary = job.summary()
        answered.append(sum(a is not None for a in out))
        assert out == [str(i + 1000) for i in range(10)]
        assert emu.stats()["requests"] == 10 and summary.capped == 0
        assert summary.spent_usd is not None and summary.spent_usd <= cap
        assert job.spending_cap is not None
        assert job.spending_cap.committed_usd == pytest.approx(0.0, abs=1e-12)
    assert answered == [10, 10]


class Total(BaseModel):
    total: int


def test_the_cap_charges_every_answered_attempt(emu: Emulator, tmp_path: Path) -> None:
    """An invalid typed answer sent again was charged by Azure: the cap counts each."""
    prompts = ["[emu:bad_json] What is 2 + 2?"]
    with _job(
        emu,
        tmp_path / "c.sqlite",
        max_cost_usd=1.0,
        response_format=Total,
        max_attempts=3,
        output="struct",
    ) as job:
        out = job.run(prompts)
        summary = job.summary()
        cap = job.spending_cap
    assert out[0] is not None and out[0]["attempts"] == 3
    assert _kind(out[0]) == "SchemaValidationError"
    stats = emu.stats()
    assert stats["requests"] == 3
    assert cap is not None and cap.committed_usd == pytest.approx(0.0, abs=1e-12)
    charged = cap.cost(stats["prompt_tokens"], stats["completion_tokens"])
    assert summary.spent_usd == pytest.approx(charged)
    assert charged > 0


def test_the_cap_may_refuse_a_resend(emu: Emulator, tmp_path: Path) -> None:
    """After an invalid answer, the resend must fit under the cap like a first send."""
    prompt = "[emu:bad_json] What is 2 + 2?"
    price = PRICES["gpt-4o-mini"]
    probe = SpendingCap(1.0, price)
    schema_tokens = pac.OutputSchema.from_user(Total).schema_tokens()
    tokens = _tokens.prompt_tokens([{"role": "user", "content": prompt}])
    worst = probe.worst_case(tokens + schema_tokens, 20)
    # room for one worst case; after one answer is spent, not for a second
    with _job(
        emu,
        tmp_path / "c.sqlite",
        max_cost_usd=worst * 1.01,
        response_format=Total,
        max_attempts=3,
        output="struct",
    ) as job:
        out = job.run([prompt])
        summary = job.summary()
    assert emu.stats()["requests"] == 1
    assert out[0] is not None and _kind(out[0]) == "SpendingCapError"
    assert out[0]["attempts"] == 1
    assert summary.spent_usd is not None and 0 < summary.spent_usd <= worst * 1.01


def test_a_cap_needs_a_price() -> None:
    config = pac.ChatConfig(azure_endpoint="http://127.0.0.1:9", api_key="k")
    with pytest.raises(pac.ConfigurationError, match="needs the price of deployment"):
        pac.Completer(config=config, deployment="my-deployment", max_cost_usd=1.0)
    job = pac.Completer(
        config=config,
        deployment="my-deployment",
        max_cost_usd=1.0,
        prices={"my-deployment": (1.0, 2.0)},
    )
    assert job.spending_cap is not None and job.spending_cap.price == (1.0, 2.0)
    job.close()


# -- plan ----------------------------------------------------------------------------


def test_plan_shows_online_and_batch_cost(tmp_path: Path) -> None:
    estimate = pac.plan(pl.Series(_arith(100)), max_tokens=200)
    assert estimate.estimated_cost_usd is not None
    assert estimate.estimated_batch_cost_usd == pytest.approx(
        estimate.estimated_cost_usd / 2
    )
    assert " online, $" in str(estimate) and " batch (gpt-4o-mini" in str(estimate)
    src = tmp_path / "in.parquet"
    pl.DataFrame({"q": _arith(100)}).write_parquet(src)
    result = cli.invoke(app, ["plan", str(src), "--column", "q", "--max-tokens", "200"])
    assert result.exit_code == 0, result.output
    assert " online, $" in result.output and " batch (" in result.output


# -- the CLI -------------------------------------------------------------------------


def test_cli_run_mode_batch_with_the_emulator(tmp_path: Path) -> None:
    src, out, cache = tmp_path / "in.parquet", tmp_path / "out.parquet", tmp_path / "c"
    pl.DataFrame({"q": [*_arith(30), None]}).write_parquet(src)
    args = ["run", str(src), str(out), "--column", "q", "--emulator", "--no-progress"]
    result = cli.invoke(app, [*args, "--mode", "batch"])
    assert result.exit_code == 2 and "needs cache=FILE" in result.output
    result = cli.invoke(app, [*args, "--mode", "batch", "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out)["answer"].to_list() == [
        *(str(i + 1000) for i in range(30)),
        None,
    ]
    assert "batches:   1 (30 lines; 30 rows answered through them)" in result.output
    listed = cli.invoke(app, ["batches", "--cache", str(cache)])
    assert listed.exit_code == 0, listed.output
    assert "completed" in listed.output and "1 chunk(s), 0 still live" in listed.output


def test_cli_batches_lists_and_cancels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "c.sqlite"
    rows = [*_arith(3), "[emu:batch_slow=3600] What is 5 + 5?"]
    with Emulator(batches=BatchService(**FAST)) as emu:
        for key, value in emu.env().items():
            monkeypatch.setenv(key, value)

        def crash(step: str, chunk: str) -> None:
            if step == "batch_recorded":
                raise Killed

        job = _job(emu, cache, mode="batch", batch_poll_s=0.05)
        assert job._batch is not None
        job._batch.settings["hook"] = crash
        with pytest.raises(Killed):
            job.run(rows)
        job.close()
        listed = cli.invoke(app, ["batches", "--cache", str(cache)])
        assert listed.exit_code == 0, listed.output
        assert "batch_" in listed.output and "1 still live" in listed.output
        assert emu.api_key not in listed.output
        cancelled = cli.invoke(app, ["batches", "--cache", str(cache), "--cancel"])
        assert cancelled.exit_code == 0, cancelled.output
        assert "cancelled 1 batch(es): batch_" in cancelled.output
        assert emu.stats()["batch"]["cancels"] == 1
        # a rerun attaches to the cancelled batch and sends what it left online
        with _job(
            emu, cache, mode="batch", batch_poll_s=0.05, batch_fallback="online"
        ) as job:
            answers = job.run(rows)
        stats = _batch_stats(emu)
    assert answers == [*(str(i + 1000) for i in range(3)), "10"]
    assert stats["batches_created"] == 1  # nothing submitted again
    assert 1 <= stats["requests"] <= 4  # the rows the cancel left, online


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130), (signal.SIGTERM, 143)],
    ids=["kill-9", "ctrl-c", "sigterm"],
)
@pytest.mark.slow
def test_a_stopped_run_mode_batch_then_a_rerun_submits_nothing_twice(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """A kill -9, a Ctrl-C or a SIGTERM while the batch runs, then a rerun that
    attaches to it (no upload, no batch created, nothing online). Interrupted, the
    job exits at once and says how to resume; it never cancels the batch."""
    src, out, cache = tmp_path / "in.parquet", tmp_path / "out.parquet", tmp_path / "c"
    pl.DataFrame({"q": _arith(40)}).write_parquet(src)
    service = BatchService(**{**FAST, "line_s": 0.05})  # 2 s in progress
    args = [sys.executable, "-m", "polars_azurechat", "run", str(src), str(out)]
    args += ["--column", "q", "--mode", "batch", "--cache", str(cache)]
    args += ["--batch-poll-s", "0.05", "--no-progress", "-v"]
    with Emulator(batches=service) as emu:
        env = {**os.environ, **emu.env(), "PYTHONUNBUFFERED": "1"}
        child = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            assert child.stderr is not None
            for line in child.stderr:
                if "created batch" in line:
                    child.send_signal(sig)
                    break
            rest = child.stderr.read()
            child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            if child.stderr is not None:
                child.stderr.close()
        assert child.returncode == code, rest
        assert not out.exists()
        first = emu.stats()["batch"]
        assert (first["files_uploaded"], first["batches_created"]) == (1, 1)
        assert first["cancels"] == 0
        rerun = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        stats = _batch_stats(emu)
    if sig != signal.SIGKILL:
        assert "the batches submitted keep running" in rest
        assert f"--cache {cache} --cancel" in rest
    assert rerun.returncode == 0, rerun.stderr
    assert pl.read_parquet(out)["answer"].to_list() == [
        str(i + 1000) for i in range(40)
    ]
    assert (stats["files_uploaded"], stats["batches_created"]) == (1, 1)
    assert stats["lines_answered"] == 40 and stats["requests"] == 0
    assert "attaching to batch chunk" in rerun.stderr
