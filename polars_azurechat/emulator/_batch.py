"""Azure OpenAI's files and batches endpoints (the Global Batch API), emulated.

Paths, bodies and statuses are Azure's (the openai SDK's ``files`` and ``batches``
resources work against them unchanged), every call needs ``?api-version=`` and the
same key or Entra ID token as the chat endpoint:

``/openai/files``
    upload, list, retrieve, delete, download: ``emulator/_files.py``.
``POST /openai/batches``
    ``{input_file_id, endpoint: "/chat/completions", completion_window: "24h",
    metadata, output_expires_after}``; the file must be a processed ``batch`` file;
    ``output_expires_after`` (optional) is checked as a file's ``expires_after`` and
    makes the output and error files expire. The endpoint may be ``/embeddings`` too
    (lines of embeddings bodies, answered by the embeddings route's code; their inputs'
    tokens are what the batch enqueues), or ``"/v1/responses"`` (on
    ``/openai/v1/batches`` only, as Azure takes it): Responses API lines, each answered
    as ``POST /openai/v1/responses`` answers it (the same code: :meth:`_App.answer`
    with ``api="responses"``).
``GET /openai/batches`` (``limit``, ``after``; newest first), ``GET
/openai/batches/{id}``, ``POST /openai/batches/{id}/cancel``
    list, retrieve, cancel.

A batch is ``validating`` for ``validating_s``; then it ``failed`` (``errors.data``
names each reason: ``empty_batch``, ``too_many_tasks``, ``file_too_large``,
``invalid_json_line``, ``invalid_request``, ``duplicate_custom_id``,
``invalid_url`` (a line's url is no endpoint), ``url_mismatch`` (another endpoint's), ``model_mismatch``: every line must name the first line's model,
``model_not_found``, and ``token_limit_exceeded`` when the tokens it would enqueue
take its deployment past ``enqueued_tokens_limit``), or goes ``in_progress``. Its
lines are then answered one after the other, ``line_s`` each, in a deterministic
shuffled order, by the chat endpoint's own code (:meth:`_App.answer`; without the
online quota and latency, and outside the chat request counters); then it is
``finalizing`` for ``finalizing_s``, then ``completed``. Output lines are
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error":
null}``; lines answered with an error status go to the error file, which exists even
when empty (``empty_error_file``). ``cancel`` makes it ``cancelling`` for
``cancelling_s``, then ``cancelled``, with what was answered before; a batch not done
within ``completion_window_s`` is ``expired`` the same way. The lines never answered
are in the error file with ``"response": null, "error": {"code": "batch_cancelled"
| "batch_expired", ...}``.

Directives in a line's last user message script a batch:

``[emu:batch_slow=30]``
    this line takes 30 s more (of the clock) to answer;
``[emu:batch_expire]``
    this line is never answered: the batch answers the others, then expires at the
    end of its completion window.
``[emu:file_pending]``
    anywhere in an input file: the file stays ``pending`` for ever, and no batch can
    be created from it (``[emu:file_pending=N]``: for ``N`` seconds more).

The chat directives work per line too (``[emu:500*1]``, ``[emu:filter]``, ...).

Time is read from ``clock`` (default: the emulator's clock), so a test with a fake
clock moves a batch through its statuses without sleeping: every request on these
endpoints first brings the batches up to the clock's time, and a background task on
the emulator's loop does it every ``tick_s`` seconds as well.

A create request and its input file's lines are checked in
``emulator/_batch_lines.py``; a batch's record, its answers and its JSON are in
``emulator/_batch_record.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from polars_azurechat.emulator._batch_lines import api_of, read_file, request_problem
from polars_azurechat.emulator._batch_record import Batch
from polars_azurechat.emulator._errors import (
    V1_PREFIX,
    api_version_problem,
    error_response,
)
from polars_azurechat.emulator._files import (
    File,
    FileStore,
    expiry_problem,
    expiry_version_problem,
    page,
)

if TYPE_CHECKING:
    from polars_azurechat.emulator._server import _App

__all__ = ["MAX_FILE_BYTES", "MAX_FILE_LINES", "BatchService"]

logger = logging.getLogger(__name__)

#: Azure's limits on one batch input file: requests, and bytes (200 MB).
MAX_FILE_LINES = 100_000
MAX_FILE_BYTES = 200 * 1024 * 1024

#: The statuses a batch ends in.
TERMINAL = frozenset({"failed", "completed", "expired", "cancelled"})
#: The statuses whose tokens count as enqueued on their deployment.
ENQUEUED = frozenset({"in_progress", "finalizing"})

#: The names of the counters (:meth:`BatchService.snapshot`).
Counter = Literal[
    "files_uploaded",
    "files_deleted",
    "batches_created",
    "cancels",
    "lines_answered",
    "lines_failed",
]


class BatchService:
    """The files and batches endpoints of one emulator, and how fast batches run.

    Give one to :class:`~polars_azurechat.emulator.Emulator` (``batches=``); every
    argument has a default, so ``Emulator()`` serves them too.

    Parameters
    ----------
    validating_s, finalizing_s, cancelling_s
        Seconds a batch spends ``validating``, ``finalizing`` and ``cancelling``.
    line_s
        Seconds to answer one line (``[emu:batch_slow=N]`` adds ``N``).
    file_processing_s
        Seconds an uploaded file stays ``pending`` before it is ``processed``.
    completion_window_s
        A batch not done this long after its creation expires (Azure: 24 h).
    max_lines, max_bytes
        The largest input file a batch takes (Azure: 100,000 lines, 200 MB).
    enqueued_tokens_limit
        The enqueued-token quota of each deployment (``None``: none): a batch whose
        estimated prompt tokens, added to those of the deployment's batches
        ``in_progress`` or ``finalizing``, exceed it fails validation with
        ``token_limit_exceeded``.
    empty_error_file
        Create an error file even when no line failed, as Azure may.
    clock
        Monotonic seconds (default: the emulator's clock). Timestamps in the
        answers move with it.
    tick_s
        How often (real seconds) the background task brings batches up to the clock.
    seed
        Seeds the shuffle of output lines (with the input file's content).
    """

    def __init__(
        self,
        *,
        validating_s: float = 1.0,
        line_s: float = 0.001,
        finalizing_s: float = 1.0,
        cancelling_s: float = 1.0,
        file_processing_s: float = 0.5,
        completion_window_s: float = 24 * 3600.0,
        max_lines: int = MAX_FILE_LINES,
        max_bytes: int = MAX_FILE_BYTES,
        enqueued_tokens_limit: int | None = None,
        empty_error_file: bool = True,
        clock: Callable[[], float] | None = None,
        tick_s: float = 0.05,
        seed: int = 0,
    ) -> None:
        for name, value in (
            ("validating_s", validating_s),
            ("line_s", line_s),
            ("finalizing_s", finalizing_s),
            ("cancelling_s", cancelling_s),
            ("file_processing_s", file_processing_s),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, not {value!r}")
        if not completion_window_s > 0 or not tick_s > 0:
            raise ValueError("completion_window_s and tick_s must be positive")
        self.validating_s = validating_s
        self.line_s = line_s
        self.finalizing_s = finalizing_s
        self.cancelling_s = cancelling_s
        self.file_processing_s = file_processing_s
        self.completion_window_s = completion_window_s
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.enqueued_tokens_limit = enqueued_tokens_limit
        self.empty_error_file = empty_error_file
        self.tick_s = tick_s
        self.seed = seed
        self._given_clock = clock
        self.clock: Callable[[], float] = clock or time.monotonic
        self._clock0 = self.clock()
        self._wall0 = time.time()
        self._app: _App | None = None
        self._files = FileStore(self)
        self._batches: dict[str, Batch] = {}
        self._lock = threading.Lock()  # counters: read from other threads
        self._lines = 0
        self.reset()

    # -- wiring ------------------------------------------------------------------

    def attach(self, app: _App) -> None:
        """Serve the endpoints on ``app`` (called by the emulator's app)."""
        self._app = app
        if self._given_clock is None:
            self.clock = app.state.clock
            self._clock0 = self.clock()
            self._wall0 = time.time()
        router = app.app.router
        self._files.add_routes(router)
        for root in ("/openai/batches", "/openai/v1/batches"):  # classic and v1
            router.add_post(root, self.create_batch)
            router.add_get(root, self.list_batches)
            router.add_get(root + "/{batch_id}", self.get_batch)
            router.add_post(root + "/{batch_id}/cancel", self.cancel_batch)
        app.app.cleanup_ctx.append(self._ticking)

    def reset(self) -> None:
        """Zero the counters (files and batches stay)."""
        with self._lock:
            self.files_uploaded = 0
            self.files_deleted = 0
            self.batches_created = 0
            self.cancels = 0
            self.lines_answered = 0
            self.lines_failed = 0

    def snapshot(self) -> dict[str, Any]:
        """The counters, and the batches by status.

        ``files_uploaded``, ``files_deleted``, ``batches_created``, ``cancels`` (cancel
        calls that took effect), ``lines_answered`` (every line answered, whatever
        its status) and ``lines_failed`` (those answered with an error status).
        """
        statuses: dict[str, int] = {}
        for batch in list(self._batches.values()):
            statuses[batch.status] = statuses.get(batch.status, 0) + 1
        with self._lock:
            return {
                "files_uploaded": self.files_uploaded,
                "files_deleted": self.files_deleted,
                "batches_created": self.batches_created,
                "cancels": self.cancels,
                "lines_answered": self.lines_answered,
                "lines_failed": self.lines_failed,
                "batches": dict(sorted(statuses.items())),
            }

    def count(self, counter: Counter) -> None:
        """Add one to the counter named ``counter`` (see :meth:`snapshot`)."""
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)

    def epoch(self, t: float) -> int:
        """A time on the clock as Unix seconds."""
        return int(self._wall0 + (t - self._clock0))

    async def guard(self, request: web.Request) -> web.Response | None:
        """The answer refusing ``request`` (its api-version, a bad credential), if any.

        The classic routes need an ``api-version``, the v1 routes none
        (:func:`~polars_azurechat.emulator._errors.api_version_problem`). An accepted
        request first brings every batch up to the clock's time.
        """
        refused = api_version_problem(request)
        if refused is not None:
            return refused
        assert self._app is not None  # noqa: S101 - attach() runs first
        auth = self._app.state.authenticate(request)
        if isinstance(auth, web.Response):
            return auth
        await self._advance_all()
        return None

    # -- batches -----------------------------------------------------------------

    async def create_batch(self, request: web.Request) -> web.Response:
        """``POST /openai/batches``."""
        refused = await self.guard(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise TypeError("body")  # noqa: TRY301
        except (ValueError, TypeError, RecursionError):
            return error_response(
                400, "invalidPayload", "The body must be a JSON object."
            )
        file_id = body.get("input_file_id")
        file = self._files.get(file_id) if isinstance(file_id, str) else None
        now = self.clock()
        v1 = request.path.startswith(V1_PREFIX)
        problem = request_problem(body, file, now, v1=v1)
        expiry = body.get("output_expires_after")
        if problem is None and expiry is not None:
            problem = expiry_version_problem(
                request, "output_expires_after"
            ) or expiry_problem(expiry, "output_expires_after")
        if problem is not None or file is None:
            return error_response(400, "invalidPayload", problem or "")
        batch = self._parse(file, str(body["endpoint"]), body.get("metadata"), now)
        if expiry is not None:
            batch.output_expires_s = float(expiry["seconds"])
        self._batches[batch.id] = batch
        self.count("batches_created")
        logger.debug("batch %s created (%d lines)", batch.id, len(batch.lines))
        return web.json_response(self._batch_json(batch))

    def held(self) -> list[Batch]:
        """Every batch created (in order), with its lines (kept after its files go)."""
        return list(self._batches.values())

    async def list_batches(self, request: web.Request) -> web.Response:
        """``GET /openai/batches``: newest first."""
        refused = await self.guard(request)
        if refused is not None:
            return refused
        batches = [self._batch_json(b) for b in reversed(self._batches.values())]
        return page(request, batches, 20)

    async def get_batch(self, request: web.Request) -> web.Response:
        """``GET /openai/batches/{id}``."""
        refused = await self.guard(request)
        if refused is not None:
            return refused
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        return web.json_response(self._batch_json(batch))

    async def cancel_batch(self, request: web.Request) -> web.Response:
        """``POST /openai/batches/{id}/cancel``."""
        refused = await self.guard(request)
        if refused is not None:
            return refused
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        async with batch.lock:
            if batch.status in TERMINAL:
                return error_response(
                    409,
                    "invalidState",
                    f"Cannot cancel a batch with status '{batch.status}'.",
                )
            if batch.status != "cancelling":
                batch.status = "cancelling"
                batch.times["cancelling"] = self.clock()
                self.count("cancels")
        return web.json_response(self._batch_json(batch))

    def _batch(self, request: web.Request) -> Batch | web.Response:
        batch_id = request.match_info["batch_id"]
        batch = self._batches.get(batch_id)
        if batch is None:
            return error_response(404, "batchNotFound", f"Batch {batch_id} not found.")
        return batch

    def _batch_json(self, b: Batch) -> dict[str, Any]:
        return b.as_json(self.epoch, self.completion_window_s)

    def _parse(self, file: File, endpoint: str, metadata: Any, now: float) -> Batch:
        """The batch of ``file``: its lines, token estimate and validation problems."""
        assert self._app is not None  # noqa: S101 - attach() runs first
        lines, tokens, model, problems = read_file(
            file.data,
            endpoint,
            max_bytes=self.max_bytes,
            max_lines=self.max_lines,
            line_s=self.line_s,
            estimate=self._app.state.tokens,
            deployments=self._app.state.settings.deployments,
        )
        digest = hashlib.sha256(f"{self.seed}:".encode() + file.data).digest()
        order = list(range(len(lines)))
        random.Random(digest).shuffle(order)  # noqa: S311 - not secrets
        return Batch(
            id=f"batch_{uuid.uuid4().hex}",
            input_file_id=file.id,
            endpoint=endpoint,
            metadata=metadata,
            created=now,
            model=model,
            lines=lines,
            order=order,
            tokens=tokens,
            problems=problems,
        )

    # -- progress ------------------------------------------------------------------

    async def _ticking(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self._tick())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self._advance_all()
            except Exception:
                logger.exception("the emulator's batches could not progress")

    async def _advance_all(self) -> None:
        """Bring every unfinished batch up to the clock, oldest first."""
        now = self.clock()
        for batch in list(self._batches.values()):
            if batch.status not in TERMINAL:
                await self._advance(batch, now)

    async def _advance(self, b: Batch, now: float) -> None:
        async with b.lock:
            if b.status == "validating":
                start = b.created + self.validating_s
                if now < start:
                    return
                if not self._validate(b, start):
                    return
            end_of_window = b.created + self.completion_window_s
            if b.status == "in_progress":
                await self._answer_due(b, min(now, end_of_window))
                if b.done == len(b.order) and len(b.answered) == len(b.lines):
                    b.status = "finalizing"
                    b.times["finalizing"] = b.due
                elif now >= end_of_window:
                    self._finish(b, "expired", end_of_window)
                    return
            if b.status == "finalizing":
                end = b.times["finalizing"] + self.finalizing_s
                if now >= end:
                    self._finish(b, "completed", end)
            elif b.status == "cancelling":
                end = b.times["cancelling"] + self.cancelling_s
                if now >= end:
                    self._finish(b, "cancelled", end)

    def _validate(self, b: Batch, at: float) -> bool:
        """End validation at ``at``: ``in_progress``, or ``failed`` (returns False)."""
        limit = self.enqueued_tokens_limit
        if not b.problems and limit is not None:
            enqueued = sum(
                other.tokens
                for other in self._batches.values()
                if other is not b
                and other.model == b.model
                and other.status in ENQUEUED
            )
            if enqueued + b.tokens > limit:
                b.problems.append(
                    {
                        "code": "token_limit_exceeded",
                        "message": "The number of enqueued tokens has surpassed the "
                        f"configured limit of {limit} for the deployment "
                        f"'{b.model}'. Please either increase the limit or try again "
                        "once the current jobs have finished.",
                        "param": None,
                        "line": None,
                    }
                )
        if b.problems:
            b.status = "failed"
            b.times["failed"] = at
            b.error_data = b.problems
            logger.debug("batch %s failed: %s", b.id, b.problems[0]["code"])
            return False
        b.status = "in_progress"
        b.times["in_progress"] = at
        b.due = at
        return True

    async def _answer_due(self, b: Batch, until: float) -> None:
        """Answer the lines whose time has come by ``until``, in the batch's order."""
        assert self._app is not None  # noqa: S101 - attach() runs first
        while b.done < len(b.order):
            index = b.order[b.done]
            line = b.lines[index]
            if line.expire:  # never answered
                b.done += 1
                continue
            end = b.due + line.seconds
            if end > until:
                return
            with self._lock:
                self._lines += 1
                n = self._lines
            lane = self._app.state.lane(str(b.model))
            api = api_of(b.endpoint)
            response = await self._app.answer(lane, line.body, n=n, api=api)
            status = response.status
            body = json.loads(response.text or "null")
            b.add_answer(line, status, f"emu-batch-{n}", body)
            with self._lock:
                self.lines_answered += 1
                self.lines_failed += status != 200
            b.answered.add(index)
            b.due = end
            b.done += 1

    def _finish(self, b: Batch, status: str, at: float) -> None:
        """End ``b`` with ``status`` at ``at``: write its output and error files."""
        b.add_not_answered(status)
        expires = b.output_expires_s
        b.output_file_id = self._files.add_output(b.id, "output", b.output, at, expires)
        if b.errors or self.empty_error_file:
            b.error_file_id = self._files.add_output(
                b.id, "error", b.errors, at, expires
            )
        b.status = status
        b.times[status] = at
        logger.debug("batch %s %s", b.id, status)
