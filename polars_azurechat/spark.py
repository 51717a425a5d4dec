"""Spark: answer a column of a PySpark DataFrame where the table lives.

``pip install "polars-azurechat[spark]"`` (Spark 4, Java 17); this module imports
PySpark only when used. It runs on Azure Databricks, Microsoft Fabric, Synapse and any
Spark 4 cluster whose executors have the package installed.

Each Python worker keeps one job (a :class:`~polars_azurechat.Completer`: its engine,
connections, event loop, limiter and cache) for every partition it is given; a
partition goes from Arrow to Polars and back (``mapInArrow``) with no Python loop over
Spark rows, its input columns handed back untouched and its answers aligned with its
rows. The output schema is known from the options alone, so Spark plans the job
(``explain()``, ``printSchema()``) without sending anything. Workers share one quota
and one cache with ``limiter="redis://..."`` and ``cache="redis://..."``; without a
shared limiter each task that runs at once gets an equal share of the quota (the
driver logs a warning saying so). :func:`summary` gives the driver the job's summary,
gathered from the executors through a Spark accumulator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Unpack

import polars as pl

from polars_azurechat.cluster.tally import SparkSummary
from polars_azurechat.config import ChatConfig
from polars_azurechat.options import ChatOptions, ChatOptionsDict, typed_body

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from polars_azurechat.embeddings import EmbedOptionsDict

__all__ = ["SparkSummary", "complete", "embed", "summary"]

logger = logging.getLogger(__name__)

#: A config, or a function building one on each executor (credentials that do not
#: travel, such as azure-identity's), or ``None``: each executor's environment.
Config = ChatConfig | Callable[[], ChatConfig] | None


def complete(
    df: DataFrame,
    *,
    column: str = "messages",
    output_column: str = "answer",
    config: Config = None,
    concurrent_tasks: int | None = None,
    **params: Unpack[ChatOptionsDict],
) -> DataFrame:
    """Add the answer to each row's ``column``: the same DataFrame, answer columns after.

    Parameters
    ----------
    df
        A PySpark DataFrame; ``column`` holds prompts (``string``) or message lists
        (``array<struct<role: string, content: string>>``), as for
        ``pl.col(column).chat.complete``.
    column
        The prompts' column.
    output_column
        The answer's column. Beside it, ``<output_column>_error`` (why a row failed,
        else null) and ``<output_column>_finish_reason``; with ``output="struct"``
        the one Struct column of ``pl.col(...).chat.complete(output="struct")``.
        With ``response_format=`` a model, JSON schema or ``pl.Struct``, the answer
        is the typed Struct.
    config
        Where and how to reach Azure: a :class:`ChatConfig` (pickled with the tasks:
        its key never appears in the plan, the Spark UI, the event log or a log line),
        a function returning one (called once per Python worker on the executors: for
        an Entra ID credential, which does not travel), or ``None``: each executor
        reads its environment (``AZURE_OPENAI_ENDPOINT``, ``AZURE_OPENAI_API_KEY``, ...
        as :meth:`ChatConfig.from_env`).
    concurrent_tasks
        Tasks the cluster runs at once (default: its cores over ``spark.task.cpus``);
        without ``limiter=``, each gets this share of ``requests_per_minute``,
        ``tokens_per_minute`` and ``max_cost_usd``.
    **params
        Every option and body field :func:`polars_azurechat.complete` takes
        (``max_tokens``, ``response_format``, ``cache``, ``limiter``, ``mode``;
        ``max_concurrency`` is per task).

    Returns
    -------
    pyspark.sql.DataFrame
        Every input column, then the answer columns; lazy, as Spark is. Read what
        the executors did with :func:`summary`.

    Raises
    ------
    TypeError, ValueError
        An unknown keyword or a wrong option, a missing or wrong input column, an
        answer column that already exists: before anything runs.

    Notes
    -----
    - Spark runs the function again for each action on the DataFrame: ``cache()`` or
      write it once, or pass ``cache=`` (a ``redis://`` URL, shared by the executors)
      so a rerun, a retried task or a speculative copy sends only what is missing.
    - Batch mode (``mode="batch"``) runs from the driver: the distinct prompts are
      collected, sent as Azure batches, and joined back to every row they came from
      (its ``cache=`` is a file on the driver).

    Examples
    --------
    >>> from pyspark.sql import SparkSession  # doctest: +SKIP
    >>> import polars_azurechat.spark as pac_spark  # doctest: +SKIP
    >>> spark = SparkSession.builder.getOrCreate()  # doctest: +SKIP
    >>> df = spark.createDataFrame([("What is 2 + 2?",)], ["q"])  # doctest: +SKIP
    >>> out = pac_spark.complete(df, column="q", max_tokens=5)  # doctest: +SKIP
    >>> out.collect()  # doctest: +SKIP
    [Row(q='What is 2 + 2?', answer='4', answer_error=None, answer_finish_reason='stop')]
    >>> pac_spark.summary(out).requests  # doctest: +SKIP
    1
    """
    from polars_azurechat.cluster.driver import check_columns, map_partitions
    from polars_azurechat.engine.convert import check_dtype

    options, body = ChatOptions.split(params)  # refuse a wrong keyword here
    schema, _ = typed_body(body)
    if options.output == "struct":
        from polars_azurechat._types import result_dtype

        appended: list[tuple[str, pl.DataType]] = [
            (output_column, result_dtype(None if schema is None else schema.dtype))
        ]
    else:
        appended = [
            (output_column, pl.String() if schema is None else schema.dtype),
            (f"{output_column}_error", pl.String()),
            (f"{output_column}_finish_reason", pl.String()),
        ]
    check_columns(df, column, [name for name, _ in appended], check_dtype)
    if options.mode == "batch":
        from polars_azurechat.cluster.batch import complete_in_batches

        return complete_in_batches(
            df,
            column=column,
            appended=appended,
            config=config,
            params=dict(params),
        )
    return map_partitions(
        df,
        kind="chat",
        column=column,
        output_column=output_column,
        output=options.output,
        appended=appended,
        config=config,
        params=dict(params),
        options=options,
        concurrent_tasks=concurrent_tasks,
    )


def embed(
    df: DataFrame,
    *,
    column: str = "text",
    output_column: str = "embedding",
    dimensions: int | None = None,
    model: str | None = None,
    inputs_per_request: int | None = None,
    request_tokens: int | None = None,
    truncate: bool = False,
    config: Config = None,
    concurrent_tasks: int | None = None,
    **params: Unpack[EmbedOptionsDict],
) -> DataFrame:
    """Add each row's embedding: ``array<float>`` of ``dimensions`` values, and its error.

    Parameters
    ----------
    df
        A PySpark DataFrame with a ``string`` column of texts.
    column, output_column
        The texts' column, and the vectors' (beside it ``<output_column>_error``).
    dimensions, model
        As for :class:`~polars_azurechat.Embedder`: the vectors' size is
        ``dimensions``, or the model's native size (``model=``, else the deployment's
        name), known before anything runs.
    inputs_per_request, request_tokens, truncate
        As for :class:`~polars_azurechat.Embedder` (``None``: its defaults).
    config, concurrent_tasks
        As for :func:`complete`.
    **params
        The job options :class:`~polars_azurechat.Embedder` takes (``deployment``,
        ``cache``, ``limiter``, ``max_concurrency``, ...).

    Returns
    -------
    pyspark.sql.DataFrame
        Every input column, then the vectors and their errors.

    Raises
    ------
    TypeError, ValueError
        An unknown keyword, a wrong option, an unknown vector size, a missing or
        non-string input column: before anything runs.

    Examples
    --------
    >>> import polars_azurechat.spark as pac_spark  # doctest: +SKIP
    >>> out = pac_spark.embed(  # doctest: +SKIP
    ...     df, column="q", deployment="text-embedding-3-small", dimensions=256
    ... )
    >>> out.schema["embedding"].dataType.simpleString()  # doctest: +SKIP
    'array<float>'
    """
    from polars_azurechat.cluster.driver import check_columns, map_partitions
    from polars_azurechat.embeddings import EmbedOptionsDict
    from polars_azurechat.engine.texts import EmbeddingSpec, check_text_dtype

    known = EmbedOptionsDict.__optional_keys__
    unknown = sorted(set(params) - known)
    if unknown:
        msg = (
            f"embeddings take no {unknown[0]!r}: their options are dimensions, model, "
            f"inputs_per_request, request_tokens, truncate, config, "
            f"{', '.join(sorted(known))}"
        )
        raise TypeError(msg)
    options = ChatOptions(**params)
    sizes = {
        k: v
        for k, v in (
            ("inputs_per_request", inputs_per_request),
            ("request_tokens", request_tokens),
        )
        if v is not None
    }
    size = EmbeddingSpec.build(
        deployment=_embedding_deployment(options, config, dimensions, model),
        model=model,
        dimensions=dimensions,
        truncate=truncate,
        **sizes,
    ).size
    appended: list[tuple[str, pl.DataType]] = [
        (output_column, pl.Array(pl.Float32, size)),
        (f"{output_column}_error", pl.String()),
    ]
    check_columns(df, column, [name for name, _ in appended], check_text_dtype)
    return map_partitions(
        df,
        kind="embed",
        column=column,
        output_column=output_column,
        output="content",
        appended=appended,
        config=config,
        params={
            **params,
            **sizes,
            "dimensions": dimensions,
            "model": model,
            "truncate": truncate,
        },
        options=options,
        concurrent_tasks=concurrent_tasks,
    )


def summary(df: DataFrame) -> SparkSummary:
    """What the executors did for a DataFrame :func:`complete` or :func:`embed` returned.

    Summed over every partition answered so far, in every action on ``df`` (or on a
    DataFrame built from it): rows, answered, failed, cached, requests, 429s
    (``rate_limited``), tokens, estimated cost. Read it after an action; each worker
    adds its partition's counts when the task succeeds (a failed or killed attempt's
    counts are dropped by Spark). In batch mode, the driver's job's summary.

    Parameters
    ----------
    df
        The DataFrame :func:`complete` or :func:`embed` returned.

    Returns
    -------
    SparkSummary
        The counts so far (``str()`` gives one line).

    Raises
    ------
    KeyError
        ``df`` is not one they returned, or runs on Spark Connect (no accumulators).

    Examples
    --------
    >>> out = pac_spark.complete(df, column="q", max_tokens=5)  # doctest: +SKIP
    >>> out.write.mode("overwrite").saveAsTable("answers")  # doctest: +SKIP
    >>> print(pac_spark.summary(out))  # doctest: +SKIP
    8 partitions, 1,000 rows: 1,000 answered (0 from the cache, 0 repeated), ...
    """
    from polars_azurechat.cluster.driver import summary_of

    return summary_of(df)


def _embedding_deployment(
    options: ChatOptions, config: Config, dimensions: int | None, model: str | None
) -> str:
    """The deployment that names the vectors' model, as the executors will see it."""
    import os

    if options.deployments:
        return min(options.deployments, key=lambda d: d.priority).name
    if options.deployment:
        return options.deployment
    if isinstance(config, ChatConfig) and config.deployment:
        return config.deployment
    name = os.environ.get("AZURE_OPENAI_DEPLOYMENT", "")
    if not name and dimensions is None and model is None:
        msg = (
            "the vectors' size is not known on the driver: give dimensions=, or "
            "model=, or deployment= (the executors' deployment is not known here)"
        )
        raise ValueError(msg)
    return name or model or "embeddings"
