"""Answer requests through Azure OpenAI's Batch API, resumably. Not meant for outside use.

:class:`BatchRunner` takes ``(cache key, ChatRequest)`` pairs and gives a
:class:`~polars_azurechat._types.ChatResult` per key, through the openai SDK's
``files`` and ``batches`` resources (an ``openai.AzureOpenAI`` client, or an
``AsyncAzureOpenAI`` one, whose calls then run on the process's background loop):

1. one JSONL line per distinct request: ``custom_id`` = the cache key, ``method`` =
   ``POST``, ``url`` = ``/chat/completions``, ``body`` = the body parameters, the
   messages and ``model`` = the batch deployment. Lines are sorted by key and cut
   into files of at most ``max_lines`` lines and ``max_bytes`` bytes (Azure: 100,000
   and 200 MB), and of at most the enqueued-token limit when one is known
   (:mod:`~polars_azurechat.batch.chunks`; the chunks of earlier runs are attached
   to by :mod:`~polars_azurechat.batch.planner`);
2. each file is uploaded (``purpose="batch"``), awaited until ``processed`` (at most
   ``file_wait_s``: then its rows fail with an error naming the file and its last
   status), and a batch created from it (``completion_window="24h"``;
   :mod:`~polars_azurechat.batch.submit`). With an enqueued-token limit (given, or
   learned from a batch that failed for ``token_limit_exceeded``), a batch is
   created only while the tokens of the batches running stay under it: later ones
   are submitted as earlier ones finish;
3. the batches are polled with backoff (``poll_interval_s``, growing by ``backoff``
   while nothing changes, up to ``max_poll_interval_s``), and ``progress`` is called
   with their statuses and request counts (:mod:`~polars_azurechat.batch.poll`);
4. a finished batch's output and error files are downloaded and every line joined
   back to its key by ``custom_id`` (the order of lines is not the input's). A
   line's ``response.body`` is read as the online path reads a body
   (:func:`~polars_azurechat.transport.http.parse_completion`), an error status as
   :func:`~polars_azurechat.transport.status.status_error` maps it. Rows an expired or
   cancelled batch never answered get a :class:`BatchIncompleteError`; rows of a
   batch that failed (validation, a quota it can never fit) get a
   :class:`BatchFailedError` naming Azure's reason
   (:mod:`~polars_azurechat.batch.results`).

The SDK calls, sync or async client alike, and their errors are in
:mod:`~polars_azurechat.batch.api`.

Every step is written to a :class:`~polars_azurechat.batch.state.BatchStateStore`
before it happens (the protocol is in that module's docstring), so a rerun after a
crash attaches to the files and batches that exist and never submits a request twice.
A run given a ``deadline`` stops waiting when it passes: nothing more is submitted or
polled, the batches running keep running on Azure (recorded in the state, so a rerun
collects them), and the rows not answered get a
:class:`~polars_azurechat.errors.DeadlineExceededError` saying so.
``on_results`` receives each batch's results (a page at a time, as its files are
read) before its chunk is marked done: the place to write them to the answer cache.
Then the batch's input, output and error files are deleted from the server
(:mod:`~polars_azurechat.batch.housekeeping`; every file also expires on its own).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from polars_azurechat._types import ChatRequest, ChatResult
from polars_azurechat.batch.api import (
    BATCH_URL,
    RESPONSES_URL,
    TRANSIENT,
    Api,
    check_api_version,
    check_responses_client,
)
from polars_azurechat.batch.chunks import (
    MAX_FILE_BYTES,
    MAX_FILE_LINES,
    Chunk,
    Chunker,
)
from polars_azurechat.batch.housekeeping import Housekeeper
from polars_azurechat.batch.planner import Planner
from polars_azurechat.batch.poll import (
    TERMINAL,
    BatchProgress,
    BatchStatus,
    Outcome,
    deadline_errors,
    drive,
    observe,
    progress_of,
)
from polars_azurechat.batch.results import ResultReader
from polars_azurechat.batch.spool import BATCH, HIT, Spool
from polars_azurechat.batch.state import BatchStateStore
from polars_azurechat.batch.submit import FILE_WAIT_S, Submitter
from polars_azurechat.engine.frontdoor import max_tokens_of
from polars_azurechat.errors import (
    AzureChatError,
    BatchFailedError,
    BatchIncompleteError,
    ConfigurationError,
)

if TYPE_CHECKING:
    from polars_azurechat.schema.output import OutputSchema

__all__ = [
    "FILE_WAIT_S",
    "MAX_FILE_BYTES",
    "MAX_FILE_LINES",
    "BatchFailedError",
    "BatchIncompleteError",
    "BatchProgress",
    "BatchRunner",
    "BatchStatus",
]

logger = logging.getLogger(__name__)


class BatchRunner:
    """Answer ``(key, ChatRequest)`` pairs through Azure's Batch API.

    Parameters
    ----------
    client
        An ``openai.AzureOpenAI`` (or ``AsyncAzureOpenAI``) client of the resource.
    deployment
        The batch deployment (a Global Batch one): every line's ``model``.
    state
        Where the files and batches are recorded before each step.
    params
        The body parameters of every request (``max_tokens``, ``temperature``, ...).
    host
        The endpoint's host, recorded with the chunks (default: the client's).
    enqueued_tokens_limit
        The deployment's enqueued-token quota (``None``: unknown until a batch fails
        with ``token_limit_exceeded``). Files are cut to fit it, and batches are
        submitted so that those running stay under it.
    max_lines, max_bytes
        The largest file (Azure: 100,000 requests, 200 MB).
    on_truncated
        ``"error"`` makes an answer cut at ``max_tokens`` a :class:`TruncatedError`.
    poll_interval_s, max_poll_interval_s, backoff
        Polling: the first wait, the longest, and the growth while nothing changes.
    file_poll_s
        The wait between looks at a file that is still ``pending``.
    file_wait_s
        The longest wait for an uploaded file to become ``processed``
        (:data:`FILE_WAIT_S`); then the file's rows fail with a
        :class:`BatchFailedError` naming the file id and its last status.
    deadline, deadline_s
        When the run stops waiting (on ``clock``; ``None``: never), and the
        ``deadline_s`` option it comes from (named in the rows' errors).
    progress
        Called with a :class:`BatchProgress` after each round of polls.
    on_results
        Called with each finished batch's results (every key it holds) before its
        chunk is marked done: write them to the cache here.
    again
        Which results ``batch_fallback="online"`` sends again (marked in the spool),
        or ``None``.
    hook
        Called as ``hook(step, chunk)`` at each step (``"planned"``, ``"uploading"``,
        ``"uploaded"``, ``"file_recorded"``, ``"file_processed"``, ``"creating"``,
        ``"created"``, ``"batch_recorded"``, ``"polled"``, ``"collected"``,
        ``"done"``, ``"cleaned"``). ``"uploaded"`` and ``"created"`` come after the call returned and
        before its id is written. Tests raise from it to stand for a crash.
    sleep, clock
        How to wait and what time it is (tests pass a fake clock).
    schema
        The typed answer's schema (``response_format=Model``), or ``None``: each
        answer is then parsed and validated, as online.
    api
        ``"chat"``, or ``"responses"``: ``/v1/responses`` lines (:func:`_api_for`).
    delete_files
        Delete a batch's files once its chunk is done (tests reading them: ``False``).
    """

    def __init__(
        self,
        client: Any,
        *,
        deployment: str,
        state: BatchStateStore,
        params: Mapping[str, Any] | None = None,
        host: str | None = None,
        enqueued_tokens_limit: int | None = None,
        max_lines: int = MAX_FILE_LINES,
        max_bytes: int = MAX_FILE_BYTES,
        on_truncated: Literal["keep", "error"] = "keep",
        poll_interval_s: float = 5.0,
        max_poll_interval_s: float = 60.0,
        backoff: float = 1.5,
        file_poll_s: float = 1.0,
        file_wait_s: float = FILE_WAIT_S,
        deadline: float | None = None,
        deadline_s: float | None = None,
        progress: Callable[[BatchProgress], None] | None = None,
        on_results: Callable[[Mapping[str, ChatResult]], None] | None = None,
        again: Callable[[ChatResult], bool] | None = None,
        hook: Callable[[str, str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        schema: OutputSchema | None = None,
        api: Literal["chat", "responses"] = "chat",
        delete_files: bool = True,
    ) -> None:
        if max_lines < 1 or max_bytes < 1:
            raise ConfigurationError("max_lines and max_bytes must be positive")
        if enqueued_tokens_limit is not None and enqueued_tokens_limit < 1:
            raise ConfigurationError("enqueued_tokens_limit must be positive")
        if not file_wait_s > 0:
            raise ConfigurationError("file_wait_s must be positive")
        if not 0 < poll_interval_s <= max_poll_interval_s or backoff < 1:
            raise ConfigurationError(
                "need 0 < poll_interval_s <= max_poll_interval_s and backoff >= 1"
            )
        self._api = _api_for(client, deployment, api)
        self.deployment = deployment
        self.state = state
        self.params = dict(params or {})
        self.host = host or self._api.host
        self.enqueued_tokens_limit = enqueued_tokens_limit
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.on_truncated = on_truncated
        self.poll_interval_s = poll_interval_s
        self.max_poll_interval_s = max_poll_interval_s
        self.backoff = backoff
        self.file_poll_s = file_poll_s
        self.file_wait_s = file_wait_s
        self.deadline = deadline
        self.deadline_s = deadline_s
        self.progress = progress
        self.on_results = on_results
        self.again = again
        self.hook = hook
        self.sleep = sleep
        self.clock = clock
        self.schema = schema
        self._keeper = Housekeeper(self._api, state) if delete_files else None
        # the parts of a run, each given the settings it uses (read here, once)
        self._chunker = Chunker(
            self.params, deployment, max_lines=max_lines, max_bytes=max_bytes, api=api
        )
        self._reader = ResultReader(
            self._api,
            deployment=deployment,
            host=self.host,
            schema=schema,
            max_tokens=max_tokens_of(self.params),
            on_truncated=on_truncated,
        )
        self._submitter = Submitter(
            self._api,
            state,
            step=self._step,
            sleep=self._wait,
            clock=clock,
            file_poll_s=file_poll_s,
            backoff=backoff,
            file_wait_s=file_wait_s,
        )
        self._planner = Planner(
            state,
            host=self.host,
            deployment=deployment,
            chunker=self._chunker,
            submitter=self._submitter,
            step=self._step,
        )
        #: The enqueued-token limit learned from ``token_limit_exceeded`` (``None``).
        self.learned_limit: int | None = None
        check_api_version(self._api.api_version, self.params)

    # -- the run -----------------------------------------------------------------

    def run(
        self,
        requests: Iterable[tuple[str, ChatRequest]],
        *,
        cached: Collection[str] = (),
    ) -> dict[str, ChatResult]:
        """Answer every request; returns a result per key (of the keys given).

        Parameters
        ----------
        requests
            ``(cache key, request)`` pairs; a key given twice is sent once. A
            request with an input error is not sent: its result carries the error.
        cached
            The keys of the job found in the answer cache (not given as requests).
            A live chunk they hold entirely is marked done: a crash came after its
            results were cached and before the chunk was marked.

        Returns
        -------
        dict
            Every key given, to its :class:`ChatResult`.
        """
        from polars_azurechat.transport import tokens as _tokens

        results: dict[str, ChatResult] = {}
        with Spool() as spool:
            todo: dict[str, tuple[str, int, bytes | None, int, None]] = {}
            for key, req in requests:
                if req.error is not None:
                    results[key] = ChatResult(exception=req.error)
                elif key not in todo:
                    line = self._chunker.line(key, req)
                    cost = _tokens.prompt_tokens(req.messages)
                    todo[key] = (key, 0, line, cost, None)
            spool.add_requests(todo.values())
            hits = [k for k in cached if k not in todo]
            spool.add_requests((k, 0, None, 0, None) for k in hits)
            spool.put_results(dict.fromkeys(hits, ChatResult()), HIT)
            self.send(spool)
            results.update(spool.all_results((BATCH,)))
        return results

    def send(self, spool: Spool) -> None:
        """Answer every request the spool holds to send; each result goes back there.

        The requests are read from the spool a page at a time, each chunk's file is
        written from it when uploaded, and each batch's results are written to it as
        the batch ends (after ``on_results``): memory follows one batch file.
        """
        self._planner.settle(spool)
        if not spool.to_send():
            return
        chunks = self._planner.plan(spool, self.limit)
        logger.info(
            "batch mode: %d requests in %d batch(es) (%d already submitted)",
            sum(c.lines for c in chunks),
            len(chunks),
            sum(c.phase == "submitted" for c in chunks),
        )
        with contextlib.suppress(_DeadlinePassed):  # what is left is settled below
            drive(
                chunks,
                fits=lambda chunk, active: _fits(self.limit, chunk, active),
                submit=lambda chunk: self._submit(chunk, spool),
                poll=lambda chunk, active: self._poll(chunk, active, spool),
                report=lambda: self._report(chunks),
                sleep=self._wait,
                first=self.poll_interval_s,
                longest=self.max_poll_interval_s,
                backoff=self.backoff,
                expired=self._expired,
            )
        left = [c for c in chunks if c.phase != "done" and c.status not in TERMINAL]
        if left:  # the deadline passed before they ended
            self._past_deadline(left, spool)

    def cancel(self) -> list[str]:
        """Cancel every batch of this deployment and host the state holds as running.

        Returns
        -------
        list of str
            The ids of the batches asked to cancel.
        """
        cancelled = []
        for record in self.state.live(self.host, self.deployment):
            if record.phase == "submitted" and record.batch_id is not None:
                batch = self._api.cancel(record.batch_id)
                if batch is not None:
                    self.state.seen(record.chunk, record.batch_id, str(batch.status))
                    cancelled.append(record.batch_id)
        return cancelled

    @property
    def limit(self) -> int | None:
        """The enqueued-token limit in force: the given one, or the learned one."""
        known = [x for x in (self.enqueued_tokens_limit, self.learned_limit) if x]
        return min(known) if known else None

    # -- submitting ----------------------------------------------------------------

    def _submit(self, chunk: Chunk, spool: Spool) -> bool:
        """Upload (or find) the file, wait until processed, create (or find) the batch.

        Returns whether a batch is running; if not, the chunk's rows have their errors.
        """
        why = self._submitter.submit(
            chunk,
            lambda: self._chunker.open_file(
                chunk.name, self.state.keys(chunk.name), spool
            ),
        )
        return why is None or self._give_up(chunk, spool, why)

    def _give_up(self, chunk: Chunk, spool: Spool, why: str) -> bool:
        error = BatchFailedError(f"batch mode could not submit this request: {why}")
        keys = self.state.keys(chunk.name)
        self._deliver({key: ChatResult(exception=error) for key in keys}, spool)
        self.state.done(chunk.name, "failed", why)
        chunk.status = "failed"
        return False

    # -- polling -------------------------------------------------------------------

    def _poll(self, chunk: Chunk, active: Sequence[Chunk], spool: Spool) -> Outcome:
        """Poll ``chunk``'s batch once; if it ended, deliver its rows' results."""
        assert chunk.batch_id is not None  # noqa: S101 - polled once submitted
        try:
            batch = self._api.batch(chunk.batch_id)
        except TRANSIENT as exc:
            logger.warning(
                "polling batch %s failed (%s); retrying", chunk.batch_id, exc
            )
            return "running"
        if batch is None:
            batch_error = BatchFailedError(
                f"batch {chunk.batch_id} is gone from the server",
                batch_id=chunk.batch_id,
            )
            keys = self.state.keys(chunk.name)
            self._end(chunk, "failed", [dict.fromkeys(keys, batch_error)], spool)
            return "ended"
        status = observe(chunk, batch, self.state)
        self._step("polled", chunk)
        if status not in TERMINAL:
            return "running"
        if self._keeper is not None:  # known before its rows are read: cleanable
            self._keeper.record_outputs(chunk.name, batch)
        if status == "failed":
            errors = list(batch.errors.data or []) if batch.errors else []
            if any(e.code == "token_limit_exceeded" for e in errors):
                others = [c for c in active if c is not chunk]
                if others:
                    enqueued = sum(c.tokens for c in others)
                    self.learned_limit = min(self.learned_limit or enqueued, enqueued)
                    logger.info(
                        "batch %s refused: the enqueued-token quota of %r is full; "
                        "resubmitting once fewer tokens are enqueued (limit taken as %d)",
                        chunk.batch_id,
                        self.deployment,
                        self.learned_limit,
                    )
                    self.state.requeue(chunk.name, "token_limit_exceeded")
                    chunk.phase, chunk.batch_id, chunk.status = "uploaded", None, None
                    chunk.completed = chunk.failed = 0
                    return "requeue"
            keys = self.state.keys(chunk.name)
            per_key = self._reader.failed_rows(keys, batch.id, errors)
            self._end(chunk, status, [per_key], spool)
            return "ended"
        pages = self._reader.collect(self.state.keys(chunk.name), batch, status)
        self._end(chunk, status, pages, spool)
        return "ended"

    def _end(
        self,
        chunk: Chunk,
        status: str,
        pages: Iterable[Mapping[str, AzureChatError | ChatResult]],
        spool: Spool,
    ) -> None:
        """Hand over an ended batch's results, a page at a time; then mark it done."""
        self._step("collected", chunk)
        n = failed = 0
        for per_key in pages:
            chunk_results = {
                key: value
                if isinstance(value, ChatResult)
                else ChatResult(exception=value)
                for key, value in per_key.items()
            }
            self._deliver(chunk_results, spool)
            n += len(chunk_results)
            failed += sum(r.exception is not None for r in chunk_results.values())
        self.state.done(
            chunk.name, status, f"{failed} of {n} failed" if failed else None
        )
        chunk.status = status
        self._step("done", chunk)
        if self._keeper is not None:  # every row failed: a rerun reuses its file
            self._keeper.clean(chunk.name, keep_input=n > 0 and failed == n)
            self._step("cleaned", chunk)

    def _deliver(self, chunk_results: Mapping[str, ChatResult], spool: Spool) -> None:
        if self.on_results is not None:
            self.on_results(chunk_results)
        spool.put_results(chunk_results, BATCH, again=self.again)

    # -- the deadline ----------------------------------------------------------------

    def _expired(self) -> bool:
        return self.deadline is not None and self.clock() >= self.deadline

    def _wait(self, seconds: float) -> None:
        """Sleep, but not past the deadline; at the deadline, stop the run's waiting."""
        if self.deadline is not None:
            left = self.deadline - self.clock()
            if left <= 0:
                raise _DeadlinePassed
            seconds = min(seconds, left)
        self.sleep(seconds)

    def _past_deadline(self, chunks: Sequence[Chunk], spool: Spool) -> None:
        """The rows of chunks that had not ended at the deadline get why, and what next.

        Their chunks stay live in the state (nothing is marked done): a rerun attaches
        to the batches still running and submits the chunks never submitted.
        """
        for chunk, error in deadline_errors(chunks, self.state.path, self.deadline_s):
            keys = self.state.keys(chunk.name)
            spool.put_results(dict.fromkeys(keys, ChatResult(exception=error)), BATCH)

    # -- helpers -------------------------------------------------------------------

    def _step(self, step: str, chunk: Chunk) -> None:
        if self.hook is not None:
            self.hook(step, chunk.name)

    def _report(self, chunks: Sequence[Chunk]) -> None:
        if self.progress is not None:
            self.progress(progress_of(chunks))


def _api_for(client: Any, deployment: str, api: str) -> Api:
    """The SDK calls of a run of ``api``'s batches.

    ``"responses"``: batches of ``/v1/responses`` lines, built and read as the online
    Responses path does; the client must be on the v1 API (else a
    :class:`~polars_azurechat.errors.ConfigurationError`, before any request).
    """
    if api == "responses":
        check_responses_client(client)
        return Api(client, deployment, endpoint=RESPONSES_URL)
    return Api(client, deployment, endpoint=BATCH_URL)


def _fits(limit: int | None, chunk: Chunk, active: Sequence[Chunk]) -> bool:
    """Whether ``chunk`` may be submitted now under the enqueued-token ``limit``."""
    if limit is None or not active:
        return True
    return sum(c.tokens for c in active) + chunk.tokens <= limit


class _DeadlinePassed(Exception):  # noqa: N818 - an outcome, not a bug
    """The run's deadline passed during a wait (a file's, or between polls)."""
