"""Batch mode's input files: JSONL lines, chunks and their names. Not meant for outside use.

One line per distinct request: ``custom_id`` = the cache key, ``method`` = ``POST``,
``url`` = ``/chat/completions``, ``body`` = the body parameters, the messages and
``model`` = the batch deployment. :class:`Chunker` cuts the lines, sorted by key, into
files of at most ``max_lines`` lines and ``max_bytes`` bytes (Azure: 100,000 and
200 MB), and of at most the enqueued-token limit when one is known. A chunk is named
by the sha256 of its bytes (:func:`digest`) and uploaded as
``polars-azurechat-<name>.jsonl``: the resumable state finds a chunk by that name, so
the bytes of a line must never change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from polars_azurechat._types import ChatRequest, ChatResult
from polars_azurechat.batch.api import BATCH_URL
from polars_azurechat.batch.state import NewChunk, Phase
from polars_azurechat.errors import BatchFailedError
from polars_azurechat.transport import tokens as _tokens

if TYPE_CHECKING:
    from polars_azurechat.batch.state import ChunkRecord

__all__ = [
    "FILE_PREFIX",
    "MAX_FILE_BYTES",
    "MAX_FILE_LINES",
    "Chunk",
    "Chunker",
    "digest",
]

#: Azure's limits on one batch input file: requests, and bytes (200 MB).
MAX_FILE_LINES = 100_000
MAX_FILE_BYTES = 200 * 1024 * 1024
#: Input files are named ``polars-azurechat-<sha256 of the content>.jsonl``.
FILE_PREFIX = "polars-azurechat-"


def digest(data: bytes) -> str:
    """A chunk's name: the sha256 of its file's bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(slots=True)
class Chunk:
    """One input file of a run and its batch, as the run follows it."""

    name: str
    keys: list[str]
    tokens: int
    lines: int
    phase: Phase
    file_name: str
    file_id: str | None = None
    batch_id: str | None = None
    data: bytes | None = None
    status: str | None = None
    completed: int = 0
    failed: int = 0

    @classmethod
    def from_record(cls, record: ChunkRecord, keys: list[str]) -> Chunk:
        """A chunk an earlier run recorded, holding ``keys``, where it got to."""
        return cls(
            name=record.chunk,
            keys=keys,
            tokens=record.tokens,
            lines=record.lines,
            phase=record.phase,
            file_name=record.file_name,
            file_id=record.file_id,
            batch_id=record.batch_id,
            status=record.status,
        )

    def as_new(self, host: str, deployment: str) -> NewChunk:
        """What the state store records of this chunk before it is uploaded."""
        return NewChunk(
            chunk=self.name,
            host=host,
            deployment=deployment,
            file_name=self.file_name,
            lines=self.lines,
            bytes=len(self.data or b""),
            tokens=self.tokens,
            keys=self.keys,
        )


class Chunker:
    """Requests as JSONL lines, cut into files within the limits.

    Parameters
    ----------
    params
        The body parameters of every line (``max_tokens``, ``temperature``, ...).
    deployment
        The batch deployment: every line's ``model``.
    max_lines, max_bytes
        The largest file.
    """

    def __init__(
        self,
        params: Mapping[str, Any],
        deployment: str,
        *,
        max_lines: int = MAX_FILE_LINES,
        max_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.params = params
        self.deployment = deployment
        self.max_lines = max_lines
        self.max_bytes = max_bytes

    def line(self, key: str, req: ChatRequest) -> bytes:
        """The JSONL line of ``req``, named ``key`` (``custom_id``), newline included."""
        body = {**self.params, "model": self.deployment, "messages": req.messages}
        line = {"custom_id": key, "method": "POST", "url": BATCH_URL, "body": body}
        return (
            json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n"
        ).encode()

    def rebuild(
        self, keys: Sequence[str], items: Mapping[str, ChatRequest]
    ) -> bytes | None:
        """A recorded chunk's file again, if this run has every request of it."""
        if any(key not in items for key in keys):
            return None
        return b"".join(self.line(key, items[key]) for key in keys)

    def cut(
        self,
        pairs: Sequence[tuple[str, ChatRequest]],
        results: dict[str, ChatResult],
        limit: int | None,
    ) -> list[Chunk]:
        """Cut sorted requests into files within the line, byte and token limits.

        A request that fits no file (too many bytes, or more prompt tokens than the
        enqueued-token ``limit``) gets its error in ``results`` instead.
        """
        out: list[Chunk] = []
        keys: list[str] = []
        lines: list[bytes] = []
        size = tokens = 0

        def close() -> None:
            if keys:
                data = b"".join(lines)
                name = digest(data)
                out.append(
                    Chunk(
                        name=name,
                        keys=list(keys),
                        tokens=tokens,
                        lines=len(keys),
                        phase="planned",
                        file_name=f"{FILE_PREFIX}{name}.jsonl",
                        data=data,
                    )
                )

        for key, req in pairs:
            line = self.line(key, req)
            cost = _tokens.prompt_tokens(req.messages)
            if len(line) > self.max_bytes:
                results[key] = ChatResult(
                    exception=BatchFailedError(
                        f"the request is {len(line)} bytes as a batch line, more than "
                        f"a batch file may hold ({self.max_bytes})",
                        code="file_too_large",
                    )
                )
                continue
            if limit is not None and cost > limit:
                results[key] = ChatResult(
                    exception=BatchFailedError(
                        f"the request's ~{cost} prompt tokens exceed the enqueued-token "
                        f"limit of {limit} of deployment {self.deployment!r}",
                        code="token_limit_exceeded",
                    )
                )
                continue
            if keys and (
                len(keys) >= self.max_lines
                or size + len(line) > self.max_bytes
                or (limit is not None and tokens + cost > limit)
            ):
                close()
                keys, lines, size, tokens = [], [], 0, 0
            keys.append(key)
            lines.append(line)
            size += len(line)
            tokens += cost
        close()
        return out
