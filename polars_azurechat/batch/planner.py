"""Which chunks a batch run follows, new or recorded by an earlier run. Not meant for outside use.

A run first attaches to the live chunks of the state
(:class:`~polars_azurechat.batch.state.BatchStateStore`) that hold its keys: a chunk
an earlier run planned but never uploaded is rebuilt from this run's requests (its
name is its bytes' digest) or found on the server by its file name, else abandoned
and its keys cut anew. The keys no chunk holds are cut into new chunks
(:class:`~polars_azurechat.batch.chunks.Chunker`), recorded before anything is
uploaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from polars_azurechat.batch.chunks import Chunk, digest

if TYPE_CHECKING:
    from polars_azurechat._types import ChatRequest, ChatResult
    from polars_azurechat.batch.chunks import Chunker
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

    def settle(self, wanted: Collection[str], cached: Collection[str]) -> None:
        """Mark done the live chunks whose every answer is already in the cache."""
        if not cached:
            return
        for record in self.state.live(self.host, self.deployment):
            keys = self.state.keys(record.chunk)
            if all(key in cached and key not in wanted for key in keys):
                logger.info(
                    "batch chunk %s: every answer is in the cache; marked done",
                    record.chunk[:12],
                )
                self.state.done(
                    record.chunk, record.status or "unknown", "answers in the cache"
                )

    def plan(
        self,
        items: dict[str, ChatRequest],
        results: dict[str, ChatResult],
        limit: int | None,
    ) -> list[Chunk]:
        """Attach to the live chunks holding these keys; cut the rest into new ones.

        ``limit`` is the enqueued-token limit in force (``None``: none known); a
        request that fits no file gets its error in ``results``.
        """
        wanted = set(items)
        covered: set[str] = set()
        chunks: list[Chunk] = []
        for record in self.state.live(self.host, self.deployment):
            keys = self.state.keys(record.chunk)
            if wanted.isdisjoint(keys):
                continue
            chunk = Chunk.from_record(record, keys)
            if chunk.phase in ("planned", "uploading") and chunk.file_id is None:
                data = self.chunker.rebuild(keys, items)
                if data is not None and digest(data) == chunk.name:
                    chunk.data = data
                else:
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
            covered.update(keys)
            chunks.append(chunk)
        fresh = self.chunker.cut(
            [(key, items[key]) for key in sorted(wanted - covered)], results, limit
        )
        if fresh:
            records = self.state.add_chunks(
                c.as_new(self.host, self.deployment) for c in fresh
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
