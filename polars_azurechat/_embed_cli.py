"""The ``polars-azurechat embed`` command: a Parquet column of texts to vectors.

Registered on :data:`polars_azurechat.cli.app` (``cli.py`` imports this module). It
works as ``run`` does: the paths and the column are checked before any request, the
file is read in record batches answered through :meth:`Embedder.answer_batches`
(bounded memory at any size), written through an :class:`OutputFile`, and the
summary is printed at the end. The vectors are written as Arrow
``fixed_size_list<float32>[n]``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer

from polars_azurechat._cli_files import (
    read_files,
    row_count,
    run_to_file,
    say_wrote,
    take_output,
)
from polars_azurechat._flags import with_flags
from polars_azurechat.cli import _options, _write, app, option_flags
from polars_azurechat.embeddings import Embedder, EmbedOptionsDict
from polars_azurechat.engine.texts import (
    MAX_INPUTS,
    REQUEST_TOKENS,
    check_text_dtype,
    vectors_to_series,
)
from polars_azurechat.errors import AzureChatError
from polars_azurechat.options import ChatOptions
from polars_azurechat.outputs import reads_of

#: Rows read, embedded and written at a time by ``embed``.
BATCH_ROWS = 8_192
#: Batches being embedded at once (as ``run``'s).
BATCHES_IN_FLIGHT = 4
#: The deployment ``embed --emulator`` uses when none is given.
EMULATOR_DEPLOYMENT = "text-embedding-3-small"

#: The job options that apply to embeddings (``run``'s flags for them).
EMBED_OPTIONS = EmbedOptionsDict.__optional_keys__


def embed_flags() -> list[Any]:
    """``run``'s option flags that apply to embeddings (same names, defaults, docs)."""
    return [p for p in option_flags() if p.name in EMBED_OPTIONS]


