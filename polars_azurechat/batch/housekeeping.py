"""Deleting a batch's files once its answers are in the cache. Not meant for outside use.

Azure keeps at most 500 files per resource, and a batch leaves three: its input file,
its output file and its error file. Every file the package uploads expires
(:data:`~polars_azurechat.batch.api.FILE_EXPIRY_S`, as do its batches' output and
error files), and as soon as a batch's chunk is *done* (its answers handed to the
cache, :mod:`~polars_azurechat.batch.state`) the job deletes them:
:meth:`Housekeeper.clean`. The input file of a chunk every row of which failed is
kept, as a rerun cuts the same chunk again and reuses it (it still expires).

Each file is recorded in the state's ``batch_files`` table (an input file when it is
uploaded, the output and error files when the batch ends), and each deletion written
down, so nothing is deleted twice. A delete that fails is logged and left for
``polars-azurechat batches --cleanup`` (:func:`cleanup`), which also cleans the done
chunks of a job that crashed before deleting, and those of jobs recorded before the
files were (their ids are read from the chunk and from the batches on the server).
The files of a chunk that is not done (a batch still running, or one a rerun will
collect) are never deleted.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

    from polars_azurechat.batch.api import Api
    from polars_azurechat.batch.state import BatchStateStore, ChunkRecord, FileKind

__all__ = ["Cleaned", "Housekeeper", "cleanup"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Cleaned:
    """What a cleanup did: files deleted, found gone already, and not deleted."""

    deleted: list[str] = dataclasses.field(default_factory=list)
    gone: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)

    def add(self, other: Cleaned) -> None:
        """Add ``other``'s files to these."""
        self.deleted += other.deleted
        self.gone += other.gone
        self.failed += other.failed

    def lines(self, chunks: int) -> list[str]:
        """What was deleted from ``chunks`` done chunks, as ``batches --cleanup`` says it."""
        out = [
            f"deleted {len(self.deleted)} file(s) of {chunks} finished batch chunk(s)"
            + (f": {', '.join(self.deleted)}" if self.deleted else "")
        ]
        if self.gone:
            out.append(f"{len(self.gone)} file(s) already gone: {', '.join(self.gone)}")
        if self.failed:
            out.append(
                f"{len(self.failed)} file(s) could not be deleted (run --cleanup "
                f"again): {', '.join(self.failed)}"
            )
        return out


class Housekeeper:
    """Records a chunk's files and deletes them once the chunk is done.

    Parameters
    ----------
    api
        Where the files are.
    state
        Where they are recorded, and their deletions.
    """

    def __init__(self, api: Api, state: BatchStateStore) -> None:
        self.api = api
        self.state = state

    def record_outputs(self, chunk: str, batch: Any) -> None:
        """Record the output and error files of ``batch`` (of ``chunk``), if it has any."""
        kinds: tuple[tuple[FileKind, Any], ...] = (
            ("output", getattr(batch, "output_file_id", None)),
            ("error", getattr(batch, "error_file_id", None)),
        )
        for kind, file_id in kinds:
            if file_id:
                self.state.file_made(chunk, str(file_id), kind, str(batch.id))

    def clean(self, chunk: str, *, keep_input: bool = False) -> Cleaned:
        """Delete the files of ``chunk`` not deleted yet (but its input file if told).

        A failed delete is logged and recorded, never raised; a 404 means gone.
        """
        out = Cleaned()
        for record in self.state.files(chunk, undeleted=True):
            if keep_input and record.kind == "input":
                continue
            try:
                existed = self.api.delete(record.file_id)
            except Exception as exc:  # noqa: BLE001 - housekeeping never fails a job
                lines = str(exc).splitlines()
                why = f"{type(exc).__name__}: {lines[0] if lines else ''}"
                logger.warning(
                    "could not delete batch %s file %s (%s); "
                    "'polars-azurechat batches --cleanup' tries again",
                    record.kind,
                    record.file_id,
                    why,
                )
                self.state.file_not_deleted(record.file_id, why)
                out.failed.append(record.file_id)
                continue
            self.state.file_deleted(record.file_id, "deleted" if existed else "gone")
            (out.deleted if existed else out.gone).append(record.file_id)
            logger.info(
                "deleted batch %s file %s%s",
                record.kind,
                record.file_id,
                "" if existed else " (already gone)",
            )
        return out

    def recall(self, record: ChunkRecord) -> None:
        """Record the files of a done chunk an older version never recorded.

        Its input file is the chunk's; its batches' output and error files are read
        from the batches on the server (a batch gone has none left to delete).
        """
        known = {f.file_id for f in self.state.files(record.chunk)}
        with_outputs = {f.batch_id for f in self.state.files(record.chunk)}
        if record.file_id and record.file_id not in known:
            self.state.file_made(record.chunk, record.file_id, "input")
        for job in self.state.jobs(record.chunk):
            if job.batch_id in with_outputs:
                continue
            batch = self.api.batch(job.batch_id)
            if batch is not None:
                self.record_outputs(record.chunk, batch)


def cleanup(state: BatchStateStore, api: Api, chunks: Iterable[ChunkRecord]) -> Cleaned:
    """Delete the files of the done ``chunks`` (of ``api``'s deployment and host).

    A chunk that is not done is skipped: its batch may still be running, or a rerun
    will collect it.
    """
    keeper = Housekeeper(api, state)
    out = Cleaned()
    for record in chunks:
        if record.phase != "done":
            continue
        keeper.recall(record)
        out.add(keeper.clean(record.chunk))
    return out
