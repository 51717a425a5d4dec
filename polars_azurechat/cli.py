"""The ``polars-azurechat`` command: ``run`` a Parquet job, ``emulator`` for a local server."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer

from polars_azurechat._convert import check_dtype
from polars_azurechat._types import OnError
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator, EmulatorSettings, serve
from polars_azurechat.errors import AzureChatError, FailedRowsWarning
from polars_azurechat.functions import Completer

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


@app.command(no_args_is_help=True)
def run(
    input_path: Annotated[Path, typer.Argument(help="Input Parquet file.")],
    output_path: Annotated[Path, typer.Argument(help="Output Parquet file.")],
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
    deployment: Annotated[
        str | None, typer.Option(envvar="AZURE_OPENAI_DEPLOYMENT", show_envvar=True)
    ] = None,
    system: Annotated[
        str | None, typer.Option(help="System message for String prompts.")
    ] = None,
    output: Annotated[
        str,
        typer.Option(
            help="'content': answer + <name>_error columns; 'struct': one struct."
        ),
    ] = "content",
    max_concurrency: Annotated[int, typer.Option(min=1)] = 64,
    requests_per_minute: Annotated[float | None, typer.Option()] = None,
    tokens_per_minute: Annotated[float | None, typer.Option()] = None,
    max_attempts: Annotated[int, typer.Option(min=1)] = 6,
    timeout_s: Annotated[float, typer.Option()] = 60.0,
    deadline_s: Annotated[
        float | None, typer.Option(help="Time bound for the whole job.")
    ] = None,
    on_error: Annotated[str, typer.Option(help="'null' or 'raise'.")] = "null",
    cache: Annotated[Path | None, typer.Option(help="SQLite cache of answers.")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    temperature: Annotated[float | None, typer.Option()] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(help="Extra body field KEY=VALUE (JSON); repeatable."),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUTPUT_PATH.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Read INPUT_PATH, answer every row of --column, write all columns plus the answer."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if output_path.exists() and not overwrite:
        raise typer.BadParameter(
            f"{output_path} exists; pass --overwrite to replace it"
        )
    if output not in ("content", "struct"):
        raise typer.BadParameter("--output must be 'content' or 'struct'")
    if on_error not in ("null", "raise"):
        raise typer.BadParameter("--on-error must be 'null' or 'raise'")
    _check_input(input_path, column)
    params: dict[str, Any] = dict(_parse_param(p) for p in param or [])
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    if temperature is not None:
        params["temperature"] = temperature

    with contextlib.ExitStack() as stack:
        config = None
        if emulator:
            emu = stack.enter_context(Emulator())
            config = ChatConfig(
                azure_endpoint=emu.url,
                api_key=emu.api_key,
                deployment=deployment or "gpt-4o-mini",
            )
        on_err: OnError = "raise" if on_error == "raise" else "null"
        try:
            job = Completer(
                deployment=deployment,
                config=config,
                system=system,
                output="struct",
                max_concurrency=max_concurrency,
                requests_per_minute=requests_per_minute,
                tokens_per_minute=tokens_per_minute,
                max_attempts=max_attempts,
                timeout_s=timeout_s,
                deadline_s=deadline_s,
                on_error=on_err,
                cache=cache,
                progress=progress,
                **params,
            )
        except (AzureChatError, ValueError, TypeError) as exc:
            raise typer.BadParameter(str(exc)) from None
        if job._bar is not None:
            job._bar.known_total = _row_count(input_path)
        result = job.expr(column)

        def answer(lf: pl.LazyFrame) -> pl.LazyFrame:
            if output == "struct":
                return lf.with_columns(result.alias(output_column))
            tmp = f"__{output_column}_result"
            return (
                lf.with_columns(result.alias(tmp))
                .with_columns(
                    pl.col(tmp).struct.field("content").alias(output_column),
                    pl.col(tmp).struct.field("error").alias(f"{output_column}_error"),
                )
                .drop(tmp)
            )

        partial = output_path.with_name(output_path.name + ".partial")
        started = time.perf_counter()
        try:
            with _quiet_failed_rows(), _progress_logging(progress):
                _stream_parquet(input_path, partial, answer)
        except AzureChatError as exc:
            partial.unlink(missing_ok=True)
            typer.echo(f"error: {_first_line(exc)}", err=True)
            raise typer.Exit(1) from None
        os.replace(partial, output_path)
        wall = time.perf_counter() - started
    summary = job.summary()
    typer.echo(f"wrote {output_path} in {wall:.2f} s\n{summary}", err=True)
    if summary.failed:
        raise typer.Exit(1)


#: Rows read, answered and written at a time by ``run``.
BATCH_ROWS = 16_384
#: Batches being answered at once: while one waits for its slowest request, the
#: others keep the engine busy.
BATCHES_IN_FLIGHT = 4


def _stream_parquet(
    src: Path, dst: Path, answer: Callable[[pl.LazyFrame], pl.LazyFrame]
) -> None:
    """Answer ``src`` batch by batch into ``dst``, in order, in bounded memory.

    Polars' own ``sink_parquet`` reads ahead as far as it likes (its memory grows with
    the file); here at most ``BATCHES_IN_FLIGHT`` batches are held, answered at once so
    that the engine keeps working while one batch waits for its slowest request.
    """
    import pyarrow.parquet as pq

    reader = pq.ParquetFile(src)
    batches = reader.iter_batches(batch_size=BATCH_ROWS)

    def run(batch: Any) -> Any:
        return answer(pl.from_arrow(batch).lazy()).collect().to_arrow()  # type: ignore[union-attr]

    writer: pq.ParquetWriter | None = None
    with concurrent.futures.ThreadPoolExecutor(max_workers=BATCHES_IN_FLIGHT) as pool:
        pending: collections.deque[concurrent.futures.Future[Any]] = collections.deque()
        try:
            for batch in batches:
                pending.append(pool.submit(run, batch))
                if len(pending) >= BATCHES_IN_FLIGHT:
                    writer = _write(writer, dst, pending.popleft().result())
            while pending:
                writer = _write(writer, dst, pending.popleft().result())
        finally:
            for f in pending:
                f.cancel()
            if writer is not None:
                writer.close()
    if writer is None:  # an empty file: write the output schema with no rows
        empty = pl.from_arrow(reader.schema_arrow.empty_table())
        answer(empty.lazy()).collect().write_parquet(dst)  # type: ignore[union-attr]


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


def _row_count(path: Path) -> int:
    return int(pl.scan_parquet(path).select(pl.len()).collect().item())


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n\nThis error occurred", 1)[0].strip()


@contextlib.contextmanager
def _quiet_failed_rows() -> Iterator[None]:
    # the summary reports failed rows; a warning per chunk would only repeat it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FailedRowsWarning)
        yield


@contextlib.contextmanager
def _progress_logging(progress: bool) -> Iterator[None]:
    if not progress:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield


@app.command(no_args_is_help=True)
def plan(
    input_path: Annotated[Path, typer.Argument(help="Input Parquet file.")],
    column: Annotated[
        str, typer.Option(help="Column of messages or prompts.")
    ] = "messages",
    system: Annotated[
        str | None, typer.Option(help="System message for String prompts.")
    ] = None,
    model: Annotated[
        str, typer.Option(help="The deployment's model, for prices.")
    ] = "gpt-4o-mini",
    max_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    max_concurrency: Annotated[int, typer.Option(min=1)] = 64,
    requests_per_minute: Annotated[float | None, typer.Option()] = None,
    tokens_per_minute: Annotated[float | None, typer.Option()] = None,
    latency_s: Annotated[
        float, typer.Option(help="Expected time of one request.")
    ] = 1.0,
    context_tokens: Annotated[int, typer.Option()] = 128_000,
    rows_out: Annotated[
        Path | None,
        typer.Option(help="Write the per-row estimate to this Parquet file."),
    ] = None,
) -> None:
    """Estimate tokens, cost and wall time of a run, without sending anything."""
    from polars_azurechat.plan import plan as make_plan

    _check_input(input_path, column)
    series = pl.read_parquet(input_path, columns=[column]).to_series()
    estimate = make_plan(
        series,
        system=system,
        model=model,
        max_tokens=max_tokens,
        max_concurrency=max_concurrency,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        latency_s=latency_s,
        context_tokens=context_tokens,
    )
    if rows_out is not None:
        estimate.rows.write_parquet(rows_out)
    typer.echo(str(estimate))


@app.command("emulator")
def emulator_command(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8000,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    api_key: Annotated[
        str, typer.Option(help="The key it accepts.")
    ] = EmulatorSettings.api_key,
    latency_ms: Annotated[float, typer.Option()] = 0.0,
    jitter_ms: Annotated[float, typer.Option()] = 0.0,
    requests_per_minute: Annotated[float | None, typer.Option()] = None,
    tokens_per_minute: Annotated[float | None, typer.Option()] = None,
    window_s: Annotated[float, typer.Option()] = 10.0,
    error_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    hang_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    drop_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    malformed_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    hang_s: Annotated[float, typer.Option(help="How long a hang lasts.")] = 3600.0,
    retry_after_ms: Annotated[
        int, typer.Option(help="retry-after-ms sent with injected faults; -1: none.")
    ] = 1,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Serve the Azure-compatible emulator until interrupted (Ctrl-C)."""
    typer.echo(
        f"emulator on http://{host}:{port}  "
        f"(AZURE_OPENAI_ENDPOINT=http://{host}:{port} AZURE_OPENAI_API_KEY=<its key>)",
        err=True,
    )
    serve(
        host=host,
        port=port,
        api_key=api_key,
        latency_ms=latency_ms,
        jitter_ms=jitter_ms,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        window_s=window_s,
        error_rate=error_rate,
        hang_rate=hang_rate,
        drop_rate=drop_rate,
        malformed_rate=malformed_rate,
        hang_s=hang_s,
        retry_after_ms=None if retry_after_ms < 0 else retry_after_ms,
        seed=seed,
    )
