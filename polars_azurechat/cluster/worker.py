"""The job each Spark Python worker keeps, and what every partition goes through.

Not meant for outside use. ``df.mapInArrow`` hands each partition to
:class:`AnswerPartitions` as an iterator of Arrow record batches. The worker process
builds the job (a :class:`~polars_azurechat.Completer` or an
:class:`~polars_azurechat.Embedder`: engine, connections, event loop, limiter, cache)
the first time it sees the job's digest and keeps it for every later partition (Spark
reuses its Python workers, ``spark.python.worker.reuse``). A partition is one run of
the job: its batches go through ``answer_batches`` (a few in flight), and each comes
back as the same record batch with the answer columns appended: the input columns are
handed back untouched, the rows in their order.

Every answer is in the cache (``cache="redis://..."``) before its batch is handed back
to Spark, so a retried or speculative task, or a rerun of the job, finds what an
earlier attempt paid for. The package's log lines from a worker that is answering a
partition start with ``[spark partition P (stage S, attempt A)]``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import polars as pl
import pyarrow as pa

from polars_azurechat.config import ChatConfig
from polars_azurechat.functions import _apply_policy as apply_policy
from polars_azurechat.functions import _failures as failures

__all__ = ["AnswerPartitions", "JobSpec", "chat_columns", "digest_of", "job_for"]

logger = logging.getLogger("polars_azurechat.spark")

#: Jobs a worker process keeps (the least recently used is closed beyond).
MAX_JOBS = 4
#: Record batches of a partition being answered at once.
READ_AHEAD = 3

_JOBS: collections.OrderedDict[str, Any] = collections.OrderedDict()
#: The partition this worker is answering now (one task at a time per worker).
_label: str | None = None
_labels_installed = False


@dataclasses.dataclass(frozen=True, repr=False)
class JobSpec:
    """What a worker needs to answer a partition; pickled with the task, never shown.

    ``config`` is a :class:`ChatConfig`, a function returning one (called once per
    worker process, for credentials that do not travel), or ``None`` (the executor's
    environment). ``appended`` names the answer columns and their Arrow types as
    Spark reads them.
    """

    kind: Literal["chat", "embed"]
    digest: str
    config: Any
    params: Mapping[str, Any]
    column: str
    output_column: str
    output: str
    appended: tuple[tuple[str, pa.DataType], ...]
    tally: Any = None

    def __repr__(self) -> str:
        return (
            f"JobSpec(kind={self.kind!r}, column={self.column!r}, "
            f"output_column={self.output_column!r}, job={self.digest[:12]})"
        )

    def build(self) -> Any:
        """The job (built on the executor, once per worker process)."""
        config = self.config
        if config is not None and not isinstance(config, ChatConfig):
            config = config()
            if not isinstance(config, ChatConfig):
                msg = (
                    f"config= must be a ChatConfig or a function returning one; "
                    f"it returned {type(config).__name__}"
                )
                raise TypeError(msg)
        if self.kind == "chat":
            from polars_azurechat.functions import Completer

            return Completer(config=config, progress=False, **self.params)
        from polars_azurechat.embeddings import Embedder

        return Embedder(config=config, progress=False, **self.params)


def digest_of(kind: str, config: Any, params: Mapping[str, Any]) -> str:
    """The job's name on the workers: the sha256 of its pickled config and options.

    Raises
    ------
    TypeError
        They cannot be pickled (an azure-identity credential, for instance): name what
        to do instead.
    """
    from pyspark import cloudpickle

    try:
        raw = cloudpickle.dumps((kind, config, dict(sorted(params.items()))))  # type: ignore[no-untyped-call]
    except Exception as exc:  # noqa: BLE001 - pickling raises many kinds of error
        why = str(exc).split("\n", 1)[0][:200]
        msg = (
            f"the job's config and options cannot be sent to the executors "
            f"({type(exc).__name__}: {why}); for an Entra ID credential pass config= "
            "a function that builds the ChatConfig on each executor, e.g. lambda: "
            "ChatConfig(azure_endpoint=..., credential=ManagedIdentityCredential()); "
            "a response_format model must be defined at the top level of a module or "
            "notebook"
        )
        raise TypeError(msg) from None
    return hashlib.sha256(raw).hexdigest()


def job_for(spec: JobSpec) -> Any:
    """The job of this worker for ``spec``: built on first use, then kept."""
    job = _JOBS.get(spec.digest)
    if job is not None:
        _JOBS.move_to_end(spec.digest)
        return job
    job = spec.build()
    _JOBS[spec.digest] = job
    while len(_JOBS) > MAX_JOBS:
        _, old = _JOBS.popitem(last=False)
        old.close()
    return job


class AnswerPartitions:
    """The function ``mapInArrow`` runs: one partition's record batches in and out."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec

    def __repr__(self) -> str:
        return f"AnswerPartitions({self.spec!r})"

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Answer one partition (Spark calls it in a Python worker)."""
        return answer_partition(self.spec, batches)


def answer_partition(
    spec: JobSpec, batches: Iterable[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Answer one partition as one run of the worker's job; add its summary to the tally."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    label = (
        "spark partition ?"
        if ctx is None
        else f"spark partition {ctx.partitionId()} (stage {ctx.stageId()}, "
        f"attempt {ctx.attemptNumber()})"
    )
    with _labelled(label):
        job = job_for(spec)
        started = time.monotonic()
        offset = 0
        with job.run_scope():
            keyed = _keyed(spec, job, batches)
            for batch, results in job.answer_batches(keyed, read_ahead=READ_AHEAD):
                if job.options.on_error == "raise":
                    found = [(offset + i, r) for i, r in failures(results)]
                    apply_policy("raise", found, offset + len(results))
                offset += len(results)
                yield _appended(spec, job, batch, results)
        s = job.summary(last_run=True)
        if spec.tally is not None:
            from polars_azurechat.cluster.tally import tally_of

            spec.tally.add(tally_of(s))
        logger.info(
            "%d rows: %d answered (%d from the cache), %d failed; %d requests, "
            "%d rate-limited, in %.2f s",
            s.rows,
            s.answered,
            s.cached,
            s.failed,
            s.requests,
            s.rate_limited,
            time.monotonic() - started,
        )


def _keyed(
    spec: JobSpec, job: Any, batches: Iterable[pa.RecordBatch]
) -> Iterator[tuple[pa.RecordBatch, list[Any]]]:
    for batch in batches:
        index = batch.schema.get_field_index(spec.column)
        if index < 0:  # pragma: no cover - the driver checked the column
            msg = f"no column {spec.column!r} in the partition ({batch.schema.names})"
            raise KeyError(msg)
        yield batch, job.requests(pl.Series(spec.column, batch.column(index)))


def _appended(
    spec: JobSpec, job: Any, batch: pa.RecordBatch, results: list[Any]
) -> pa.RecordBatch:
    """``batch`` with the answer columns after its own, cast to Spark's types."""
    columns = (
        _chat_columns(spec, job, results)
        if spec.kind == "chat"
        else _embed_columns(spec, job, results)
    )
    arrays = [
        s.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(t)
        for s, (_, t) in zip(columns, spec.appended, strict=True)
    ]
    return pa.RecordBatch.from_arrays(
        [*batch.columns, *arrays],
        names=[*batch.schema.names, *(name for name, _ in spec.appended)],
    )


