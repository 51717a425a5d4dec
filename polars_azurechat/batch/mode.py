"""Batch mode's sender: what the front door leaves goes to Azure's Batch API.

Not meant for outside use. ``mode="batch"`` picks this sender instead of the online
engine's; the rows go through the same front door
(:class:`~polars_azurechat.engine.frontdoor.FrontDoor`: nulls, unsendable rows, duplicates,
cache hits, followers, counters), and the leaders are written to JSONL files, uploaded,
batched, polled and joined back by :class:`~polars_azurechat.batch.runner.BatchRunner`, whose
every step is recorded in the cache file first. Under a spending cap each leader's worst
case (at the batch price) is held before it is submitted. With
``batch_fallback="online"``, the rows a batch left unanswered go through the online
engine in the same run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from polars_azurechat._types import ChatRequest, ChatResult
from polars_azurechat.batch.chunks import Chunker
from polars_azurechat.batch.spool import ONLINE
from polars_azurechat.config import V1
from polars_azurechat.engine.frontdoor import FrontDoor

if TYPE_CHECKING:
    from polars_azurechat.batch.poll import BatchProgress
    from polars_azurechat.batch.runner import BatchRunner
    from polars_azurechat.batch.spool import Spool
    from polars_azurechat.batch.state import BatchStateStore
    from polars_azurechat.config import ChatConfig
    from polars_azurechat.engine.core import ChatEngine, Run
    from polars_azurechat.engine.progress import ProgressBar
    from polars_azurechat.options import ChatOptions
    from polars_azurechat.summary import SpendingCap

__all__ = ["BatchCounts", "BatchMode", "batch_client"]

logger = logging.getLogger(__name__)

#: How long a finished batch's answers wait for a busy cache file before the batch is
#: marked done (the state store, in the same file, waits as long for its own writes).
BUSY_WAIT_S = 30.0

K = TypeVar("K")


@dataclasses.dataclass
class BatchCounts:
    """Batch mode's counters of one run: batches followed, lines, rows, tokens."""

    batches: int = 0
    lines: int = 0
    answered: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: BatchCounts) -> None:
        """Add ``other``'s counts to these."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class BatchMode:
    """A job's batch sender: its state store, client, counters and lock.

    Parameters
    ----------
    engine
        The job's engine: its runs, request shape, cache, and the online path of
        ``batch_fallback="online"``.
    options
        The job's options (cache file, polling, fallback, enqueued-token limit).
    config, client
        Where the files and batches APIs are (``client``: the user's openai client).
    cap
        The job's spending cap, or ``None``.
    bar
        The job's progress bar, or ``None``.
    """

    def __init__(
        self,
        engine: ChatEngine,
        options: ChatOptions,
        *,
        config: ChatConfig | None,
        client: Any,
        cap: SpendingCap | None,
        bar: ProgressBar | None,
    ) -> None:
        self.engine = engine
        self.options = options
        self.cap = cap
        self.bar = bar
        self._config = config
        self.lock = threading.Lock()
        self.state: BatchStateStore | None = None
        self.client: Any = client
        #: BatchRunner keywords (tests: sleep, clock, hook, max_lines, max_bytes)
        self.settings: dict[str, Any] = {}
        self.counts: dict[int, BatchCounts] = {}
        # the door of this sender: counts and shows what the engine's does, but it
        # runs in the caller's thread (the cache is flushed per batch, not per turn)
        self.door = FrontDoor(engine.shape, engine.cache)
        #: the JSONL line of each request (the runner's chunker writes the same)
        self.chunker = Chunker(
            engine.shape.params, engine.shape.deployment, api=options.api
        )

    def counts_for(self, run_id: int) -> BatchCounts:
        """The counters of run ``run_id`` (made on first use)."""
        return self.counts.setdefault(run_id, BatchCounts())

    def total(self) -> BatchCounts:
        """The counters over every run."""
        out = BatchCounts()
        for c in self.counts.values():
            out.add(c)
        return out

    def close(self) -> None:
        """Close the state store (the cache file's batch tables)."""
        if self.state is not None:
            self.state.close()
            self.state = None

    def answer(self, requests: Sequence[ChatRequest | None]) -> list[ChatResult | None]:
        """Answer ``requests`` through Azure's Batch API, as one run (see :meth:`answer_batches`)."""
        for _, results in self.answer_batches([(None, requests)]):
            return results
        return []  # pragma: no cover - one batch in, one out

    def answer_batches(
        self, batches: Iterable[tuple[K, Sequence[ChatRequest | None]]]
    ) -> Iterator[tuple[K, list[ChatResult | None]]]:
        """Answer batches of requests through Azure's Batch API, as one run.

        Every batch is read first (the rows and the requests to send go to a
        temporary :class:`~polars_azurechat.batch.spool.Spool` on disk, a batch at a
        time), then the requests are sent as one set of Azure batches, then each
        batch's results are yielded, in order: memory follows one batch of rows and
        one batch file, not the run (the keys are kept: keep them small).

        Null rows stay null, unsendable rows keep their input error, identical
        requests are sent once, cache hits first; under a spending cap, the rows
        whose worst case (at the batch price) does not fit fail with
        :class:`~polars_azurechat.errors.SpendingCapError`; the rest go to a
        :class:`~polars_azurechat.batch.runner.BatchRunner` whose state is in the cache
        file. With ``batch_fallback="online"`` the rows it left unanswered go
        through the engine online, in the same run.
        """
        from polars_azurechat.batch.rows import SpooledRun
        from polars_azurechat.batch.spool import Spool

        with (
            self.lock,
            self.engine.runs.entered() as run,
        ):  # one set of batches at a time
            try:
                with Spool() as spool:
                    rows = SpooledRun(
                        self.door,
                        spool,
                        self.chunker.line,
                        stats=run.stats,
                        counts=self.counts_for(run.id),
                        cap=self.cap,
                        bar=self.bar,
                    )
                    sizes: list[tuple[K, int]] = []
                    for key, requests in batches:
                        rows.add(requests)
                        sizes.append((key, len(requests)))
                    if rows.to_send:
                        self._send(run, spool, rows.to_send)
                    first = 0
                    for key, n in sizes:
                        yield key, rows.results(first, n)
                        first += n
            except KeyboardInterrupt:
                if run.interrupted is None:
                    run.interrupted = "Ctrl-C"
                cache = self.options.cache
                message = (
                    f"interrupted by {run.interrupted}: the batches submitted keep "
                    f"running on the server and are recorded in {cache}; run the same "
                    "job again to collect their answers (nothing is submitted twice), "
                    f"or 'polars-azurechat batches --cache {cache} --cancel' to cancel "
                    "them"
                )
                run.error = KeyboardInterrupt(message)
                raise run.error from None
            finally:  # the state file is this job's for the run only (its lock)
                self.close()

    def _send(self, run: Run, spool: Spool, to_send: int) -> None:
        """The spool's requests through the Batch API (and online, with the fallback)."""
        bar, cap, door = self.bar, self.cap, self.door
        counts = self.counts_for(run.id)

        def on_results(chunk: Mapping[str, ChatResult]) -> None:
            # before the chunk is marked done: what a rerun must not pay again
            for key, r in chunk.items():
                door.keep(key, r)
            if cap is not None:
                for key, worst in spool.held(chunk).items():
                    r = chunk[key]
                    spent = cap.cost(
                        r.prompt_tokens or 0, r.completion_tokens or 0, batch=True
                    )
                    cap.settle(worst, spent)
            if door.cache is not None:  # a busy file is waited for, as the state is
                door.cache.flush(busy_wait_s=BUSY_WAIT_S)

        shown = [0]

        def progress(p: BatchProgress) -> None:
            counts.batches = max(counts.batches, len(p.batches))
            counts.lines = max(counts.lines, p.lines)
            if bar is None:
                return
            step = min(p.completed + p.failed, to_send) - shown[0]
            if step > 0:
                shown[0] += step
                bar.update(step)
            bar.batch_status(_batch_text(p))

        runner = self._runner(run, on_results, progress)
        runner.send(spool)
        if cap is not None:  # rows that never reached a batch spent nothing
            for worst in spool.all_held():
                cap.settle(worst, 0.0)
        fallback = spool.count_again()
        if bar is not None:
            bar.update(to_send - fallback - shown[0])
        if fallback:
            self._online(spool, fallback)

    def _online(self, spool: Spool, n: int) -> None:
        """``batch_fallback="online"``: the rows a batch left go through the engine."""
        logger.info(
            "batch mode: %d requests a batch left unanswered are sent online "
            "(batch_fallback='online')",
            n,
        )
        while page := spool.again(8192):
            again = [
                ChatRequest(messages=_messages_of(json.loads(line)["body"]))
                for _, line in page
            ]
            for _, online_results in self.engine.pipeline([(None, again)]):
                # counted, kept and shown by the engine's own door
                answers = {}
                for (key, _), sent in zip(page, online_results, strict=True):
                    assert sent is not None  # noqa: S101 - sendable rows
                    answers[key] = sent
                spool.put_results(answers, ONLINE)

    def _runner(
        self,
        run: Run,
        on_results: Callable[[Mapping[str, ChatResult]], None],
        progress: Callable[[BatchProgress], None],
    ) -> BatchRunner:
        from polars_azurechat.batch.runner import BatchRunner
        from polars_azurechat.batch.state import BatchStateStore

        opts, shape = self.options, self.engine.shape
        assert opts.cache is not None  # noqa: S101 - checked by ChatOptions
        if self.state is None:
            self.state = BatchStateStore(opts.cache)
        if self.client is None:
            assert self._config is not None  # noqa: S101 - a config or a client
            self.client = batch_client(self._config, api=opts.api)
        settings = dict(self.settings)  # tests: sleep, clock, hook, max_lines, ...
        sleep = settings.pop("sleep", time.sleep)
        clock = settings.setdefault("clock", time.monotonic)
        poll = opts.batch_poll_s
        settings.setdefault("file_poll_s", min(1.0, poll))
        settings.setdefault("file_wait_s", opts.batch_file_wait_s)
        if run.deadline is not None:  # the run's deadline, on the runner's clock
            left = run.deadline - self.engine.runs.clock()
            settings.setdefault("deadline", clock() + left)
            settings.setdefault("deadline_s", run.deadline_s)
        return BatchRunner(
            self.client,
            deployment=shape.deployment,
            state=self.state,
            params=shape.params,
            enqueued_tokens_limit=opts.enqueued_tokens_limit,
            on_truncated=opts.on_truncated,
            poll_interval_s=poll,
            max_poll_interval_s=max(60.0, poll),
            progress=progress,
            on_results=on_results,
            again=_again if opts.batch_fallback == "online" else None,
            sleep=functools.partial(_batch_sleep, run, sleep),
            schema=shape.schema,
            api=opts.api,
            **settings,
        )


def _messages_of(body: Mapping[str, Any]) -> Any:
    """A batch line's messages: chat's ``messages``, or the Responses API's ``input``."""
    return body["messages"] if "messages" in body else body["input"]


def _again(r: ChatResult) -> bool:
    """Whether ``batch_fallback="online"`` sends a batch's result's request again."""
    from polars_azurechat.batch.runner import BatchFailedError, BatchIncompleteError
    from polars_azurechat.transport.retry import is_retryable

    exc = r.exception
    return exc is not None and (
        isinstance(exc, BatchIncompleteError | BatchFailedError) or is_retryable(exc)
    )


def _batch_text(p: BatchProgress) -> str:
    """The bar's batch part: batches by status, and request counts."""
    statuses: dict[str, int] = {}
    for b in p.batches:
        statuses[b.status] = statuses.get(b.status, 0) + 1
    shown = " ".join(f"{status}={n}" for status, n in sorted(statuses.items()))
    return f"batches: {shown}; requests {p.completed + p.failed:,}/{p.lines:,}" + (
        f" ({p.failed:,} failed)" if p.failed else ""
    )


def _batch_sleep(run: Run, sleep: Callable[[float], None], seconds: float) -> None:
    """Wait between polls; a Ctrl-C (or SIGTERM) that stopped the run ends the wait."""
    if sleep is not time.sleep:
        if run.interrupted is not None:
            raise KeyboardInterrupt(run.interrupted)
        sleep(seconds)
        return
    end = time.monotonic() + seconds
    while True:
        if run.interrupted is not None:
            raise KeyboardInterrupt(run.interrupted)
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.25))


