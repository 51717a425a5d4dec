"""What the driver does before anything runs. Not meant for outside use.

The input column is checked (it exists, and its Spark type arrives in Polars as a
dtype the job takes), the answer columns are named and typed (their Polars dtypes,
known from the options alone, as Spark and Arrow types), the quota is shared out
among the tasks that run at once, and the partitions are mapped through
:class:`~polars_azurechat.cluster.worker.AnswerPartitions` with the output schema
given, so Spark plans the job without running anything.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from polars_azurechat.cluster.arrow import (
    polars_dtype_of,
    spark_arrow_type,
    spark_type_of,
)
from polars_azurechat.cluster.quota import task_share, tasks_at_once
from polars_azurechat.cluster.tally import SparkSummary, TallyParam
from polars_azurechat.cluster.worker import AnswerPartitions, JobSpec, digest_of
from polars_azurechat.config import ChatConfig
from polars_azurechat.options import ChatOptions

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["check_columns", "check_job", "map_partitions", "remember", "summary_of"]

logger = logging.getLogger("polars_azurechat.spark")

#: Each answered DataFrame's accumulator (or, batch mode, its summary).
_SUMMARIES: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def check_columns(
    df: DataFrame,
    column: str,
    appended: Sequence[str],
    check: Callable[[pl.DataType], None],
) -> None:
    """Refuse, before anything runs, a missing or wrong input column or a taken name."""
    fields = {f.name: f for f in df.schema.fields}
    if column not in fields:
        msg = f"no column {column!r} in the DataFrame; it has {', '.join(fields)}"
        raise ValueError(msg)
    try:
        check(polars_dtype_of(fields[column].dataType))
    except TypeError as exc:
        msg = f"column {column!r} ({fields[column].dataType.simpleString()}): {exc}"
        raise TypeError(msg) from None
    taken = [name for name in appended if name in fields]
    if taken:
        msg = (
            f"the DataFrame already has a column {taken[0]!r}: pass another "
            "output_column="
        )
        raise ValueError(msg)


def map_partitions(
    df: DataFrame,
    *,
    kind: Literal["chat", "embed"],
    column: str,
    output_column: str,
    output: str,
    appended: Sequence[tuple[str, pl.DataType]],
    config: Any,
    params: Mapping[str, Any],
    options: ChatOptions,
    concurrent_tasks: int | None,
) -> DataFrame:
    """``df`` with the answer columns, through ``mapInArrow``; planned, not run."""
    from pyspark.sql.types import StructField, StructType

    spark = df.sparkSession
    typed = [(name, spark_type_of(dtype)) for name, dtype in appended]
    schema = StructType(
        [*df.schema.fields, *(StructField(name, t, True) for name, t in typed)]
    )
    large = (
        str(spark.conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false"))
        .strip()
        .lower()
        == "true"
    )
    tasks = concurrent_tasks or tasks_at_once(spark)
    if tasks < 1:
        msg = f"concurrent_tasks must be >= 1, got {tasks}"
        raise ValueError(msg)
    shared = task_share(dict(params), options, tasks, what=f"spark.{_verb(kind)}")
    check_job(kind, config, shared)
    tally = _accumulator(spark)
    spec = JobSpec(
        kind=kind,
        digest=digest_of(kind, config, shared),
        config=config,
        params=shared,
        column=column,
        output_column=output_column,
        output=output,
        appended=tuple((n, spark_arrow_type(t, large=large)) for n, t in typed),
        tally=tally,
    )
    with warnings.catch_warnings():
        # PySpark checks pandas' version for every Arrow UDF, mapInArrow too, which
        # uses no pandas: its warning about pandas 3 says nothing about this job
        warnings.filterwarnings(
            "ignore",
            message="PySpark does not yet fully support pandas",
            category=FutureWarning,
        )
        out = df.mapInArrow(AnswerPartitions(spec), schema)
    if tally is not None:
        remember(out, tally)
    return out


def check_job(kind: str, config: Any, params: Mapping[str, Any]) -> None:
    """Build the job once on the driver, without its cache and limiter, and close it.

    What only a job's construction checks (a spending cap's price, a pool, the typed
    answer's schema) then fails here, before anything runs, not on every executor.
    Only with a :class:`ChatConfig`: a function or the executors' environment may give
    what the driver does not have.
    """
    if not isinstance(config, ChatConfig):
        return
    safe = {**params, "cache": None, "limiter": None, "progress": False}
    if kind == "chat":
        from polars_azurechat.functions import Completer

        Completer(config=config, **safe).close()
    else:
        from polars_azurechat.embeddings import Embedder

        Embedder(config=config, **safe).close()


def remember(df: DataFrame, summary: Any) -> None:
    """Keep ``df``'s accumulator (or summary) for :func:`summary_of`."""
    _SUMMARIES[df] = summary


def summary_of(df: DataFrame) -> SparkSummary:
    """What the executors did for ``df`` so far (see :func:`polars_azurechat.spark.summary`)."""
    found = _SUMMARIES.get(df)
    if found is None:
        msg = (
            "no summary for this DataFrame: pass the DataFrame polars_azurechat.spark "
            "returned (Spark Connect keeps no accumulators, so it has none)"
        )
        raise KeyError(msg)
    if isinstance(found, SparkSummary):
        return found
    return SparkSummary.of(found.value)


def _accumulator(spark: Any) -> Any:
    try:
        sc = spark.sparkContext
    except Exception:  # noqa: BLE001 - Spark Connect: no SparkContext
        logger.info("Spark Connect: no accumulator, so no summary on the driver")
        return None
    return sc.accumulator({}, TallyParam())


def _verb(kind: str) -> str:
    return "complete" if kind == "chat" else "embed"