@app.command("embed", no_args_is_help=True)
@with_flags(embed_flags)
def embed_command(
    input_path: Annotated[Path, typer.Argument(help="Input Parquet file.")],
    output_path: Annotated[Path, typer.Argument(help="Output Parquet file.")],
    *,
    column: Annotated[str, typer.Option(help="Column of texts (String).")] = "text",
    output_column: Annotated[
        str, typer.Option(help="Name of the vector column.")
    ] = "embedding",
    dimensions: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="The vectors' length, sent as 'dimensions' (text-embedding-3); "
            "default: the model's native size.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="The deployment's model, when its name does not start with it "
            "(gives the vectors' size without --dimensions, and the price)."
        ),
    ] = None,
    inputs_per_request: Annotated[
        int, typer.Option(min=1, help="Texts per request at most (Azure: 2,048).")
    ] = MAX_INPUTS,
    request_tokens: Annotated[
        int,
        typer.Option(min=1, help="Tokens per request at most (Azure: 300,000)."),
    ] = REQUEST_TOKENS,
    truncate: Annotated[
        bool,
        typer.Option(
            "--truncate/--no-truncate",
            help="Cut a text over 8,192 tokens to fit (else its row fails).",
        ),
    ] = False,
    emulator: Annotated[
        bool,
        typer.Option("--emulator", help="Run against the built-in emulator, offline."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUTPUT_PATH.")
    ] = False,
    plan: Annotated[
        bool,
        typer.Option(
            "--plan",
            help="Estimate tokens, requests, cost and wall time (at 1 s a request) "
            "without sending anything; OUTPUT_PATH is not written.",
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    **option_values: Any,
) -> None:
    """Read INPUT_PATH, embed every row of --column, write all columns plus the vector.

    The vector column is fixed_size_list<float32>[n] (null for a null or failed
    row), beside '<output-column>_error' (why a row failed).
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _check_texts(input_path, column, output_column)
    options = _options(option_values)
    spec = {
        "dimensions": dimensions,
        "model": model,
        "inputs_per_request": inputs_per_request,
        "request_tokens": request_tokens,
        "truncate": truncate,
    }
    if plan:
        with contextlib.ExitStack() as stack:
            job = stack.enter_context(_job(stack, options, spec, emulator)[0])
            texts = pl.read_parquet(input_path, columns=[column])[column]
            typer.echo(str(job.plan(texts)))
        return
    with contextlib.ExitStack() as stack:
        out = take_output(
            stack,
            output_path,
            overwrite,
            "OUTPUT_PATH",
            reads_of(input_path, options.cache, read_files(None, option_values)),
        )
        job, resumes = _job(stack, options, spec, emulator)
        stack.enter_context(job)
        if job.shows_progress:
            job.expect_rows(row_count(input_path))
        wall, summary = run_to_file(
            job,
            lambda: embed_parquet(job, input_path, out.partial, column, output_column),
            out,
            on_error=options.on_error,
            kept=lambda: _kept(job, resumes=resumes),
            what="vector",
        )
    say_wrote(output_path, wall, summary)


def _job(
    stack: contextlib.ExitStack,
    options: ChatOptions,
    spec: dict[str, Any],
    emulator: bool,
) -> tuple[Embedder, bool]:
    """The embeddings job of the flags (on a started emulator with ``--emulator``).

    Also whether a rerun resumes it (not on an emulator off its cache's port).
    """
    config = None
    params = {k: getattr(options, k) for k in EMBED_OPTIONS}
    resumes = True
    if emulator:
        from polars_azurechat._cli_emulator import start_emulator

        config, options, resumes = start_emulator(
            stack, options, deployment=EMULATOR_DEPLOYMENT
        )
    try:
        return Embedder(config=config, **spec, **params), resumes
    except (AzureChatError, ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from None


def _kept(job: Embedder, *, resumes: bool = True) -> str:
    """What an interrupted ``embed`` kept, and how to resume it.

    ``resumes``: ``False`` on a run's own emulator that a rerun cannot resume from.
    """
    cache = job.engine.cache
    if cache is None:
        return "nothing was kept: pass --cache FILE to resume after a stop"
    if cache.broken:
        return f"{cache.broken}, so nothing was kept"
    if not resumes:
        from polars_azurechat._cli_emulator import EMULATOR_GONE

        return f"what was answered is in {cache.path}, but {EMULATOR_GONE}"
    return f"vectors so far are in {cache.path}: run the same command to resume"


def _check_texts(path: Path, column: str, output_column: str) -> None:
    """Refuse, before any request, a file that is not Parquet or lacks a text column."""
    if not path.is_file():
        raise typer.BadParameter(f"{path} does not exist or is not a file")
    try:
        schema = pl.scan_parquet(path).collect_schema()
    except Exception as exc:  # noqa: BLE001 - any reader failure means: not Parquet
        msg = f"{path} is not a readable Parquet file ({type(exc).__name__})"
        raise typer.BadParameter(msg) from None
    if column not in schema:
        raise typer.BadParameter(
            f"{path} has no column {column!r}; it has {', '.join(schema.names())}"
        )
    try:
        check_text_dtype(schema[column])
    except TypeError:
        msg = f"column {column!r} is {schema[column]}, not String: embed takes texts"
        raise typer.BadParameter(msg) from None
    for name in (output_column, f"{output_column}_error"):
        if name in schema:
            msg = (
                f"{path} already has a column {name!r}: every input column is "
                "kept, so pass another --output-column"
            )
            raise typer.BadParameter(msg)


def embed_parquet(
    job: Embedder, src: Path, dst: Path, column: str, output_column: str
) -> None:
    """Embed ``src``'s ``column`` batch by batch into ``dst``, in order, in bounded memory.

    Every column of ``src`` is kept; ``output_column`` (``Array(Float32, n)``, in
    Parquet ``fixed_size_list<float32>[n]``) and ``<output_column>_error`` are
    added. At most :data:`BATCHES_IN_FLIGHT` batches of :data:`BATCH_ROWS` rows are
    read ahead, all in one run; each is written once it and those before it are
    answered.

    Parameters
    ----------
    job
        The embeddings job.
    src, dst
        The Parquet file read and the one written.
    column, output_column
        The texts' column and the vectors'.

    Examples
    --------
    >>> import tempfile, pathlib, pyarrow.parquet as pq
    >>> import polars as pl, polars_azurechat as pac
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> pl.DataFrame({"t": ["red apples", None]}).write_parquet(d / "in.parquet")
    >>> with pac.Embedder(deployment="text-embedding-3-small", dimensions=4) as job:
    ...     embed_parquet(job, d / "in.parquet", d / "out.parquet", "t", "v")
    >>> t = pq.read_schema(d / "out.parquet").field("v").type
    >>> type(t).__name__, str(t.value_type), t.list_size
    ('FixedSizeListType', 'float', 4)
    >>> pl.read_parquet(d / "out.parquet")["v"].null_count()
    1
    """
    import pyarrow.parquet as pq

    reader = pq.ParquetFile(src)
    size = job.spec.size

    def batches() -> Iterator[tuple[pl.DataFrame, list[Any]]]:
        for batch in reader.iter_batches(batch_size=BATCH_ROWS):
            df = pl.DataFrame(pl.from_arrow(batch))
            yield df, job.requests(df[column])

    def answered(df: pl.DataFrame, results: list[Any]) -> pl.DataFrame:
        errors = [None if r is None else r.error for r in results]
        return df.with_columns(
            vectors_to_series(results, size, output_column),
            pl.Series(f"{output_column}_error", errors, dtype=pl.String),
        )

    writer: Any = None
    try:
        with job.run_scope():
            for df, results in job.answer_batches(
                batches(), read_ahead=BATCHES_IN_FLIGHT
            ):
                writer = _write(writer, dst, answered(df, results).to_arrow())
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # an empty file: write the output schema with no rows
        empty = pl.DataFrame(pl.from_arrow(reader.schema_arrow.empty_table()))
        answered(empty, []).write_parquet(dst)
