"""Batch mode from the driver: the whole job as Azure batches. Not meant for outside use.

Each row's prompt is named by the sha256 of its text (of its messages' JSON for a
message list). The distinct prompts are collected to the driver (Arrow), answered by
one :class:`~polars_azurechat.Completer` in batch mode (one set of Azure batches,
recorded in its cache file, so a rerun attaches to them), and the answers go back to
Spark as a small DataFrame joined to every row by that name: each row gets its own
prompt's answer, a null prompt null answer columns. The job runs when
:func:`complete_in_batches` is called (the batches are the job), not at an action.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from polars_azurechat.cluster.arrow import plain_arrow_type, spark_type_of
from polars_azurechat.cluster.driver import remember
from polars_azurechat.cluster.tally import SparkSummary, tally_of
from polars_azurechat.cluster.worker import chat_columns
from polars_azurechat.config import ChatConfig
from polars_azurechat.functions import _apply_policy as apply_policy
from polars_azurechat.functions import _failures as failures

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["complete_in_batches"]

logger = logging.getLogger("polars_azurechat.spark")

#: The column naming each row's prompt while the answers are joined back.
KEY = "__polars_azurechat_prompt"


def complete_in_batches(
    df: DataFrame,
    *,
    column: str,
    appended: Sequence[tuple[str, pl.DataType]],
    config: Any,
    params: Mapping[str, Any],
) -> DataFrame:
    """``df`` with the answer columns, the distinct prompts answered by batch mode."""
    import pyarrow as pa
    from pyspark.sql import functions as F  # noqa: N812 - Spark's usual name
    from pyspark.sql.types import StringType, StructField, StructType

    from polars_azurechat.functions import Completer

    if KEY in df.columns:  # pragma: no cover - a name nobody uses
        msg = f"the DataFrame has a column {KEY!r}, which batch mode uses"
        raise ValueError(msg)
    spark = df.sparkSession
    source = F.col(column)
    text = (
        source
        if isinstance(df.schema[column].dataType, StringType)
        else F.to_json(source)
    )
    keyed = df.withColumn(KEY, F.sha2(text, 256))
    prompts = (
        keyed.where(F.col(KEY).isNotNull()).select(KEY, column).dropDuplicates([KEY])
    )
    frame = pl.DataFrame(pl.from_arrow(prompts.toArrow()))
    if config is not None and not isinstance(config, ChatConfig):
        config = config()
    output = str(params.get("output", "content"))
    with Completer(config=config, **params) as job:
        requests = job.requests(frame[column])
        logger.info("batch mode: %d distinct prompts of %s", len(requests), column)
        with job.run_scope():
            results: list[Any] = [
                r for _, rs in job.answer_batches([(None, requests)]) for r in rs
            ]
        apply_policy(job.options.on_error, list(failures(results)), len(results))
        columns = chat_columns(
            results, output=output, name=appended[0][0], schema=job.output_schema
        )
        done = job.summary()
    arrays = [
        s.to_arrow(compat_level=pl.CompatLevel.oldest()) for s in (frame[KEY], *columns)
    ]
    table = pa.Table.from_arrays(
        [a.cast(plain_arrow_type(a.type)) for a in arrays],
        names=[KEY, *(name for name, _ in appended)],
    )
    schema = StructType(
        [StructField(KEY, StringType(), True)]
        + [StructField(name, spark_type_of(dtype), True) for name, dtype in appended]
    )
    answers = spark.createDataFrame(table, schema=schema)
    out = keyed.join(answers, on=KEY, how="left").drop(KEY)
    remember(out, SparkSummary.of(tally_of(done)))
    return out
