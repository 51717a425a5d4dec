"""Which chunks a batch run follows, new or recorded by an earlier run. Not meant for outside use.

A run first attaches to the live chunks of the state
(:class:`~polars_azurechat.batch.state.BatchStateStore`) that hold requests it sends
(its :class:`~polars_azurechat.batch.spool.Spool`): a chunk an earlier run planned but
never uploaded is rebuilt from this run's requests (its name is its bytes' digest) or
found on the server by its file name, else abandoned and its keys cut anew. The keys no chunk holds are cut into new chunks
(:class:`~polars_azurechat.batch.chunks.Chunker`), recorded before anything is
uploaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from polars_azurechat.batch.chunks import Chunk
from polars_azurechat.batch.spool import HIT

if TYPE_CHECKING:
    from polars_azurechat.batch.chunks import Chunker
    from polars_azurechat.batch.spool import Spool
    from polars_azurechat.batch.state import BatchStateStore
    from polars_azurechat.batch.submit import Submitter

__all__ = ["Planner"]

logger = logging.getLogger(__name__)


class Planner:
    """Plans a run's chunks against what the state holds for its host and deployment.

    Parameters
    ----------
    state
        Where earlier runs recorded their chunks, and new chunks are recorded.
    host, deployment
        Whose chunks these are.
    chunker
        How requests become lines and new chunks.
    submitter
        Finds a file an earlier run may have uploaded.
    step
        Called as ``step("planned", chunk)`` for each new chunk (the runner's hook).
    """

    def __init__(
        self,
        state: BatchStateStore,
        *,
        host: str,
        deployment: str,
        chunker: Chunker,
        submitter: Submitter,
        step: Callable[[str, Chunk], None],
    ) -> None:
        self.state = state
        self.host = host
        self.deployment = deployment
        self.chunker = chunker
        self.submitter = submitter
        self.step = step

    def settle(self, spool: Spool) -> None:
        """Mark done the live chunks whose every answer the run found in the cache."""
        if not spool.count(HIT):
            return
        for record in self.state.live(self.host, self.deployment):
            keys = self.state.keys(record.chunk)
            if len(spool.hits(keys)) == len(set(keys)):
                logger.info(
                    "batch chunk %s: every answer is in the cache; marked done",
                    record.chunk[:12],
                )
                self.state.done(
                    record.chunk, record.status or "unknown", "answers in the cache"
                )

    def plan(self, spool: Spool, limit: int | None) -> list[Chunk]:
        """Attach to the live chunks holding requests to send; cut the rest anew.

        ``limit`` is the enqueued-token limit in force (``None``: none known); a
        request that fits no file gets its error in the spool. Each chunk's requests
        are put in it in the spool.
        """
        chunks: list[Chunk] = []
        for record in self.state.live(self.host, self.deployment):
            keys = self.state.keys(record.chunk)
            wanted = spool.wanted(keys)
            if not wanted:
                continue
            chunk = Chunk.from_record(record)
            if (
                chunk.phase in ("planned", "uploading")
                and chunk.file_id is None
                and not self.chunker.rebuilds(chunk.name, keys, spool)
            ):
                found = (
                    self.submitter.find_file(chunk)
                    if chunk.phase == "uploading"
                    else None
                )
                if found is None:
                    logger.info(
                        "batch chunk %s was never uploaded and cannot be rebuilt "
                        "from this run's requests: cut anew",
                        chunk.name[:12],
                    )
                    self.state.abandon(chunk.name, "not rebuilt on a rerun")
                    continue
                self.state.uploaded(chunk.name, found)
                chunk.phase, chunk.file_id = "uploaded", found
            logger.info(
                "attaching to batch chunk %s (%s%s)",
                chunk.name[:12],
                chunk.phase,
                f", batch {chunk.batch_id}" if chunk.batch_id else "",
            )
            spool.assign(chunk.name, wanted)
            chunks.append(chunk)
        fresh = self.chunker.cut(spool, limit)
        if fresh:
            records = self.state.add_chunks(
                c.as_new(self.host, self.deployment, spool.chunk_keys(c.name))
                for c in fresh
            )
            by_name = {r.chunk: r for r in records}
            for c in fresh:
                stored = by_name.get(c.name)
                if stored is not None and stored.phase != "planned":  # pragma: no cover
                    # the same chunk is live in another process: follow it there
                    c.phase, c.file_id, c.batch_id = (
                        stored.phase,
                        stored.file_id,
                        stored.batch_id,
                    )
                elif stored is not None:
                    c.file_id = stored.file_id  # kept from an earlier, done run
                self.step("planned", c)
            chunks.extend(fresh)
        return chunks
