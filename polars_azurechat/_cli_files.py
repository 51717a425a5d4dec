"""What the commands that write a file share: the output, the run, a stop, the end. Internal.

``run`` and ``embed`` take their output for themselves (:func:`take_output`), run the
job into its partial file under the CLI's signal handling (:func:`run_to_file`), and
publish it (:func:`publish`) or say why not, with one set of messages and exit codes.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import typer

from polars_azurechat.errors import AzureChatError
from polars_azurechat.outputs import OutputError, OutputFile

__all__ = [
    "first_line",
    "progress_logging",
    "publish",
    "read_files",
    "row_count",
    "run_to_file",
    "say_wrote",
    "stops",
    "take_output",
]

if TYPE_CHECKING:
    from polars_azurechat.embeddings import Embedder
    from polars_azurechat.functions import Completer
    from polars_azurechat.summary import RunSummary


def run_to_file(
    job: Completer | Embedder,
    write: Callable[[], None],
    out: OutputFile,
    *,
    on_error: str,
    kept: Callable[[], str],
    what: str,
) -> tuple[float, RunSummary]:
    """Run ``write`` (the job into ``out.partial``), say how it ended, publish the file.

    An error or a signal ends the command with its message and exit code (1, or 128 +
    the signal); failed rows under ``--on-error raise`` keep the partial file.
    """
    started = time.perf_counter()
    try:
        with progress_logging(job.shows_progress), stops() as stopped_by:
            write()
    except AzureChatError as exc:
        typer.echo(f"error: {first_line(exc)}\n{job.summary()}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        by = stopped_by[0]
        typer.echo(f"interrupted by {by}; {kept()}\n{job.summary()}", err=True)
        raise typer.Exit(143 if by == "SIGTERM" else 130) from None
    wall = time.perf_counter() - started
    summary = job.summary()
    if summary.failed and on_error == "raise":
        out.keep_partial()
        typer.echo(
            f"error: {summary.failed:,} of {summary.rows + summary.null_rows:,} "
            f"rows failed (--on-error raise); every row's {what} or error is in "
            f"{out.partial}\n{summary}",
            err=True,
        )
        raise typer.Exit(1)
    publish(out, summary)
    return wall, summary


def say_wrote(output_path: Path, wall: float, summary: RunSummary) -> None:
    """The last line of a command that wrote its file; exit 1 if a row failed."""
    typer.echo(f"wrote {output_path} in {wall:.2f} s\n{summary}", err=True)
    if summary.failed:
        raise typer.Exit(1)


def read_files(
    response_format: Path | None, option_values: Mapping[str, Any]
) -> list[tuple[str, Path | None]]:
    """The files a command reads besides its input and cache (never written)."""
    return [
        ("the --response-format file", response_format),
        ("the --deployments file", option_values.get("deployments")),
    ]


def take_output(
    stack: contextlib.ExitStack,
    path: Path,
    overwrite: bool,
    name: str,
    reads: dict[str, Any],
) -> OutputFile:
    """Check ``path`` and take it for this run (every file the CLI writes)."""
    try:
        return stack.enter_context(
            OutputFile(path, overwrite=overwrite, name=name, reads=reads)
        )
    except OutputError as exc:
        raise typer.BadParameter(str(exc)) from None


def publish(out: OutputFile, summary: object = "") -> None:
    """Move the written file into place; a file that appeared meanwhile is kept."""
    try:
        out.publish()
    except OutputError as exc:
        typer.echo(f"error: {exc}\n{summary}".rstrip(), err=True)
        raise typer.Exit(1) from None


def row_count(path: Path) -> int:
    return int(pl.scan_parquet(path).select(pl.len()).collect().item())


def first_line(exc: BaseException) -> str:
    return str(exc).split("\n\nThis error occurred", 1)[0].strip()


@contextlib.contextmanager
def stops() -> Iterator[list[str]]:
    """SIGTERM stops the job as Ctrl-C does; yields [what stopped it] for the message."""
    stopped_by = ["Ctrl-C"]

    def on_term(signum: int, frame: object) -> None:
        stopped_by[0] = "SIGTERM"
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield stopped_by
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def progress_logging(progress: bool) -> Iterator[None]:
    if not progress:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield
