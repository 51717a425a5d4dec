"""A chunk from its JSONL bytes to a running batch, resumably. Not meant for outside use.

Each file is uploaded (``purpose="batch"``), awaited until ``processed`` (at most
``file_wait_s``, :data:`FILE_WAIT_S` unless told), and a batch created from it (``completion_window="24h"``), its metadata naming the chunk and the
attempt. Every step is written to the
:class:`~polars_azurechat.batch.state.BatchStateStore` before it happens, so a rerun
after a crash finds the file (by its name) or the batch (by its metadata) that an
earlier run made and never uploads or creates twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polars_azurechat.batch.api import Api
    from polars_azurechat.batch.chunks import Chunk
    from polars_azurechat.batch.state import BatchStateStore

__all__ = ["FILE_WAIT_S", "META_ATTEMPT", "META_CHUNK", "FileWaitExpired", "Submitter"]

logger = logging.getLogger(__name__)

#: Batch metadata naming the chunk and the attempt, so a lost batch id can be found.
META_CHUNK = "polars_azurechat_chunk"
META_ATTEMPT = "polars_azurechat_attempt"
#: The longest wait for an uploaded file to become ``processed`` (Azure takes seconds
#: to minutes; a file may also stay ``pending`` for ever).
FILE_WAIT_S = 30 * 60.0


class FileWaitExpired(Exception):  # noqa: N818 - an outcome, not a bug
    """An uploaded file did not become ``processed`` within ``file_wait_s``."""


class Submitter:
    """Uploads a chunk's file and creates its batch, each step recorded first.

    Parameters
    ----------
    api
        The SDK calls.
    state
        Where the files and batches are recorded before each step.
    step
        Called as ``step(name, chunk)`` at each step (the runner's hook).
    sleep, clock
        How to wait between looks at a file that is still ``pending``, and what time
        it is.
    file_poll_s, backoff
        The first wait between those looks, and its growth (up to ten times the
        first).
    file_wait_s
        The longest wait for a file to become ``processed``: then the chunk's rows
        fail with an error naming the file and its last status.
    """

    def __init__(
        self,
        api: Api,
        state: BatchStateStore,
        *,
        step: Callable[[str, Chunk], None],
        sleep: Callable[[float], None],
        clock: Callable[[], float],
        file_poll_s: float,
        backoff: float,
        file_wait_s: float = FILE_WAIT_S,
    ) -> None:
        self.api = api
        self.state = state
        self.step = step
        self.sleep = sleep
        self.clock = clock
        self.file_poll_s = file_poll_s
        self.backoff = backoff
        self.file_wait_s = file_wait_s

    def submit(
        self, chunk: Chunk, rebuild: Callable[[], IO[bytes] | None]
    ) -> str | None:
        """Upload (or find) the file, wait until processed, create (or find) the batch.

        ``rebuild`` writes the chunk's file (a temporary file, closed once uploaded),
        or gives ``None`` if this run cannot (it does not hold every request of a
        chunk an earlier run recorded). Returns ``None`` once a batch is running,
        else why the chunk cannot be submitted.
        """
        state = self.state
        for _ in range(3):  # a file the server refuses is uploaded at most 3 times
            if chunk.phase == "planned" and chunk.file_id is not None:
                # cut again with the same content: the earlier upload may still serve
                state.uploaded(chunk.name, chunk.file_id)
                chunk.phase = "uploaded"
            if chunk.phase in ("planned", "uploading"):
                resumed = chunk.phase == "uploading"  # the upload may have happened
                state.uploading(chunk.name)
                chunk.phase = "uploading"
                self.step("uploading", chunk)
                found = self.find_file(chunk) if resumed else None
                if found is None:
                    file = rebuild()
                    if file is None:
                        return (
                            "its input file is gone from the server and this run "
                            "does not hold all of its requests to upload it again"
                        )
                    with file:  # read as it is sent
                        found = str(self.api.upload(chunk.file_name, file).id)
                    logger.info("uploaded %s as %s", chunk.file_name, found)
                    self.step("uploaded", chunk)
                chunk.file_id = found
                state.uploaded(chunk.name, found)
                chunk.phase = "uploaded"
                self.step("file_recorded", chunk)
            resumed = chunk.phase == "creating"  # the create may have happened
            if chunk.phase == "uploaded":
                assert chunk.file_id is not None  # noqa: S101 - set with the phase
                try:
                    problem = self.wait_processed(chunk.file_id)
                except FileWaitExpired as exc:  # uploading it again would not help
                    logger.warning("batch file %s: %s", chunk.file_id, exc)
                    return str(exc)
                if problem is not None:
                    logger.warning(
                        "batch file %s: %s; uploading it again", chunk.file_id, problem
                    )
                    state.reupload(chunk.name, problem)
                    chunk.phase, chunk.file_id = "planned", None
                    continue
                self.step("file_processed", chunk)
            assert chunk.file_id is not None  # noqa: S101 - recorded before creating
            attempt = state.creating(chunk.name)
            chunk.phase = "creating"
            self.step("creating", chunk)
            batch = self.find_batch(chunk.name, attempt) if resumed else None
            if batch is None:
                batch = self.api.create(
                    chunk.file_id,
                    {META_CHUNK: chunk.name, META_ATTEMPT: str(attempt)},
                )
                logger.info(
                    "created batch %s for %s (attempt %d)",
                    batch.id,
                    chunk.file_name,
                    attempt,
                )
                self.step("created", chunk)
            else:
                logger.info("found batch %s created before a crash", batch.id)
            chunk.batch_id, chunk.status = str(batch.id), str(batch.status)
            state.submitted(chunk.name, chunk.batch_id, chunk.status)
            chunk.phase = "submitted"
            self.step("batch_recorded", chunk)
            return None
        return "the server refused its input file"

    def wait_processed(self, file_id: str) -> str | None:
        """Wait until the file is ``processed``; else why it cannot be used.

        Raises
        ------
        FileWaitExpired
            The file is still not ``processed`` after ``file_wait_s``.
        """
        wait = self.file_poll_s
        start = self.clock()
        while True:
            file = self.api.file(file_id)
            if file is None:
                return "its input file is gone from the server"
            status = str(file.status)
            if status == "processed":
                return None
            if status in ("error", "deleted", "deleting"):
                details = getattr(file, "status_details", None)
                return f"its input file is in status {status!r}" + (
                    f" ({details})" if details else ""
                )
            waited = self.clock() - start
            if waited >= self.file_wait_s:
                msg = (
                    f"its input file {file_id} is still {status!r} after {waited:,.0f} s "
                    f"(batch_file_wait_s={self.file_wait_s:g}); no batch was created. "
                    "A rerun of the job waits for the same file again"
                )
                raise FileWaitExpired(msg)
            self.sleep(min(wait, self.file_wait_s - waited))
            wait = min(wait * self.backoff, 10 * self.file_poll_s)

    def find_file(self, chunk: Chunk) -> str | None:
        """The id of this chunk's file if an earlier run uploaded it (by its name)."""
        for file in self.api.files():
            if str(file.filename) == chunk.file_name and str(file.status) not in (
                "error",
                "deleted",
                "deleting",
            ):
                logger.info("found %s uploaded before a crash", chunk.file_name)
                return str(file.id)
        return None

    def find_batch(self, chunk: str, attempt: int) -> Any | None:
        """The batch an earlier run created for this chunk and attempt, if any."""
        for batch in self.api.batches():
            metadata = batch.metadata or {}
            if metadata.get(META_CHUNK) == chunk and metadata.get(META_ATTEMPT) == str(
                attempt
            ):
                return batch
        return None
