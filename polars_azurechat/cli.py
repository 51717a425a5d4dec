"""The ``polars-azurechat`` command: ``run``, ``embed``, ``plan``, ``batches``, ``emulator``.

``run`` answers a Parquet job, ``embed`` embeds one (``_embed_cli.py``), ``plan``
estimates a run, ``batches`` lists, cancels or cleans up a batch-mode job's batches,
``emulator`` serves a local Azure-compatible server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import polars as pl
import typer

from polars_azurechat._cli_emulator import (
    EMULATOR_BATCHES_GONE,
    EMULATOR_GONE,
    start_emulator,
)
from polars_azurechat._cli_files import (
    first_line,
    publish,
    read_files,
    row_count,
    run_to_file,
    say_wrote,
    take_output,
)
from polars_azurechat._flags import attribute_docs, dataclass_flags, with_flags
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import EmulatorSettings, serve
from polars_azurechat.emulator._settings import exposure_warning
from polars_azurechat.engine.convert import check_dtype, results_to_series
from polars_azurechat.errors import AzureChatError
from polars_azurechat.functions import Completer, rows_per_slice
from polars_azurechat.options import ChatOptions
from polars_azurechat.outputs import reads_of
from polars_azurechat.report import cli_report

if TYPE_CHECKING:
    pass


app = typer.Typer(
    name="polars-azurechat",
    help="Answer every row of a Parquet column with Azure OpenAI chat completions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _parse_param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        msg = f"--param takes KEY=VALUE (VALUE as JSON), got {text!r}"
        raise typer.BadParameter(msg)
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def _parse_prices(texts: list[str] | None) -> dict[str, tuple[float, ...] | str]:
    """``--price NAME=MODEL`` or ``NAME=INPUT,OUTPUT[,CACHED]``, as ``prices=``."""
    prices: dict[str, tuple[float, ...] | str] = {}
    for text in texts or ():
        name, sep, value = (t.strip() for t in text.partition("="))
        parts = [p.strip() for p in value.split(",")]
        try:
            price = tuple(float(p) for p in parts)
        except ValueError:
            price = ()
        if sep and name and len(parts) == 1 and parts[0] and not price:
            prices[name] = parts[0]  # the model the deployment runs
        elif sep and name and len(price) in (2, 3) and min(price) >= 0:
            prices[name] = price
        else:
            msg = (
                "--price takes NAME=MODEL (the model deployment NAME runs) or "
                "NAME=INPUT,OUTPUT[,CACHED] (USD per million tokens), not "
                f"{text!r}"
            )
            raise typer.BadParameter(msg)
    return prices


#: ``--price``, for ``run`` and ``plan``.
PriceFlag = Annotated[
    list[str] | None,
    typer.Option(
        "--price",
        help="A deployment's price: NAME=MODEL (priced, and its images billed, as "
        "that model) or NAME=INPUT,OUTPUT[,CACHED] in USD per million tokens, "
        "by name prefix; repeatable.",
    ),
]


def option_flags() -> list[inspect.Parameter]:
    """Every option of :class:`ChatOptions` as a flag (``run`` and ``plan`` take them)."""
    return dataclass_flags(
        ChatOptions,
        docs={f.name: f.metadata["doc"] for f in dataclasses.fields(ChatOptions)},
        types={
            "cache": str | None,  # a path, or redis:// (a Path would fold the //)
            "deployments": Path | None,
            "output": Literal["content", "struct"],
            "on_error": Literal["null", "raise"],
            "on_truncated": Literal["keep", "error"],
        },
        switches=frozenset({"progress"}),
    )


def _options(values: dict[str, Any]) -> ChatOptions:
    """The job's options from the flags; ``--deployments`` is read as a TOML file."""
    values = dict(values)
    path = values.get("deployments")
    try:
        if path is not None:
            from polars_azurechat.deployments import load_deployments

            values["deployments"] = load_deployments(path)
            values["deployment"] = None  # the file names them (the variable may be set)
        return ChatOptions(**values)
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command(no_args_is_help=True)
@with_flags(option_flags)
def run(
    input_path: Annotated[Path, typer.Argument(help="Input Parquet file.")],
    output_path: Annotated[Path, typer.Argument(help="Output Parquet file.")],
    *,
    column: Annotated[
        str, typer.Option(help="Column of messages or prompts.")
    ] = "messages",
    output_column: Annotated[
        str, typer.Option(help="Name of the answer column.")
    ] = "answer",
    emulator: Annotated[
        bool,
        typer.Option("--emulator", help="Run against the built-in emulator, offline."),
    ] = False,
    max_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    max_completion_tokens: Annotated[
        int | None,
        typer.Option(
            min=1, help="The answer's budget on reasoning models (gpt-5, o-series)."
        ),
    ] = None,
    reasoning_effort: Annotated[
        str | None,
        typer.Option(help="Reasoning models: minimal, low, medium or high."),
    ] = None,
    temperature: Annotated[float | None, typer.Option()] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(help="Extra body field KEY=VALUE (JSON); repeatable."),
    ] = None,
    response_format: Annotated[
        Path | None,
        typer.Option(
            help="A JSON-schema file: each answer is validated against it and written "
            "as typed columns (a struct)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUTPUT_PATH.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Write the run's report (table, charts) to this HTML file."),
    ] = None,
    price: PriceFlag = None,
    **option_values: Any,
) -> None:
    """Read INPUT_PATH, answer every row of --column, write all columns plus the answer."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _check_input(input_path, column)
    params = _body_params(
        param,
        {
            "max_tokens": max_tokens,
            "max_completion_tokens": max_completion_tokens,
            "reasoning_effort": reasoning_effort,
            "temperature": temperature,
        },
        response_format,
    )
    options = _options(option_values)
    prices = _parse_prices(price)

    with contextlib.ExitStack() as stack:
        # taken for the whole run: a second run to the same file is refused here
        out = take_output(
            stack,
            output_path,
            overwrite,
            "OUTPUT_PATH",
            reads_of(
                input_path, options.cache, read_files(response_format, option_values)
            ),
        )
        if options.mode == "batch":
            _check_batch_state(options.cache)
        config, resumes = None, False
        if emulator:
            config, options, resumes = start_emulator(stack, options)
        try:
            job = stack.enter_context(
                Completer(
                    config=config,
                    options=options.replace(output="struct"),
                    prices=prices,
                    **params,
                )
            )
        except (AzureChatError, ValueError, TypeError) as exc:
            raise typer.BadParameter(str(exc)) from None
        job.log_problems(failed=False, truncated=False)  # the summary says it
        cli_report(stack, job, report)  # matplotlib checked now, written at the end
        if job.shows_progress:
            job.expect_rows(row_count(input_path))
        wall, summary = run_to_file(
            job,
            lambda: _answer_parquet(
                job, input_path, out.partial, column, output_column, options.output
            ),
            out,
            on_error=options.on_error,
            kept=lambda: _kept_after_stop(
                job, options, emulator=emulator and not resumes
            ),
            what="answer",
        )
    say_wrote(output_path, wall, summary)


def _check_batch_state(cache: str | os.PathLike[str] | None) -> None:
    """Refuse at the start a cache whose batches another job is running."""
    from polars_azurechat.batch.state import check_batch_lock

    if cache is None:
        return  # ChatOptions says what is missing
    try:
        check_batch_lock(cache)
    except AzureChatError as exc:
        raise typer.BadParameter(str(exc)) from None


def _body_params(
    param: list[str] | None,
    flags: dict[str, Any],
    response_format: Path | None,
) -> dict[str, Any]:
    """The body fields of a command: ``--param`` and the flags that set one."""
    params: dict[str, Any] = dict(_parse_param(p) for p in param or [])
    params.update({k: v for k, v in flags.items() if v is not None})
    if response_format is not None:
        params["response_format"] = _schema_file(response_format)
    return params


def _kept_after_stop(
    job: Completer, options: ChatOptions, *, emulator: bool = False
) -> str:
    """What an interrupted ``run`` kept, and how to resume or cancel it.

    ``emulator``: the run's own emulator, which a rerun cannot resume from.
    """
    cache = job.engine.cache
    if cache is None:
        return "nothing was kept: pass --cache FILE to resume after a stop"
    if cache.broken:
        return f"{cache.broken}, so nothing was kept"
    if emulator:
        gone = EMULATOR_BATCHES_GONE if options.mode == "batch" else EMULATOR_GONE
        return f"what was answered is in {cache.path}, but {gone}"
    if options.mode == "batch":
        return (
            f"the batches submitted keep running and are recorded in "
            f"{cache.path}: run the same command to collect them (nothing is "
            f"submitted twice), or 'polars-azurechat batches --cache "
            f"{cache.path} --cancel' to cancel them"
        )
    return f"answers so far are in {cache.path}: run the same command to resume"


#: Rows read, answered and written at a time by ``run``.
BATCH_ROWS = 8_192
#: Batches being answered at once: while one waits for its slowest request, the
#: others keep the engine busy.
BATCHES_IN_FLIGHT = 4


def _answer_parquet(
    job: Completer,
    src: Path,
    dst: Path,
    column: str,
    output_column: str,
    output: str,
) -> None:
    """Answer ``src`` batch by batch into ``dst``, in order, in bounded memory.

    The batches go through the job (at most ``BATCHES_IN_FLIGHT`` read ahead online)
    as one run; each is written as soon as it and those before it are answered. In
    batch mode the file is read twice: the column first (the job spools each batch's
    requests to disk and sends them all as one set of Azure batches), then every
    column again, each batch joined to its results as they come back.
    """
    import pyarrow.parquet as pq

    reader = pq.ParquetFile(src)
    rows = _batch_rows(reader)

    def batches() -> Iterator[tuple[pl.DataFrame, list[Any]]]:
        for batch in reader.iter_batches(batch_size=rows):
            df = pl.DataFrame(pl.from_arrow(batch))
            yield df, job.requests(df[column])

    def frames() -> Iterator[pl.DataFrame]:  # batch mode's second pass
        for batch in pq.ParquetFile(src).iter_batches(batch_size=rows):
            yield pl.DataFrame(pl.from_arrow(batch))

    def answered_batches() -> Iterator[tuple[pl.DataFrame, list[Any]]]:
        if job.options.mode != "batch":
            yield from job.answer_batches(batches(), read_ahead=BATCHES_IN_FLIGHT)
            return
        first = (  # the column only, with no frame kept: the keys are held to the end
            (None, job.requests(pl.DataFrame(pl.from_arrow(b))[column]))
            for b in reader.iter_batches(batch_size=rows, columns=[column])
        )
        for (_, results), df in zip(job.answer_batches(first), frames(), strict=True):
            yield df, results

    def answered(df: pl.DataFrame, results: list[Any]) -> pl.DataFrame:
        struct = results_to_series(
            results, output="struct", name=output_column, schema=job.output_schema
        )
        if output == "struct":
            return df.with_columns(struct)
        fields = struct.struct
        answer = "content" if job.output_schema is None else "parsed"
        return df.with_columns(
            fields.field(answer).alias(output_column),
            fields.field("error").alias(f"{output_column}_error"),
            fields.field("finish_reason").alias(f"{output_column}_finish_reason"),
        )

    writer: pq.ParquetWriter | None = None
    try:
        with job.run_scope():
            for df, results in answered_batches():
                writer = _write(writer, dst, answered(df, results).to_arrow())
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # an empty file: write the output schema with no rows
        empty = pl.DataFrame(pl.from_arrow(reader.schema_arrow.empty_table()))
        answered(empty, []).write_parquet(dst)


def _batch_rows(reader: Any) -> int:
    """Rows per batch of a Parquet file: :data:`BATCH_ROWS`, fewer when rows are large.

    A batch holds about :data:`~polars_azurechat.functions.SLICE_BYTES` of the file's
    data (its row groups' uncompressed size per row): a photo a row is 50-70 KB, and
    four batches of 8,192 of them were gigabytes.
    """
    meta = reader.metadata
    if not meta.num_rows:
        return BATCH_ROWS
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return rows_per_slice(size / meta.num_rows, BATCH_ROWS)


def _schema_file(path: Path) -> Any:
    """The JSON schema in ``path`` (refused before any request if it is not one)."""
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        msg = f"--response-format {path}: cannot be read ({exc.strerror or exc})"
        raise typer.BadParameter(msg) from None
    except ValueError as exc:
        msg = f"--response-format {path}: not JSON ({exc})"
        raise typer.BadParameter(msg) from None
    from polars_azurechat.schema.output import OutputSchema

    try:
        OutputSchema.from_user(schema)
    except (TypeError, ValueError) as exc:
        msg = f"--response-format {path}: {exc}"
        raise typer.BadParameter(msg) from None
    return schema


def _write(writer: Any, dst: Path, table: Any) -> Any:
    import pyarrow.parquet as pq

    if writer is None:
        writer = pq.ParquetWriter(dst, table.schema)
    writer.write_table(table)
    return writer


def _check_input(path: Path, column: str) -> None:
    """Refuse, before any request, a file that is not Parquet or lacks a usable column."""
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
        check_dtype(schema[column])
    except TypeError as exc:
        raise typer.BadParameter(f"column {column!r}: {exc}") from None


@app.command(no_args_is_help=True)
@with_flags(option_flags)
def plan(
    input_path: Annotated[Path, typer.Argument(help="Input Parquet file.")],
    *,
    column: Annotated[
        str, typer.Option(help="Column of messages or prompts.")
    ] = "messages",
    model: Annotated[
        str | None,
        typer.Option(
            help="The deployment's model, for prices (default: the deployment's "
            "name, else gpt-4o-mini)."
        ),
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    max_completion_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="The answer's budget on reasoning models."),
    ] = None,
    response_format: Annotated[
        Path | None,
        typer.Option(help="A JSON-schema file (its tokens count in every request)."),
    ] = None,
    latency_s: Annotated[
        float, typer.Option(help="Expected time of one request.")
    ] = 1.0,
    context_tokens: Annotated[int, typer.Option()] = 128_000,
    rows_out: Annotated[
        Path | None,
        typer.Option(help="Write the per-row estimate to this Parquet file."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the --rows-out file.")
    ] = False,
    price: PriceFlag = None,
    **option_values: Any,
) -> None:
    """Estimate tokens, cost and wall time of a run, without sending anything.

    It takes every option 'run' takes (those that bound the wall time matter).
    """
    from polars_azurechat.plan import plan as make_plan

    _check_input(input_path, column)
    options = _options(option_values)
    prices = _parse_prices(price)
    body = _body_params(
        None,
        {"max_tokens": max_tokens, "max_completion_tokens": max_completion_tokens},
        response_format,
    )
    with contextlib.ExitStack() as stack:
        rows_file = None
        if rows_out is not None:  # the rules of run's OUTPUT_PATH, checked first
            rows_file = take_output(
                stack,
                rows_out,
                overwrite,
                "--rows-out",
                reads_of(
                    input_path,
                    options.cache,
                    read_files(response_format, option_values),
                ),
            )
        series = pl.read_parquet(input_path, columns=[column]).to_series()
        estimate = make_plan(
            series,
            model=model,
            latency_s=latency_s,
            context_tokens=context_tokens,
            prices=prices,
            options=options,
            **body,
        )
        if rows_file is not None:
            estimate.rows.write_parquet(rows_file.partial)
            publish(rows_file)
    typer.echo(str(estimate))


@app.command("batches", no_args_is_help=True)
def batches_command(
    *,
    cache: Annotated[
        Path,
        typer.Option(
            help="The job's cache file (batch mode records its batches there)."
        ),
    ],
    cancel: Annotated[
        bool,
        typer.Option(
            "--cancel",
            help="Cancel the batches still running (at the endpoint of "
            "AZURE_OPENAI_ENDPOINT / .env, with its credential); a rerun of the job "
            "then gives their unanswered rows BatchIncompleteError (or sends them "
            "online with --batch-fallback online).",
        ),
    ] = False,
    cleanup: Annotated[
        bool,
        typer.Option(
            "--cleanup",
            help="Delete the files (input, output, error) of the finished batches "
            "whose answers are in the cache, at the endpoint of AZURE_OPENAI_ENDPOINT "
            "/ .env (Azure keeps at most 500 files); the files of batches still "
            "running are kept.",
        ),
    ] = False,
) -> None:
    """List, cancel or clean up the batches of a batch-mode job (from its cache file)."""
    from polars_azurechat.batch.state import BatchStateStore
    from polars_azurechat.store.sqlite import SqliteCache

    if not cache.is_file():
        raise typer.BadParameter(f"{cache} does not exist or is not a file")
    try:  # refuses another program's file before the state store touches it
        SqliteCache(cache).close()
    except AzureChatError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:  # cancelling takes the file (refused while a job runs its batches)
        state = BatchStateStore(cache, lock=cancel or cleanup)
    except AzureChatError as exc:
        raise typer.BadParameter(str(exc)) from None
    with state:
        if cancel:
            _cancel_batches(state)
        if cleanup:
            _cleanup_batches(state)
        chunks = state.chunks()
        if not chunks:
            typer.echo(f"{cache}: no batches")
            return
        typer.echo(
            f"{'batch':<40} {'status':<11} {'phase':<10} {'lines':>7} "
            f"{'deployment':<20} host"
        )
        for c in chunks:
            typer.echo(
                f"{c.batch_id or '-':<40} {c.status or '-':<11} {c.phase:<10} "
                f"{c.lines:>7,} {c.deployment:<20} {c.host}"
            )
        live = sum(c.live for c in chunks)
        typer.echo(
            f"{len(chunks)} chunk(s), {live} still live (a rerun of the job attaches "
            "to them)"
        )


def _cleanup_batches(state: Any) -> None:
    """Delete the files of the done chunks the state holds at the configured endpoint."""
    from polars_azurechat.batch.api import Api
    from polars_azurechat.batch.housekeeping import Cleaned, cleanup
    from polars_azurechat.batch.mode import batch_client

    try:
        config = ChatConfig.from_env()
    except AzureChatError as exc:
        raise typer.BadParameter(str(exc)) from None
    client = batch_client(config)
    host = str(client.base_url.host)
    chunks = state.chunks()
    done = [c for c in chunks if c.phase == "done"]
    elsewhere = [c for c in done if c.host != host]
    cleaned = Cleaned()
    try:
        for deployment in sorted({c.deployment for c in done if c.host == host}):
            mine = [c for c in done if c.host == host and c.deployment == deployment]
            cleaned.add(cleanup(state, Api(client, deployment), mine))
    except AzureChatError as exc:
        typer.echo(f"error: {first_line(exc)}", err=True)
        raise typer.Exit(1) from None
    for line in cleaned.lines(len(done) - len(elsewhere)):
        typer.echo(line)
    live = sum(c.live for c in chunks)
    if live:
        typer.echo(f"{live} batch chunk(s) not finished: their files are kept")
    if elsewhere:
        hosts = ", ".join(sorted({c.host for c in elsewhere}))
        typer.echo(
            f"{len(elsewhere)} finished chunk(s) at {hosts} were not cleaned: the "
            f"configured endpoint is {host}"
        )
    if cleaned.failed:
        raise typer.Exit(1)


def _cancel_batches(state: Any) -> None:
    """Cancel the live batches the state holds at the configured endpoint."""
    from polars_azurechat.batch.mode import batch_client
    from polars_azurechat.batch.runner import BatchRunner

    try:
        config = ChatConfig.from_env()
    except AzureChatError as exc:
        raise typer.BadParameter(str(exc)) from None
    client = batch_client(config)
    host = str(client.base_url.host)
    live = [c for c in state.chunks(live_only=True) if c.batch_id is not None]
    elsewhere = [c for c in live if c.host != host]
    cancelled: list[str] = []
    try:
        for deployment in sorted({c.deployment for c in live if c.host == host}):
            runner = BatchRunner(client, deployment=deployment, state=state)
            cancelled.extend(runner.cancel())
    except AzureChatError as exc:
        typer.echo(f"error: {first_line(exc)}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"cancelled {len(cancelled)} batch(es)"
        + (f": {', '.join(cancelled)}" if cancelled else "")
    )
    if elsewhere:
        hosts = ", ".join(sorted({c.host for c in elsewhere}))
        typer.echo(
            f"{len(elsewhere)} batch(es) at {hosts} were not cancelled: the "
            f"configured endpoint is {host}"
        )


def _emulator_flags() -> list[inspect.Parameter]:
    return dataclass_flags(
        EmulatorSettings,
        docs=attribute_docs(EmulatorSettings),
        types={"per_deployment": str | None},
        switches=frozenset({"limit_headers", "key_auth"}),
        skip=frozenset({"deployments", "clock"}),
    )


@app.command("emulator")
@with_flags(_emulator_flags)
def emulator_command(
    *,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8000,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    **settings: Any,
) -> None:
    """Serve the Azure-compatible emulator until interrupted (Ctrl-C).

    --retry-after-ms -1 sends no retry-after-ms on injected faults. --per-deployment
    takes JSON: '{"ptu": {"requests_per_minute": 1200, "down_after_s": 5}}'.
    """
    if settings.get("retry_after_ms") is not None and settings["retry_after_ms"] < 0:
        settings["retry_after_ms"] = None
    if settings.get("per_deployment") is not None:
        try:
            settings["per_deployment"] = json.loads(settings["per_deployment"])
        except ValueError as exc:
            msg = f"--per-deployment is not JSON: {exc}"
            raise typer.BadParameter(msg) from None
    typer.echo(
        f"emulator on http://{host}:{port}  "
        f"(AZURE_OPENAI_ENDPOINT=http://{host}:{port} AZURE_OPENAI_API_KEY=<its key>)",
        err=True,
    )
    try:
        chosen = EmulatorSettings(**settings)
        warning = exposure_warning(host, chosen)
        if warning is not None:
            typer.echo(f"warning: {warning}", err=True)
        serve(chosen, host=host, port=port)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


# the ``embed`` command lives in its own module, registered on ``app`` as it loads
from polars_azurechat import _embed_cli  # noqa: E402, F401
