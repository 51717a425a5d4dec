"""Spark: a local Spark (two Python workers) answers DataFrames through the engine.

One SparkSession for the module (``local[2,3]``: two tasks at once, a failed task
tried again up to three times), its JVM's stderr (where its Python workers log) and
its event log written to files the tests read. The emulator and a real
``redis-server`` run beside it on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator
from polars_azurechat.emulator._batch import BatchService
from polars_azurechat.errors import ConfigurationError

# PySpark checks pandas' version for the test's own mapInArrow, which uses no pandas
pytestmark = pytest.mark.filterwarnings(
    "ignore:PySpark does not yet fully support pandas:FutureWarning"
)

pyspark = pytest.importorskip(
    "pyspark", reason="PySpark is not installed: pip install 'polars-azurechat[spark]'"
)

#: The key the emulator takes: it must appear in no plan, log or event.
SECRET = f"sk-spark-{uuid.uuid4().hex}"


class Session:
    """The module's SparkSession and the files its JVM writes."""

    def __init__(self, spark: Any, stderr: Path, events: Path) -> None:
        self.spark = spark
        self.stderr = stderr
        self.events = events

    def jvm_stderr(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    def event_log(self) -> str:
        return "".join(
            p.read_text(encoding="utf-8", errors="replace")
            for p in sorted(self.events.rglob("*"))
            if p.is_file()
        )


@pytest.fixture(scope="module")
def local_spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark needs Java 17: 'apt-get install openjdk-17-jre-headless'")
    from pyspark.sql import SparkSession

    base = tmp_path_factory.mktemp("spark")
    events = base / "events"
    events.mkdir()
    stderr = base / "jvm-stderr.log"
    # the Python workers run this interpreter (PySpark reads it from the environment)
    previous = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    saved = os.dup(2)
    # the JVM (and the Python workers it starts) inherit this stderr: their log lines
    # go to a file the tests read
    with stderr.open("wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            spark = (
                SparkSession.builder.master("local[2,3]")
                .appName("polars-azurechat-tests")
                .config("spark.ui.enabled", "false")
                .config("spark.ui.showConsoleProgress", "false")
                .config("spark.eventLog.enabled", "true")
                .config("spark.eventLog.dir", events.as_uri())
                .config("spark.eventLog.compress", "false")
                .config("spark.sql.shuffle.partitions", "4")
                .config("spark.sql.execution.arrow.maxRecordsPerBatch", "200")
                .getOrCreate()
            )
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    try:
        yield Session(spark, stderr, events)
    finally:
        spark.stop()
        if previous is None:
            os.environ.pop("PYSPARK_PYTHON", None)
        else:
            os.environ["PYSPARK_PYTHON"] = previous


def _config(emu: Emulator) -> ChatConfig:
    return ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key, deployment="d")


def _rows(spark: Any, n: int, k: int, partitions: int) -> Any:
    rows = [(i, f"What is {i} + {k}?") for i in range(n)]
    return spark.createDataFrame(rows, "id long, q string").repartition(partitions)


def test_a_wrong_keyword_fails_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import polars_azurechat.spark as pac_spark

    # every option and body field, typed for type checkers as at every entry point
    assert pac_spark.complete.__annotations__["params"] == "Unpack[ChatOptionsDict]"
    with pytest.raises(TypeError, match="max_tokens"):
        pac_spark.complete(object(), max_token=5)  # type: ignore[arg-type, call-arg]
    with pytest.raises(TypeError, match="embeddings take no 'max_tokens'"):
        pac_spark.embed(object(), max_tokens=5)  # type: ignore[arg-type, call-arg]
    monkeypatch.delenv("AZURE_OPENAI_DEPLOYMENT", raising=False)
    with pytest.raises(ValueError, match="the vectors' size is not known"):
        pac_spark.embed(object())  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_wrong_column_fails_before_anything_runs(local_spark: Session) -> None:
    import polars_azurechat.spark as pac_spark

    df = local_spark.spark.createDataFrame(
        [(1, "hi", "hello")], "n int, answer string, n2 string"
    )
    with pytest.raises(
        ValueError, match="no column 'q' in the DataFrame; it has n, answer, n2"
    ):
        pac_spark.complete(df, column="q")
    with pytest.raises(TypeError, match=r"column 'n' \(int\).*String"):
        pac_spark.complete(df, column="n")
    with pytest.raises(ValueError, match="already has a column 'answer'"):
        pac_spark.complete(df, column="answer")
    # what only building the job checks fails on the driver, not on every executor
    config = ChatConfig(
        azure_endpoint="http://127.0.0.1:9", api_key="k", deployment="d"
    )
    with pytest.raises(ConfigurationError, match="max_cost_usd needs the price"):
        pac_spark.complete(
            df, column="n2", output_column="a2", config=config, max_cost_usd=1.0
        )


