"""Batch mode's input files: JSONL lines, chunks and their names. Not meant for outside use.

One line per distinct request: ``custom_id`` = the cache key, ``method`` = ``POST``,
``url`` = ``/chat/completions``, ``body`` = the body parameters, the messages and
``model`` = the batch deployment (with ``api="responses"``: ``url`` =
``/v1/responses``, the body as ``responses_params`` translates it, the messages as
``input``). :class:`Chunker` cuts the lines, sorted by key, into
files of at most ``max_lines`` lines and ``max_bytes`` bytes (Azure: 100,000 and
200 MB), and of at most the enqueued-token limit when one is known. The lines are in
the run's :class:`~polars_azurechat.batch.spool.Spool` (written there as the rows are
read): a chunk is cut by hashing its lines a page at a time, and its file is written
from the spool to a temporary file only when it is uploaded. A chunk is named
by the sha256 of its bytes (:func:`digest`) and uploaded as
``polars-azurechat-<name>.jsonl``: the resumable state finds a chunk by that name, so
the bytes of a line must never change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from polars_azurechat._types import ChatRequest, ChatResult
from polars_azurechat.batch.api import BATCH_URL, RESPONSES_URL
from polars_azurechat.batch.spool import BATCH
from polars_azurechat.batch.state import NewChunk, Phase
from polars_azurechat.errors import BatchFailedError

if TYPE_CHECKING:
    from polars_azurechat.batch.spool import Spool
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


def _same(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return messages


def digest(data: bytes) -> str:
    """A chunk's name: the sha256 of its file's bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(slots=True)
class Chunk:
    """One input file of a run and its batch, as the run follows it.

    Its keys are not held here (a run's chunks together hold every request): they
    are in the state (``BatchStateStore.keys``, in line order), read when needed.
    """

    name: str
    tokens: int
    lines: int
    phase: Phase
    file_name: str
    file_id: str | None = None
    batch_id: str | None = None
    size: int = 0
    status: str | None = None
    completed: int = 0
    failed: int = 0

    @classmethod
    def from_record(cls, record: ChunkRecord) -> Chunk:
        """A chunk an earlier run recorded, where it got to."""
        return cls(
            name=record.chunk,
            tokens=record.tokens,
            lines=record.lines,
            phase=record.phase,
            file_name=record.file_name,
            file_id=record.file_id,
            batch_id=record.batch_id,
            size=record.bytes,
            status=record.status,
        )

    def as_new(self, host: str, deployment: str, keys: Iterable[str]) -> NewChunk:
        """What the state store records of this chunk (and its ``keys``) first."""
        return NewChunk(
            chunk=self.name,
            host=host,
            deployment=deployment,
            file_name=self.file_name,
            lines=self.lines,
            bytes=self.size,
            tokens=self.tokens,
            keys=keys,
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
    api
        ``"chat"``: chat-completions lines (``url`` ``/chat/completions``);
        ``"responses"``: Responses API lines (``url`` ``/v1/responses``, the body
        translated from ``params`` as online, by
        :func:`~polars_azurechat.transport.responses.responses_params`, the messages
        as ``input``).
    """

    def __init__(
        self,
        params: Mapping[str, Any],
        deployment: str,
        *,
        max_lines: int = MAX_FILE_LINES,
        max_bytes: int = MAX_FILE_BYTES,
        api: str = "chat",
    ) -> None:
        self.params = params
        self.deployment = deployment
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.api = api
        if api == "responses":
            from polars_azurechat.transport.responses import (
                responses_input,
                responses_params,
            )

            self._fields: Mapping[str, Any] = responses_params(params)
            self._messages: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] = (
                responses_input
            )
            self._url, self._input = RESPONSES_URL, "input"
        else:
            self._fields, self._url, self._input = params, BATCH_URL, "messages"
            self._messages = _same

    def line(self, key: str, req: ChatRequest) -> bytes:
        """The JSONL line of ``req``, named ``key`` (``custom_id``), newline included."""
        messages = self._messages(req.messages)
        body = {**self._fields, "model": self.deployment, self._input: messages}
        line = {"custom_id": key, "method": "POST", "url": self._url, "body": body}
        return (
            json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n"
        ).encode()

    @staticmethod
    def rebuilds(name: str, keys: Sequence[str], spool: Spool) -> bool:
        """Whether this run holds every line of the recorded chunk ``name`` again."""
        sha = hashlib.sha256()
        return spool.write_lines(keys, _Nowhere(), sha) and sha.hexdigest() == name

    @staticmethod
    def open_file(name: str, keys: Sequence[str], spool: Spool) -> IO[bytes] | None:
        """The chunk's file, written from the spool (``None``: this run cannot).

        ``None`` if this run does not hold every line of it, or they are not its
        bytes. A temporary file at its start, deleted when closed: the upload reads
        it as it goes.
        """
        out = spool.temp_file()
        sha = hashlib.sha256()
        try:
            if not spool.write_lines(keys, out, sha) or sha.hexdigest() != name:
                out.close()
                return None
            out.flush()
            out.seek(0)
        except BaseException:
            out.close()
            raise
        return out

    def cut(self, spool: Spool, limit: int | None) -> list[Chunk]:
        """Cut the spool's requests no chunk holds (by key) into files within the limits.

        Each new chunk's requests are put in it in the spool. A request that fits no
        file (too many bytes, or more prompt tokens than the enqueued-token ``limit``)
        gets its error in the spool instead. The lines are read a page at a time and
        only hashed: memory holds a page, not a file.
        """
        out: list[Chunk] = []
        spans: list[tuple[str, str]] = []
        first = last = ""
        lines = size = tokens = 0
        sha = hashlib.sha256()

        def close() -> None:
            if lines:
                name = sha.hexdigest()
                out.append(
                    Chunk(
                        name=name,
                        tokens=tokens,
                        lines=lines,
                        phase="planned",
                        file_name=f"{FILE_PREFIX}{name}.jsonl",
                        size=size,
                    )
                )
                spans.append((first, last))

        after: str | None = None
        while page := spool.unassigned(after, 4096):
            refused: dict[str, ChatResult] = {}
            for key, line, cost in page:
                problem = self._problem(line, cost, limit)
                if problem is not None:
                    refused[key] = ChatResult(exception=problem)
                    continue
                if lines and (
                    lines >= self.max_lines
                    or size + len(line) > self.max_bytes
                    or (limit is not None and tokens + cost > limit)
                ):
                    close()
                    lines = size = tokens = 0
                    sha = hashlib.sha256()
                if not lines:
                    first = key
                last = key
                sha.update(line)
                lines += 1
                size += len(line)
                tokens += cost
            if refused:
                spool.put_results(refused, BATCH)
            after = page[-1][0]
        close()
        for chunk, (a, b) in zip(out, spans, strict=True):
            spool.assign_range(chunk.name, a, b)
        return out

    def _problem(
        self, line: bytes, cost: int, limit: int | None
    ) -> BatchFailedError | None:
        """Why a request fits no file, if it does not."""
        if len(line) > self.max_bytes:
            return BatchFailedError(
                f"the request is {len(line)} bytes as a batch line, more than "
                f"a batch file may hold ({self.max_bytes})",
                code="file_too_large",
            )
        if limit is not None and cost > limit:
            return BatchFailedError(
                f"the request's ~{cost} prompt tokens exceed the enqueued-token "
                f"limit of {limit} of deployment {self.deployment!r}",
                code="token_limit_exceeded",
            )
        return None


class _Nowhere:
    """A file that keeps nothing (to hash a chunk's lines without keeping them)."""

    def write(self, data: bytes) -> int:
        return len(data)
