"""Azure OpenAI's files endpoints, emulated: the files batches read and write.

``POST /openai/files``
    multipart upload (``purpose``, ``file``, and optionally ``expires_after[anchor]``
    = ``created_at`` and ``expires_after[seconds]`` in [1209600, 2592000] (14 to 30 days,
    as Azure takes it; on the classic routes from api-version 2025-03-01-preview), else a
    400);
    a ``batch`` file must be named ``*.jsonl``. A file given an expiry reports
    ``expires_at`` and is gone (404, and from the list) once the clock reaches it. The file is ``pending`` for ``file_processing_s``, then
    ``processed``. A file whose content holds ``[emu:file_pending]`` stays
    ``pending`` for ever (``[emu:file_pending=N]``: ``N`` seconds more of the clock),
    as an Azure file sometimes does.
``GET /openai/files`` (``purpose``, ``limit``, ``after``, ``order``), ``GET|DELETE
/openai/files/{id}``, ``GET /openai/files/{id}/content``
    list, retrieve, delete, download.

The store holds the uploaded files and the batches' output and error files. It
belongs to a :class:`~polars_azurechat.emulator._batch.BatchService`, whose check of
``api-version`` and credential, clock, timestamps and counters it uses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from polars_azurechat.emulator._errors import error_response

if TYPE_CHECKING:
    from polars_azurechat.emulator._batch import BatchService

__all__ = [
    "EXPIRY_API_VERSION",
    "EXPIRY_S",
    "File",
    "FileStore",
    "expiry_problem",
    "expiry_version_problem",
    "page",
]

logger = logging.getLogger(__name__)

#: ``[emu:file_pending]`` or ``[emu:file_pending=N]`` in a file's content.
_FILE_PENDING = re.compile(rb"\[emu:file_pending(?:=(\d+(?:\.\d+)?))?\]")

#: The expiries Azure takes (``expires_after.seconds``, ``output_expires_after``).
EXPIRY_S = (1_209_600, 2_592_000)

_PURPOSES = frozenset(
    {"batch", "fine-tune", "assistants", "vision", "user_data", "evals"}
)


@dataclasses.dataclass
class File:
    """A stored file."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int
    ready: float  # processed from this time on the clock
    expires: float | None = None  # gone from this time on the clock
    expires_at: int | None = None  # the same, as Unix seconds

    def as_json(self, now: float) -> dict[str, Any]:
        """The file object the endpoints answer, at ``now`` on the clock."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed" if now >= self.ready else "pending",
            "status_details": None,
            "expires_at": self.expires_at,
        }


class FileStore:
    """The files of a batch service, and the files endpoints on them.

    Parameters
    ----------
    host
        The service the endpoints belong to: its ``guard``, ``clock``, ``epoch``,
        ``file_processing_s`` and counters.
    """

    def __init__(self, host: BatchService) -> None:
        self.host = host
        self._files: dict[str, File] = {}

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Serve the files endpoints on ``router``."""
        for root in ("/openai/files", "/openai/v1/files"):  # classic and v1
            router.add_post(root, self.upload)
            router.add_get(root, self.list_files)
            router.add_get(root + "/{file_id}", self.get_file)
            router.add_delete(root + "/{file_id}", self.delete_file)
            router.add_get(root + "/{file_id}/content", self.file_content)

    def add(
        self,
        filename: str,
        purpose: str,
        data: bytes,
        *,
        at: float,
        ready: float,
        expires_s: float | None = None,
    ) -> File:
        """A new file stored, created at ``at`` and processed from ``ready`` (clock).

        It is gone ``expires_s`` after ``at`` (``None``: never).
        """
        expires = None if expires_s is None else at + expires_s
        file = File(
            id=f"file-{uuid.uuid4().hex}",
            filename=filename,
            purpose=purpose,
            data=data,
            created_at=self.host.epoch(at),
            ready=ready,
            expires=expires,
            expires_at=None if expires is None else self.host.epoch(expires),
        )
        self._files[file.id] = file
        return file

    def add_output(
        self,
        batch_id: str,
        kind: str,
        lines: list[dict[str, Any]],
        at: float,
        expires_s: float | None,
    ) -> str:
        """The id of a batch's new ``kind`` (output or error) file of ``lines``."""
        data = "".join(
            json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n"
            for line in lines
        ).encode()
        name = f"{batch_id}_{kind}.jsonl"
        purpose = "batch_output"
        file = self.add(name, purpose, data, at=at, ready=at, expires_s=expires_s)
        return file.id

    def get(self, file_id: str) -> File | None:
        """The file ``file_id``, if it is stored (and has not expired)."""
        self._expire()
        return self._files.get(file_id)

    def _expire(self) -> None:
        """Forget the files whose expiry the clock has reached, as Azure deletes them."""
        now = self.host.clock()
        for file in list(self._files.values()):
            if file.expires is not None and now >= file.expires:
                del self._files[file.id]
                logger.debug("file %s expired", file.id)

    async def upload(self, request: web.Request) -> web.Response:
        """``POST /openai/files``: a multipart upload."""
        refused = await self.host.guard(request)
        if refused is not None:
            return refused
        purpose: str | None = None
        filename: str | None = None
        data: bytes | None = None
        expiry: dict[str, Any] = {}
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "purpose":
                    purpose = (await part.text()).strip()
                elif part.name in ("expires_after[anchor]", "expires_after[seconds]"):
                    expiry[part.name[14:-1]] = (await part.text()).strip()
                elif part.name == "file":
                    filename = part.filename or ""
                    data = bytes(await part.read())
        except (AssertionError, ValueError, KeyError):
            purpose = None
        if purpose is None or data is None:
            return error_response(
                400,
                "invalidPayload",
                "A multipart body with the fields 'purpose' and 'file' is required.",
            )
        if purpose not in _PURPOSES:
            return error_response(
                400, "invalidPayload", f"The purpose '{purpose}' is not supported."
            )
        if purpose == "batch" and not (filename or "").endswith(".jsonl"):
            return error_response(
                400,
                "invalidPayload",
                "A file for batch must be a JSON Lines file named '*.jsonl'.",
            )
        problem = (
            expiry_version_problem(request, "expires_after")
            or expiry_problem(expiry, "expires_after")
            if expiry
            else None
        )
        if problem is not None:
            return error_response(400, "invalidPayload", problem)
        now = self.host.clock()
        file = self.add(
            filename or "",
            purpose,
            data,
            at=now,
            ready=now + self.host.file_processing_s + _held_pending(data),
            expires_s=float(expiry["seconds"]) if expiry else None,
        )
        self.host.count("files_uploaded")
        logger.debug("file %s uploaded (%d bytes)", file.id, len(data))
        return web.json_response(file.as_json(now), status=201)

    def _file(self, request: web.Request) -> File | web.Response:
        file_id = request.match_info["file_id"]
        file = self.get(file_id)
        if file is None:
            return error_response(404, "fileNotFound", f"File {file_id} not found.")
        return file

    async def list_files(self, request: web.Request) -> web.Response:
        """``GET /openai/files``."""
        refused = await self.host.guard(request)
        if refused is not None:
            return refused
        self._expire()
        now = self.host.clock()
        purpose = request.query.get("purpose")
        files = [f for f in self._files.values() if purpose in (None, f.purpose)]
        if request.query.get("order", "desc") == "desc":
            files.reverse()
        return page(request, [f.as_json(now) for f in files], 10_000)

    async def get_file(self, request: web.Request) -> web.Response:
        """``GET /openai/files/{id}``."""
        refused = await self.host.guard(request)
        if refused is not None:
            return refused
        file = self._file(request)
        if isinstance(file, web.Response):
            return file
        return web.json_response(file.as_json(self.host.clock()))

    async def delete_file(self, request: web.Request) -> web.Response:
        """``DELETE /openai/files/{id}``."""
        refused = await self.host.guard(request)
        if refused is not None:
            return refused
        file = self._file(request)
        if isinstance(file, web.Response):
            return file
        del self._files[file.id]
        self.host.count("files_deleted")
        return web.json_response({"id": file.id, "object": "file", "deleted": True})

    async def file_content(self, request: web.Request) -> web.Response:
        """``GET /openai/files/{id}/content``."""
        refused = await self.host.guard(request)
        if refused is not None:
            return refused
        file = self._file(request)
        if isinstance(file, web.Response):
            return file
        return web.Response(body=file.data, content_type="application/octet-stream")


