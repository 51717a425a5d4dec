"""Batch mode's polling loop and the progress it reports. Not meant for outside use.

The chunks are submitted while the enqueued-token limit allows (later ones as earlier
ones finish), and the running batches polled with backoff (``poll_interval_s``, growing
by ``backoff`` while nothing changes, up to ``max_poll_interval_s``); ``progress`` is
called with their statuses and request counts (:class:`BatchProgress`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from polars_azurechat.errors import DeadlineExceededError

if TYPE_CHECKING:
    import os

    from polars_azurechat.batch.chunks import Chunk
    from polars_azurechat.batch.state import BatchStateStore

__all__ = [
    "TERMINAL",
    "BatchProgress",
    "BatchStatus",
    "Outcome",
    "deadline_errors",
    "drive",
    "observe",
    "progress_of",
]

logger = logging.getLogger(__name__)

#: The statuses of a batch that has ended.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})

#: What polling a batch once gives: still running, ended (its rows have their
#: results), or to be submitted again (refused for the enqueued-token quota).
Outcome = Literal["running", "ended", "requeue"]


@dataclasses.dataclass(frozen=True, slots=True)
class BatchStatus:
    """One batch of a run, as last seen."""

    chunk: str
    batch_id: str | None
    #: The batch's status, or the step before it exists (``"uploading"``, ...).
    status: str
    lines: int
    completed: int
    failed: int


@dataclasses.dataclass(frozen=True, slots=True)
class BatchProgress:
    """What ``progress`` receives: every batch of the run."""

    batches: tuple[BatchStatus, ...]

    @property
    def lines(self) -> int:
        """Requests in all batches."""
        return sum(b.lines for b in self.batches)

    @property
    def completed(self) -> int:
        """Requests answered so far (``request_counts.completed``)."""
        return sum(b.completed for b in self.batches)

    @property
    def failed(self) -> int:
        """Requests failed so far (``request_counts.failed``)."""
        return sum(b.failed for b in self.batches)

    @property
    def finished(self) -> int:
        """Batches that ended."""
        return sum(b.status in TERMINAL for b in self.batches)


def progress_of(chunks: Sequence[Chunk]) -> BatchProgress:
    """Every chunk of a run as ``progress`` sees it."""
    return BatchProgress(
        tuple(
            BatchStatus(
                chunk=c.name,
                batch_id=c.batch_id,
                status=c.status or c.phase,
                lines=c.lines,
                completed=c.completed,
                failed=c.failed,
            )
            for c in chunks
        )
    )


def observe(chunk: Chunk, batch: Any, state: BatchStateStore) -> str:
    """Take a polled batch's status and request counts into its chunk; its status.

    A status that changed is logged and recorded in ``state``.
    """
    assert chunk.batch_id is not None  # noqa: S101 - polled once submitted
    status = str(batch.status)
    counts = batch.request_counts
    chunk.completed = int(counts.completed) if counts else 0
    chunk.failed = int(counts.failed) if counts else 0
    if status != chunk.status:
        logger.info("batch %s: %s", chunk.batch_id, status)
        state.seen(chunk.name, chunk.batch_id, status)
    chunk.status = status
    return status


def drive(
    chunks: Sequence[Chunk],
    *,
    fits: Callable[[Chunk, Sequence[Chunk]], bool],
    submit: Callable[[Chunk], bool],
    poll: Callable[[Chunk, Sequence[Chunk]], Outcome],
    report: Callable[[], None],
    sleep: Callable[[float], None],
    first: float,
    longest: float,
    backoff: float,
    expired: Callable[[], bool] = lambda: False,
) -> None:
    """Submit the chunks and poll their batches until every one has ended.

    Or until ``expired()`` (the run's deadline passed): then nothing more is
    submitted or polled, and the chunks that have not ended are left as they are.

    Parameters
    ----------
    chunks
        The run's chunks; those already ``submitted`` are polled from the start.
    fits
        Whether a chunk may be submitted now, beside the batches running.
    submit
        Submits a chunk; whether its batch is running.
    poll
        Polls a running chunk's batch once (given the chunks running).
    report
        Called after each round of submits and each round of polls.
    sleep
        How to wait before each round of polls.
    first, longest, backoff
        The first wait, the longest, and its growth while nothing changes.
    expired
        Whether to stop now (looked at before each round).
    """
    pending = deque(c for c in chunks if c.phase != "submitted")
    active = [c for c in chunks if c.phase == "submitted"]
    interval = first
    while pending or active:
        if expired():
            return
        while pending and fits(pending[0], active):
            chunk = pending.popleft()
            if submit(chunk):
                active.append(chunk)
        report()
        if not active:
            continue
        sleep(interval)
        changed = False
        for chunk in list(active):
            before = (chunk.status, chunk.completed, chunk.failed)
            outcome = poll(chunk, active)
            changed |= outcome != "running" or before != (
                chunk.status,
                chunk.completed,
                chunk.failed,
            )
            if outcome == "requeue":
                active.remove(chunk)
                pending.appendleft(chunk)
            elif outcome == "ended":
                active.remove(chunk)
        report()
        interval = first if changed else min(longest, interval * backoff)


def deadline_errors(
    chunks: Sequence[Chunk], where: str | os.PathLike[str], deadline_s: float | None
) -> list[tuple[Chunk, DeadlineExceededError]]:
    """The error of each chunk's rows when the run's deadline passed before it ended.

    A batch running is left running on Azure (recorded in the state at ``where``: a
    rerun collects it, or ``batches --cancel`` cancels it); a chunk not submitted yet
    sent nothing and a rerun submits it. One warning says how many of each.
    """
    said = f"deadline_s={deadline_s:g}" if deadline_s else "the deadline"
    out = []
    for chunk in chunks:
        if chunk.phase == "submitted":
            why = (
                f"{said} passed while batch {chunk.batch_id} was still "
                f"{chunk.status!r}: it keeps running on Azure, recorded in {where}; "
                "run the same job again to collect its answers (nothing is "
                f"submitted twice), or 'polars-azurechat batches --cache {where} "
                "--cancel' to cancel it"
            )
        else:
            file = (
                f"its input file {chunk.file_id} was uploaded"
                if chunk.file_id
                else "its input file was not uploaded"
            )
            why = (
                f"{said} passed before this request's batch was created ({file}); "
                f"nothing was sent for it. It is recorded in {where}: run the "
                "same job again to submit it"
            )
        out.append((chunk, DeadlineExceededError(why)))
    running = sum(c.phase == "submitted" for c in chunks)
    logger.warning(
        "batch mode: %s passed with %d batch(es) still running on Azure (left "
        "running, recorded in %s: a rerun collects them) and %d chunk(s) not "
        "submitted; their %d rows fail with DeadlineExceededError",
        said,
        running,
        where,
        len(chunks) - running,
        sum(c.lines for c in chunks),
    )
    return out