def batch_client(config: ChatConfig, *, api: str = "chat") -> Any:
    """An ``openai.AzureOpenAI`` client of ``config`` for the files and batches APIs.

    On the v1 API (``config.surface == "v1"``), or for Responses API batches
    (``api="responses"``: Azure's Global Batch takes ``/v1/responses`` lines only
    through the v1 API, so a classic config goes there too, as the online Responses
    path does), an ``openai.OpenAI`` client on the resource's ``/openai/v1/`` base
    URL (no api-version; the key or token as a bearer).

    A key or a fixed token is passed as is; a token provider or an azure-identity
    credential gives the client a provider whose tokens are kept fresh by the same
    code as the online path's (:class:`~polars_azurechat.transport.auth.TokenAuth`).
    Its HTTP client never follows a redirect (the SDK's default one does, taking the
    ``api-key`` header and the uploaded prompts to the host a 3xx names): a 3xx is a
    :class:`~polars_azurechat.errors.RedirectError` naming that host.
    """
    import openai

    http = openai.DefaultHttpxClient(follow_redirects=False)
    if config.surface == V1 or api == "responses":  # an OpenAI client on the v1 URL
        key: Any = config.api_key or config.azure_ad_token
        v1 = openai.OpenAI(
            base_url=f"{config.azure_endpoint.rstrip('/')}/openai/v1/",
            api_key=key or functools.partial(_entra_token, config.auth()),
            http_client=http,
        )
        weakref.finalize(v1, http.close)
        return v1
    kwargs: dict[str, Any] = {
        "azure_endpoint": config.azure_endpoint,
        "api_version": config.api_version,
        "http_client": http,
    }
    if config.api_key:
        kwargs["api_key"] = config.api_key
    elif config.azure_ad_token:
        kwargs["azure_ad_token"] = config.azure_ad_token
    else:
        kwargs["azure_ad_token_provider"] = functools.partial(
            _entra_token, config.auth()
        )
    client = openai.AzureOpenAI(**kwargs)
    weakref.finalize(client, http.close)  # its connections close with it
    return client


def _entra_token(auth: Any) -> str:
    from polars_azurechat.engine import loop as _loop

    headers = _loop.call(auth.headers())
    return str(headers["Authorization"]).removeprefix("Bearer ")