@pytest.mark.slow
def test_2000_rows_through_a_held_quota_a_task_killed_and_retried(
    local_spark: Session, capsys: pytest.CaptureFixture[str]
) -> None:
    import polars_azurechat.spark as pac_spark

    from ._redis import redis_server

    spark = local_spark.spark
    n = 2000
    with (
        redis_server() as redis_url,
        Emulator(
            api_key=SECRET,
            latency_ms=2,
            requests_per_minute=30_000,
            request_window_s=1.0,
        ) as emu,
    ):
        out = pac_spark.complete(
            _rows(spark, n, 30, partitions=8),
            column="q",
            config=_config(emu),
            max_tokens=5,
            requests_per_minute=30_000,
            limiter=redis_url,
            cache=redis_url,
        )
        # planned, not run: the schema is known and nothing was sent
        assert out.columns == [
            "id",
            "q",
            "answer",
            "answer_error",
            "answer_finish_reason",
        ]
        out.explain(extended=True)
        plan = capsys.readouterr().out
        assert "MapInArrow" in plan and SECRET not in plan
        assert emu.stats()["requests"] == 0

        def kill_once(batches: Iterator[Any]) -> Iterator[Any]:
            # downstream of the answers: partition 2's first attempt fails after every
            # row of it was answered (a task lost late); Spark runs it again
            from pyspark import TaskContext

            kept = list(batches)
            ctx = TaskContext.get()
            if ctx is not None and ctx.partitionId() == 2 and ctx.attemptNumber() == 0:
                raise RuntimeError("task killed after answering (test)")
            yield from kept

        rows = out.mapInArrow(kill_once, out.schema).collect()
        stats = emu.stats()
    assert len(rows) == n
    assert sorted(r["id"] for r in rows) == list(range(n))
    # every row carries its own answer, whatever order the partitions came back in
    wrong = [r for r in rows if r["answer"] != str(r["id"] + 30)]
    assert not wrong, wrong[:3]
    assert all(r["answer_error"] is None for r in rows)
    assert {r["answer_finish_reason"] for r in rows} == {"stop"}
    # the retried task found its rows in Redis: no row was paid for twice
    assert stats["statuses"].get("200") == n, stats["statuses"]
    # 500 per 1-s window shared by both workers through Redis: no storm. Until the
    # window is learned, one turn of it may refuse what was in flight when the first
    # 429 came back (the workers, and each new one Spark starts, join with the window
    # learned); a storm refuses that many at every turn
    n429 = stats["statuses"].get("429", 0)
    assert n429 <= 0.02 * stats["requests"] + stats["peak_in_flight"], stats
    s = pac_spark.summary(out)
    # the killed attempt's counts are dropped; its retry's rows came from the cache
    assert (s.partitions, s.rows, s.answered, s.failed) == (8, n, n, 0)
    assert 0 < s.cached < n
    assert n - s.cached <= s.requests <= stats["requests"]
    assert s.completion_tokens > 0 and s.estimated_cost_usd is not None
    assert "8 partitions, 2,000 rows" in str(s)
    # the key is in no log line of the JVM or its Python workers, nor in the event log
    # (what the Spark UI and the history server show)
    events = local_spark.event_log()
    assert "MapInArrow" in events
    assert SECRET not in events
    assert SECRET not in local_spark.jvm_stderr()


@pytest.mark.slow
def test_without_a_shared_limiter_each_task_gets_its_share(
    local_spark: Session, caplog: pytest.LogCaptureFixture
) -> None:
    import polars_azurechat.spark as pac_spark

    n = 300
    with (
        Emulator(latency_ms=2, requests_per_minute=12_000, request_window_s=1.0) as emu,
        caplog.at_level(logging.WARNING, logger="polars_azurechat.spark"),
    ):
        out = pac_spark.complete(
            _rows(local_spark.spark, n, 40, partitions=2),
            column="q",
            config=_config(emu),
            max_tokens=5,
            requests_per_minute=12_000,
            tokens_per_minute=2_000_000,
        )
        rows = out.collect()
        stats = emu.stats()
    said = caplog.text
    assert "each of the 2 tasks that run at once gets 1/2 of the quota" in said
    assert "requests_per_minute 12000 -> 6000, tokens_per_minute 2e+06 -> 1e+06" in said
    # every row answered; the 429s of two limiters that do not see each other's
    # requests are retried (their number is the limiter's, not asserted here: the
    # shared limiter above is the way to hold them under 2%)
    assert len(rows) == n and all(r["answer"] == str(r["id"] + 40) for r in rows)
    assert stats["statuses"]["200"] == n


