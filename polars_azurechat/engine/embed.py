"""Embeddings through the engine: their shape, their sender, their column. Internal.

An embedding travels as a chat answer does (the same front door: nulls, input
errors, keys, duplicates, the cache, followers, counters, row order; the same
transport, pool, limiter, retries and spending cap), with three parts of its own:

- :class:`EmbeddingShape`, the request shape: the key names the kind, the
  deployment, ``dimensions`` and the text (a chat answer and an embedding of the
  same text never share a key); the quota cost is the inputs' tokens (no answer
  part); the body is ``{"input": [...], "dimensions": d, "encoding_format":
  "base64"}``.
- :class:`PackingSender`, the sender: it packs the front door's leaders into
  requests of at most ``inputs_per_request`` texts and ``request_tokens`` tokens
  (Azure: 2,048 and 300,000), sends each through :class:`EmbeddingOnline` (the
  online sender's attempt, retry, 429 and cap machinery, one request per pack) and
  delivers one result per leader (:meth:`FrontDoor.deliver`). A pack refused with a
  400 is split in halves and each half sent again, down to the one input Azure
  refuses: only that row fails.

A row's result carries its vector as ``content`` (base64, as it came; the cache
keeps it so); :mod:`polars_azurechat.engine.texts` makes the rows' requests and
the column (``Array(Float32, n)``).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from polars_azurechat._types import ChatRequest, ChatResult
from polars_azurechat.engine.frontdoor import RequestShape
from polars_azurechat.engine.online import OnlineSender
from polars_azurechat.engine.texts import EmbeddingSpec, TextsRequest
from polars_azurechat.errors import (
    AzureChatError,
    BadRequestError,
    MalformedResponseError,
    UnsupportedParameterError,
)
from polars_azurechat.store.sqlite import request_key_parts

if TYPE_CHECKING:
    from polars_azurechat.engine.frontdoor import FrontDoor, Intake
    from polars_azurechat.engine.runs import Run
    from polars_azurechat.summary import SpendingCap
    from polars_azurechat.transport.http import Completion

__all__ = ["EmbeddingOnline", "EmbeddingShape", "PackResult", "PackingSender", "pack"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class PackResult(ChatResult):
    """A packed request's outcome: one base64 vector per input, in input order."""

    vectors: list[str] = dataclasses.field(default_factory=list)


class EmbeddingShape(RequestShape):
    """The request shape of an embeddings job (see the module's docs).

    Examples
    --------
    >>> shape = EmbeddingShape(EmbeddingSpec(256, 256), host="h", deployment="d")
    >>> req = TextsRequest([], None, ["hi"], 1)
    >>> shape.body(req)
    {'input': ['hi'], 'dimensions': 256, 'encoding_format': 'base64'}
    >>> shape.quota_tokens(req), len(shape.key(req))
    (1, 64)
    """

    def __init__(
        self, spec: EmbeddingSpec, *, host: str = "", deployment: str = ""
    ) -> None:
        wire: dict[str, Any] = {"encoding_format": "base64"}
        if spec.dimensions is not None:
            wire = {"dimensions": spec.dimensions, **wire}
        super().__init__(wire, None, host=host, deployment=deployment)
        self.spec = spec
        #: no answer tokens: nothing is reserved for one
        self.max_tokens = 0
        self.reserved = 0
        # the key names the kind and the vectors' size; the text stands where a
        # chat request's messages do
        self._head, self._tail = request_key_parts(
            host=host,
            deployment=deployment,
            params={"kind": "embeddings", "dimensions": spec.dimensions},
        )

    def key(self, req: ChatRequest) -> str:
        """The cache key of a one-text request."""
        text = _texts(req)[0]
        encoded = json.dumps(text, ensure_ascii=False).encode()
        return hashlib.sha256(self._head + encoded + self._tail).hexdigest()

    def body(self, req: ChatRequest) -> dict[str, Any]:
        """The embeddings body of ``req`` (its texts as ``input``)."""
        return {"input": _texts(req), **self.params}

    def prompt_tokens(self, req: ChatRequest) -> int:
        """The inputs' tokens."""
        return req.tokens if isinstance(req, TextsRequest) else 0

    def quota_tokens(self, req: ChatRequest, *, exact: bool = True) -> int:
        """What Azure counts on arrival: the inputs' tokens, no answer part."""
        return self.prompt_tokens(req)

    def worst_cost(
        self, req: ChatRequest, cap: SpendingCap, *, batch: bool = False
    ) -> float:
        """The cost of the inputs' tokens (an embedding has no answer tokens)."""
        return cap.cost(self.prompt_tokens(req), 0, batch=batch)


def _texts(req: ChatRequest) -> list[str]:
    assert isinstance(req, TextsRequest)  # noqa: S101 - an embeddings job's requests
    return req.texts