def _chat_columns(spec: JobSpec, job: Any, results: list[Any]) -> list[pl.Series]:
    return chat_columns(
        results, output=spec.output, name=spec.output_column, schema=job.output_schema
    )


def chat_columns(
    results: list[Any], *, output: str, name: str, schema: Any
) -> list[pl.Series]:
    """The answer columns of ``results``, as :func:`polars_azurechat.spark.complete` adds them.

    ``output="struct"``: the one Struct column; else the answer (String, or the typed
    answer's Struct), its error and its finish reason.
    """
    from polars_azurechat.engine.convert import results_to_series

    if output == "struct":
        return [results_to_series(results, output="struct", name=name, schema=schema)]
    answer = results_to_series(results, output="content", name=name, schema=schema)
    errors = [None if r is None else r.error for r in results]
    reasons = [None if r is None else r.finish_reason for r in results]
    return [
        answer,
        pl.Series(errors, dtype=pl.String),
        pl.Series(reasons, dtype=pl.String),
    ]


def _embed_columns(spec: JobSpec, job: Any, results: list[Any]) -> list[pl.Series]:
    from polars_azurechat.engine.texts import vectors_to_series

    errors = [None if r is None else r.error for r in results]
    return [
        vectors_to_series(results, job.spec.size, spec.output_column),
        pl.Series(errors, dtype=pl.String),
    ]


@contextlib.contextmanager
def _labelled(label: str) -> Iterator[None]:
    """The package's log lines name ``label`` while the partition is answered."""
    global _label  # one task at a time per worker process
    _install_labels()
    _label = label
    try:
        yield
    finally:
        _label = None


def _install_labels() -> None:
    global _labels_installed  # once per process
    if _labels_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        label = _label
        if label is not None and record.name.startswith("polars_azurechat"):
            record.msg = f"[{label}] {record.msg}"
        return record

    logging.setLogRecordFactory(factory)
    _labels_installed = True