def test_each_task_gets_its_share_of_every_quota_and_of_the_cap() -> None:
    from polars_azurechat.cluster.quota import task_share
    from polars_azurechat.deployments import Deployment
    from polars_azurechat.options import ChatOptions

    pool = [
        Deployment(name="a", requests_per_minute=600, tokens_per_minute=90_000),
        Deployment(name="b", priority=1),
    ]
    params: dict[str, Any] = {
        "deployments": pool,
        "max_cost_usd": 8.0,
        "max_tokens": 5,
    }
    options, _ = ChatOptions.split(params)
    shared = task_share(params, options, 4, what="spark.complete")
    a, b = shared["deployments"]
    assert (a.requests_per_minute, a.tokens_per_minute) == (150, 22_500)
    assert (b.requests_per_minute, b.tokens_per_minute) == (None, None)
    assert (shared["max_cost_usd"], shared["max_tokens"]) == (2.0, 5)
    assert params["max_cost_usd"] == 8.0  # the caller's keywords are left alone
    redis: dict[str, Any] = {
        "limiter": "redis://127.0.0.1:1/0",
        "requests_per_minute": 600,
    }
    options, _ = ChatOptions.split(redis)
    assert task_share(redis, options, 4, what="spark.complete") == redis


class Sum(BaseModel):
    total: int
    size: Literal["small", "large"]


@pytest.mark.slow
def test_typed_answers_are_a_struct_and_failed_rows_say_why(
    local_spark: Session, tmp_path: Path
) -> None:
    import polars_azurechat.spark as pac_spark

    rows = [
        (i, "[emu:filter] no" if i % 10 == 0 else f"What is {i} + 1?")
        for i in range(40)
    ]
    df = local_spark.spark.createDataFrame(rows, "id int, q string").repartition(2)
    log = tmp_path / "executors.log"
    with Emulator(api_key=SECRET) as emu:
        url = emu.url

        def config() -> ChatConfig:
            # runs where each worker builds its job: the executors' logging, as a
            # cluster's log configuration would set it up
            handler = logging.FileHandler(log)
            handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
            package = logging.getLogger("polars_azurechat")
            package.addHandler(handler)
            package.setLevel(logging.INFO)
            return ChatConfig(azure_endpoint=url, api_key=SECRET, deployment="d")

        out = pac_spark.complete(
            df, column="q", config=config, response_format=Sum, max_tokens=50
        )
        assert out.schema["answer"].dataType.simpleString() == (
            "struct<total:bigint,size:string>"
        )
        got = {r["id"]: r for r in out.collect()}
    assert all(got[i]["answer"]["total"] == i + 1 for i in range(40) if i % 10)
    assert all(got[i]["answer"]["size"] in ("small", "large") for i in range(1, 10))
    failed = [got[i] for i in range(0, 40, 10)]
    assert all(r["answer"] is None for r in failed)
    assert all("ContentFilterError" in r["answer_error"] for r in failed), failed
    # the executors' log lines name the partition they answer; no key in them
    logged = log.read_text()
    assert re.search(
        r"WARNING \[spark partition \d \(stage \d+, attempt 0\)\] chat.complete: "
        r"\d+ of 20 rows failed",
        logged,
    ), logged
    assert re.search(r"INFO \[spark partition \d .*\] 20 rows: \d+ answered", logged)
    assert SECRET not in logged


@pytest.mark.slow
def test_output_struct_and_null_rows(local_spark: Session) -> None:
    import polars_azurechat.spark as pac_spark

    df = local_spark.spark.createDataFrame(
        [(1, "What is 1 + 1?"), (2, None)], "id int, q string"
    )
    with Emulator() as emu:
        got = {
            r["id"]: r["out"]
            for r in pac_spark.complete(
                df,
                column="q",
                output_column="out",
                config=_config(emu),
                output="struct",
                max_tokens=5,
            ).collect()
        }
        stats = emu.stats()
    assert got[1]["content"] == "2" and got[1]["finish_reason"] == "stop"
    assert got[1]["deployment"] == "d" and got[1]["error"] is None
    assert got[2] is None  # a null row stays null and sends nothing
    assert stats["requests"] == 1