class EmbeddingOnline(OnlineSender):
    """The online sender, for a pack of texts: its result carries the vectors."""

    async def send(self, run: Run, req: TextsRequest) -> ChatResult:
        """One pack's request: attempts, 429s, retries and the cap as for a chat row."""
        return await self._complete_one(run, req)

    def _result(
        self, completion: Completion, parsed: dict[str, Any] | None, attempts: int
    ) -> ChatResult:
        return PackResult(
            prompt_tokens=completion.prompt_tokens,
            attempts=attempts,
            request_id=completion.request_id,
            model=completion.model,
            deployment=completion.deployment,
            latency_ms=completion.latency_ms,
            vectors=completion.vectors or [],
        )


def pack(
    leaders: Sequence[tuple[str, TextsRequest]], inputs: int, budget: int
) -> list[list[tuple[str, TextsRequest]]]:
    """The leaders in requests of at most ``inputs`` texts and ``budget`` tokens.

    In order; a text over the budget alone goes alone (the server then says).

    Examples
    --------
    >>> reqs = [
    ...     (str(i), TextsRequest([], None, ["x"], t))
    ...     for i, t in enumerate([3, 3, 3, 9, 1])
    ... ]
    >>> [[k for k, _ in p] for p in pack(reqs, 2, 7)]
    [['0', '1'], ['2'], ['3'], ['4']]
    """
    packs: list[list[tuple[str, TextsRequest]]] = []
    current: list[tuple[str, TextsRequest]] = []
    tokens = 0
    for item in leaders:
        t = item[1].tokens
        if current and (len(current) >= inputs or tokens + t > budget):
            packs.append(current)
            current, tokens = [], 0
        current.append(item)
        tokens += t
    if current:
        packs.append(current)
    return packs


class PackingSender:
    """Sends the front door's leaders packed into embeddings requests.

    Parameters
    ----------
    online
        The online sender (one request per pack through the pool, retried).
    spec
        The job's packing limits and vector size.
    max_concurrency
        Packs in flight at once (the online sender's semaphore bounds requests).
    """

    def __init__(
        self, online: EmbeddingOnline, spec: EmbeddingSpec, *, max_concurrency: int
    ) -> None:
        self.online = online
        self.spec = spec
        self.max_concurrency = max_concurrency
        # a vector of ``size`` float32 values is this many base64 characters
        self._b64_len = 4 * ((4 * spec.size + 2) // 3)

    async def send(self, run: Run, intake: Intake, door: FrontDoor) -> None:
        """Answer every leader of ``intake``; each result delivered through ``door``."""
        leaders = []
        for key, i in intake.todo.items():
            req = intake.requests[i]
            assert isinstance(req, TextsRequest)  # noqa: S101 - leaders are sendable rows
            leaders.append((key, req))
        packs = iter(
            pack(leaders, self.spec.inputs_per_request, self.spec.request_tokens)
        )

        async def worker() -> None:
            for p in packs:  # one loop thread: workers never race on next()
                await self._answer(run, p, intake, door)

        n = min(self.max_concurrency, len(leaders))
        workers = [asyncio.ensure_future(worker()) for _ in range(n)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()

    async def _answer(
        self,
        run: Run,
        items: list[tuple[str, TextsRequest]],
        intake: Intake,
        door: FrontDoor,
    ) -> None:
        texts = [t for _, r in items for t in r.texts]
        req = TextsRequest([], None, texts, sum(r.tokens for _, r in items))
        result = await self.online.send(run, req)
        exc = result.exception
        if exc is None:
            vectors = result.vectors if isinstance(result, PackResult) else []
            if len(vectors) == len(items):
                self._deliver(run, items, result, vectors, intake, door)
                return
            exc = MalformedResponseError(
                f"{len(vectors)} vectors for {len(items)} inputs"
            )
        if (
            len(items) > 1
            and isinstance(exc, BadRequestError)
            and not isinstance(exc, UnsupportedParameterError)
            and run.fatal is None
        ):
            # one input may be what Azure refuses: halves, down to that one row
            logger.debug("a pack of %d inputs refused (%s): split", len(items), exc)
            half = len(items) // 2
            await asyncio.gather(
                self._answer(run, items[:half], intake, door),
                self._answer(run, items[half:], intake, door),
            )
            return
        for key, _ in items:
            failed = ChatResult(exception=exc, attempts=result.attempts)
            door.deliver(intake, key, failed, run.stats)

    def _deliver(
        self,
        run: Run,
        items: list[tuple[str, TextsRequest]],
        result: ChatResult,
        vectors: list[str],
        intake: Intake,
        door: FrontDoor,
    ) -> None:
        st = run.stats
        st.inputs_sent += len(items)
        for (key, req), vector in zip(items, vectors, strict=True):
            exc: AzureChatError | None = None
            if len(vector) != self._b64_len:
                exc = MalformedResponseError(
                    f"a vector of {len(base64.b64decode(vector)) // 4} values, not "
                    f"{self.spec.size} (check dimensions= or model=)"
                )
            row = ChatResult(
                content=None if exc else vector,
                prompt_tokens=req.tokens,
                attempts=result.attempts,
                exception=exc,
                request_id=result.request_id,
                model=result.model,
                deployment=result.deployment,
                latency_ms=result.latency_ms,
            )
            door.deliver(intake, key, row, st)
            if exc is None:
                run.answer_kept()