#: The first classic api-version that takes ``expires_after`` (the v1 API takes it).
EXPIRY_API_VERSION = "2025-03-01-preview"


def expiry_version_problem(request: web.Request, name: str) -> str | None:
    """Why the request's api-version takes no ``name`` (an expiry), or ``None``."""
    version = request.query.get("api-version")
    if request.path.startswith("/openai/v1/") or version is None:
        return None
    if version >= EXPIRY_API_VERSION[:10]:
        return None
    return (
        f"Unrecognized request argument supplied: {name} (api-version {version}; "
        f"it needs {EXPIRY_API_VERSION} or later)."
    )


def expiry_problem(value: Any, name: str) -> str | None:
    """Why ``value`` is not an expiry policy Azure takes (``None``: it is).

    ``{"anchor": "created_at", "seconds": N}`` with ``N`` a whole number in
    :data:`EXPIRY_S`; ``name`` is the field named in the message.
    """
    low, high = EXPIRY_S
    if not isinstance(value, dict) or set(value) != {"anchor", "seconds"}:
        return f"{name} must have exactly 'anchor' and 'seconds'."
    if value["anchor"] != "created_at":
        return f"{name}.anchor must be 'created_at', not {value['anchor']!r}."
    seconds = value["seconds"]
    if isinstance(seconds, str) and seconds.isdigit():
        seconds = int(seconds)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        return f"{name}.seconds must be an integer."
    if not low <= seconds <= high:
        return f"{name}.seconds must be between {low} and {high}, not {seconds}."
    return None


def _held_pending(data: bytes) -> float:
    """Seconds a file's ``[emu:file_pending(=N)]`` keeps it ``pending`` (inf: for ever)."""
    m = _FILE_PENDING.search(data)
    if m is None:
        return 0.0
    return math.inf if m.group(1) is None else float(m.group(1))


def page(
    request: web.Request, items: list[dict[str, Any]], default_limit: int
) -> web.Response:
    """One page of a list, with the cursor (``after``) and ``limit`` the SDK sends."""
    after = request.query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    try:
        limit = max(1, int(request.query.get("limit", default_limit)))
    except ValueError:
        limit = default_limit
    shown, more = items[:limit], len(items) > limit
    return web.json_response(
        {
            "object": "list",
            "data": shown,
            "first_id": shown[0]["id"] if shown else None,
            "last_id": shown[-1]["id"] if shown else None,
            "has_more": more,
        }
    )