@pytest.mark.slow
def test_message_lists_and_one_job_per_worker_built_from_a_function(
    local_spark: Session, tmp_path: Path
) -> None:
    import polars_azurechat.spark as pac_spark

    rows = [
        (
            i,
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"What is {i} + 3?"},
            ],
        )
        for i in range(60)
    ]
    df = local_spark.spark.createDataFrame(
        rows, "id int, messages array<struct<role: string, content: string>>"
    ).repartition(6)
    builds = tmp_path / "builds"
    with Emulator() as emu:
        url, key = emu.url, emu.api_key

        def config() -> ChatConfig:  # called where each worker builds its job
            with builds.open("a") as f:
                f.write(f"{os.getpid()}\n")
            return ChatConfig(azure_endpoint=url, api_key=key, deployment="d")

        out = pac_spark.complete(df, config=config, max_tokens=5).collect()
    assert len(out) == 60 and all(r["answer"] == str(r["id"] + 3) for r in out)
    # six partitions, each worker process built the job once and kept it
    pids = builds.read_text().split()
    assert len(pids) == len(set(pids)) and 1 <= len(pids) < 6, pids


@pytest.mark.slow
def test_embeddings(local_spark: Session) -> None:
    import polars_azurechat.spark as pac_spark

    df = local_spark.spark.createDataFrame(
        [(1, "red apples"), (2, None), (3, "green pears"), (4, "")],
        "id int, text string",
    )
    with Emulator() as emu:
        out = pac_spark.embed(
            df,
            config=_config(emu),
            deployment="text-embedding-3-small",
            dimensions=8,
        )
        assert out.schema["embedding"].dataType.simpleString() == "array<float>"
        got = {r["id"]: r for r in out.collect()}
    assert len(got[1]["embedding"]) == 8 and len(got[3]["embedding"]) == 8
    assert got[1]["embedding"] != got[3]["embedding"]
    assert got[2]["embedding"] is None and got[2]["embedding_error"] is None
    assert got[4]["embedding"] is None and "InputError" in got[4]["embedding_error"]


@pytest.mark.slow
def test_batch_mode_runs_from_the_driver_and_joins_back_by_row(
    local_spark: Session, tmp_path: Path
) -> None:
    import polars_azurechat.spark as pac_spark

    fast: dict[str, Any] = {
        "validating_s": 0.05,
        "line_s": 0.001,
        "finalizing_s": 0.05,
        "file_processing_s": 0.02,
        "tick_s": 0.01,
    }
    rows = [(i, None if i == 5 else f"What is {i % 7} + 100?") for i in range(30)]
    df = local_spark.spark.createDataFrame(rows, "id int, q string").repartition(3)
    with Emulator(batches=BatchService(**fast)) as emu:
        config = ChatConfig(
            azure_endpoint=emu.url, api_key=emu.api_key, deployment="gpt-4o-mini-batch"
        )
        out = pac_spark.complete(
            df,
            column="q",
            config=config,
            mode="batch",
            cache=str(tmp_path / "batch.sqlite"),
            batch_poll_s=0.05,
            max_tokens=5,
        )
        got = {r["id"]: r for r in out.collect()}
        stats = emu.stats()
    assert len(got) == 30
    assert all(got[i]["answer"] == str(i % 7 + 100) for i in range(30) if i != 5)
    assert got[5]["answer"] is None and got[5]["answer_error"] is None
    assert stats["requests"] == 0  # nothing online
    assert stats["batch"]["lines_answered"] == 7  # the distinct prompts
    s = pac_spark.summary(out)
    assert (s.rows, s.batch_answered, s.requests) == (7, 7, 0)


@pytest.mark.slow
def test_on_error_raise_fails_the_job_naming_the_row(local_spark: Session) -> None:
    import polars_azurechat.spark as pac_spark

    df = local_spark.spark.createDataFrame(
        [(0, "What is 1 + 1?"), (1, "[emu:filter] no")], "id int, q string"
    ).coalesce(1)
    with Emulator() as emu:
        out = pac_spark.complete(
            df, column="q", config=_config(emu), on_error="raise", max_tokens=5
        )
        with pytest.raises(Exception, match="CompletionFailed") as info:
            out.collect()
    # Spark tried the task again (local[2,3]) before failing the job with the rows
    assert "1 of 2 rows failed (rows 1)" in str(info.value)
    assert "ContentFilterError" in str(info.value)
