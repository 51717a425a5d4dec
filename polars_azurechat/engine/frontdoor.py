"""The front door every request goes through, however it travels. Not meant for outside use.

A batch of rows (a slice of a Polars chunk, a CLI batch, a list) comes in through
:meth:`FrontDoor.take`, which does, once for every way of sending:

- null rows stay null; a row that cannot be sent gets its input error;
- each request is named by its cache key (:class:`RequestShape`), and identical
  requests are sent once: the first row asking is the *leader*, the others follow;
- cache hits are answered at the door (a typed answer is parsed again: a changed
  validator may refuse what an earlier run kept, and it is then sent again).

What is left (``Intake.todo``) goes to a *sender*: the online engine
(:class:`~polars_azurechat.engine.core.ChatEngine`) or Azure's Batch API
(:class:`~polars_azurechat.batch.mode.BatchMode`). The sender hands each answer back
through :meth:`FrontDoor.deliver` (counted, cached, shown) and
:meth:`FrontDoor.finish` gives the followers their leader's answer and returns the
results in row order.

:class:`RequestShape` is what every request of a job carries besides its messages:
the body fields, ``max_tokens``, the typed answer's schema and its tokens, and the
canonical JSON around the messages that names the request. It is built once per job
and shared by the engine, batch mode and :func:`~polars_azurechat.plan.plan`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from polars_azurechat._json import messages_json
from polars_azurechat._types import ChatRequest, ChatResult
from polars_azurechat.errors import AzureChatError, InputError
from polars_azurechat.options import DEFAULT_RESERVED_COMPLETION_TOKENS
from polars_azurechat.store.sqlite import request_key_parts
from polars_azurechat.transport import tokens as _tokens

if TYPE_CHECKING:
    from polars_azurechat.engine.core import RunStats
    from polars_azurechat.schema.output import OutputSchema
    from polars_azurechat.summary import SpendingCap

__all__ = ["AnswerCache", "FrontDoor", "Intake", "Recent", "RequestShape"]

logger = logging.getLogger(__name__)


class AnswerCache(Protocol):
    """Where answers are kept between runs (SQLite or Redis)."""

    path: Any
    broken: str | None
    #: why writes wait (another connection holds the lock), or None
    busy: str | None
    #: answers given up at ``close`` because the store stayed busy
    lost: int
    #: set when the job was interrupted: ``close`` skips the store's housekeeping
    hurry: bool
    close_wait_s: float

    @property
    def waiting(self) -> int:
        """Answers put but not yet written."""

    def busy_for_s(self) -> float:
        """Seconds the store has refused writes (0.0 while they go through)."""

    def get_many(self, keys: Iterable[str]) -> dict[str, ChatResult]:
        """The kept answers among ``keys``, by key."""

    def put(self, key: str, result: ChatResult) -> None:
        """Keep one answer (buffered until ``flush``)."""

    def flush(self, *, wait: bool = True, busy_wait_s: float = 0.0) -> None:
        """Hand what is buffered to the writer; ``wait``: until it is written."""

    def close(self) -> None:
        """Flush and let go of the file or connection."""


def max_tokens_of(params: Mapping[str, Any]) -> Any:
    """The answer's token bound of a body: ``max_tokens`` or ``max_completion_tokens``.

    ``None`` when neither is set (Azure then reserves a default per request).

    Examples
    --------
    >>> max_tokens_of({"max_completion_tokens": 64})
    64
    >>> max_tokens_of({}) is None
    True
    """
    return params.get("max_tokens", params.get("max_completion_tokens"))


class RequestShape:
    """What every request of a job carries besides its messages.

    Parameters
    ----------
    params
        The body fields sent with every request (``max_tokens``, ``temperature``,
        a typed answer's strict ``response_format``, ...).
    schema
        The typed answer's schema, or ``None``.
    host, deployment
        Where requests go: part of the cache key (a different deployment may answer
        differently; the surface, classic or v1, is not).

    Examples
    --------
    >>> from polars_azurechat._types import ChatRequest
    >>> shape = RequestShape({"max_tokens": 5}, host="h", deployment="d")
    >>> req = ChatRequest([{"role": "user", "content": "hi"}])
    >>> shape.body(req)
    {'max_tokens': 5, 'messages': [{'role': 'user', 'content': 'hi'}]}
    >>> shape.reserved, len(shape.key(req))
    (5, 64)
    """

    __slots__ = (
        "_head",
        "_tail",
        "deployment",
        "host",
        "max_tokens",
        "params",
        "reserved",
        "schema",
        "schema_tokens",
    )

    def __init__(
        self,
        params: Mapping[str, Any],
        schema: OutputSchema | None = None,
        *,
        host: str = "",
        deployment: str = "",
    ) -> None:
        self.params: dict[str, Any] = dict(params)
        self.schema = schema
        self.host, self.deployment = host, deployment
        #: ``max_tokens`` (or ``max_completion_tokens``), ``None`` if not set
        self.max_tokens: Any = max_tokens_of(self.params)
        #: what Azure reserves for the answer when it counts a request on arrival
        self.reserved: int = (
            DEFAULT_RESERVED_COMPLETION_TOKENS
            if self.max_tokens is None
            else self.max_tokens
        )
        #: a typed answer's schema is part of each request's prompt (Azure counts it)
        self.schema_tokens = 0 if schema is None else schema.schema_tokens()
        # the canonical JSON around the messages, encoded once (the schema is most of
        # it: encoding it per row cost more than the rest of the key)
        self._head, self._tail = request_key_parts(
            host=host, deployment=deployment, params=params
        )

    def problem(self, req: ChatRequest) -> AzureChatError | None:
        """Why ``req`` cannot be sent with this job's parameters, or ``None``.

        Its own input error, or JSON mode (``response_format`` ``json_object``) with
        messages that do not hold the word "json", which Azure refuses.
        """
        if req.error is not None:
            return req.error
        fmt = self.params.get("response_format")
        json_mode = isinstance(fmt, Mapping) and fmt.get("type") == "json_object"
        if json_mode and not _says_json(req):
            return InputError(
                "response_format json_object needs the word 'json' in the messages "
                "(Azure refuses the request otherwise)"
            )
        return None

    def key(self, req: ChatRequest) -> str:
        """:func:`~polars_azurechat.store.sqlite.request_key` of ``req``, the same digest."""
        digest = hashlib.sha256(self._head)  # the parts hashed in turn, not joined:
        digest.update(messages_json(req.messages, canonical=True))  # a photo's data
        digest.update(self._tail)  # URL is 67 KB
        return digest.hexdigest()

    def body(self, req: ChatRequest) -> dict[str, Any]:
        """The chat-completions body of ``req``."""
        return {**self.params, "messages": req.messages}

    def prompt_tokens(self, req: ChatRequest) -> int:
        """The prompt's tokens as estimated here, the schema's included."""
        return _tokens.prompt_tokens(req.messages) + self.schema_tokens

    def quota_tokens(self, req: ChatRequest, *, exact: bool = True) -> int:
        """What Azure counts against the quota on arrival: prompt plus ``max_tokens``.

        ``exact=False``: the prompt estimated from its length (no token quota to meet).
        """
        return (
            _tokens.request_tokens(req.messages, self.max_tokens, exact=exact)
            + self.schema_tokens
        )

    def worst_cost(
        self, req: ChatRequest, cap: SpendingCap, *, batch: bool = False
    ) -> float:
        """The most one attempt of ``req`` can cost, at the online or the batch price."""
        billed = self.prompt_tokens(req) + _tokens.billed_image_extra(
            req.messages, cap.model
        )  # the model's own price of an image (gpt-4o-mini: 33x the tile rule's)
        return cap.worst_case(billed, self.max_tokens, batch=batch)

    def parse_cached(self, hits: dict[str, ChatResult]) -> dict[str, ChatResult]:
        """Parse cached typed answers; one that no longer validates is left out.

        (The schema is in the cache key, but a pydantic model's own validators are
        not: a changed validator may refuse what an earlier run kept.)
        """
        schema = self.schema
        if schema is None or not hits:
            return hits
        out: dict[str, ChatResult] = {}
        for key, hit in hits.items():
            try:
                hit.parsed = schema.parse(hit.content or "")
            except Exception as err:  # noqa: BLE001 - a user's validator may raise anything
                logger.debug(
                    "a cached answer no longer validates (%s): sent again", err
                )
                continue
            out[key] = hit
        return out


#: How much memory a run's answers may take in :class:`Recent` (estimated).
RECENT_BYTES = 64 * 1024 * 1024
#: What an answer takes besides its text: its key, the result object, its entry
#: (1,378 bytes measured with tracemalloc for a short typed answer).
RECENT_OVERHEAD = 1_500
#: What each token of an answer's log-probabilities takes (a tuple, a str, a float).
RECENT_LOGPROB = 150


def _answer_bytes(result: ChatResult) -> int:
    """About what ``result`` takes in memory (:class:`Recent`'s measure).

    Its text at 1 byte a character (ASCII) or 4, twice with a typed answer (parsed from
    it), plus its log-probabilities and :data:`RECENT_OVERHEAD`.
    """
    text = result.content or ""
    size = len(text) if text.isascii() else 4 * len(text)
    if result.parsed is not None:
        size *= 2
    return RECENT_OVERHEAD + size + RECENT_LOGPROB * len(result.logprobs or ())


class Recent:
    """A run's good answers by key, so that a row asking again later is not sent again.

    Within one batch the door sends a request once; a request another batch is sending
    is awaited (the online sender). This keeps what was answered for the batches that
    follow (a frame of many chunks, a lazy query's waves, the CLI's batches), up to
    about ``budget`` bytes of memory (:func:`_answer_bytes`): past it, the least
    recently asked are forgotten (a row asking one of them is sent again; a cache file
    keeps every answer). Cleared, it keeps nothing more (a late answer of an ended run).
    It is read and written on the engine's loop (cleared there too).

    Examples
    --------
    >>> recent = Recent(budget=3_500)  # two answers of 100 characters
    >>> recent.put("a", ChatResult(content="x" * 100))
    >>> recent.put("b", ChatResult(content="y" * 100))
    >>> sorted(recent.keys()), recent.get("a").content[:3], recent.bytes
    (['a', 'b'], 'xxx', 3200)
    >>> recent.put("c", ChatResult(content="z" * 100))  # over: "b", asked least lately
    >>> sorted(recent.keys())
    ['a', 'c']
    """

    def __init__(self, budget: int = RECENT_BYTES) -> None:
        self.budget = budget
        self._answers: OrderedDict[str, tuple[ChatResult, int]] = OrderedDict()
        self._bytes = 0
        self._closed = False

    @property
    def bytes(self) -> int:
        """The memory its answers take, estimated."""
        return self._bytes

    def keys(self) -> Iterable[str]:
        """The keys kept, oldest first."""
        return self._answers.keys()

    def get(self, key: str) -> ChatResult | None:
        """The answer kept for ``key`` (now the newest), or ``None``."""
        kept = self._answers.get(key)
        if kept is None:
            return None
        with contextlib.suppress(KeyError):  # cleared meanwhile
            self._answers.move_to_end(key)
        return kept[0]

    def put(self, key: str, result: ChatResult) -> None:
        """Keep a good answer (an error is not kept: a later row tries again)."""
        if result.exception is not None or key in self._answers or self._closed:
            return
        size = _answer_bytes(result)
        self._answers[key] = (result, size)
        self._bytes += size
        while self._bytes > self.budget and self._answers:
            _, (_, dropped) = self._answers.popitem(last=False)
            self._bytes -= dropped

    def clear(self) -> None:
        """Forget every answer, and keep none from now on (the run is over)."""
        self._closed = True
        self._answers.clear()
        self._bytes = 0


@dataclasses.dataclass(slots=True)
class Intake:
    """One batch of rows at the door: what is answered, and what the sender must do."""

    requests: Sequence[ChatRequest | None]
    results: list[ChatResult | None]
    #: key -> the first row asking it, for the rows the sender answers
    todo: dict[str, int]
    #: rows asking what an earlier row of the batch asks: (row, key)
    followers: list[tuple[int, str]]
    #: answers by key (cache hits, then what the sender delivers), for the followers
    answers: dict[str, ChatResult]
    #: the run's answers, kept for its later batches (``None``: none kept)
    recent: Recent | None = None


class FrontDoor:
    """Everything a batch of rows goes through that does not depend on how it travels.

    Parameters
    ----------
    shape
        The job's request shape: the key of each request.
    cache
        Where answers are looked up first and kept (``None``: no cache).
    progress
        Called with the number of rows just settled, or ``None``.
    on_put
        Called after an answer is put in the cache (to schedule a flush), or
        ``None``.

    Examples
    --------
    >>> from polars_azurechat.engine.core import RunStats
    >>> from polars_azurechat._types import ChatRequest, ChatResult
    >>> door = FrontDoor(RequestShape({}))
    >>> hi = ChatRequest([{"role": "user", "content": "hi"}])
    >>> stats = RunStats()
    >>> intake = door.take([hi, None, hi], stats)
    >>> list(intake.todo.values()), intake.followers[0][0]
    ([0], 2)
    >>> for key in list(intake.todo):
    ...     door.deliver(intake, key, ChatResult(content="hello", attempts=1), stats)
    >>> [r and r.content for r in door.finish(intake, stats)]
    ['hello', None, 'hello']
    >>> stats.answered, stats.deduplicated, stats.null_rows
    (2, 1, 1)
    """

    def __init__(
        self,
        shape: RequestShape,
        cache: AnswerCache | None = None,
        *,
        progress: Callable[[int], None] | None = None,
        on_put: Callable[[], None] | None = None,
    ) -> None:
        self.shape = shape
        self.cache = cache
        self.progress = progress
        self.on_put = on_put

    def take(
        self,
        requests: Sequence[ChatRequest | None],
        stats: RunStats,
        recent: Recent | None = None,
    ) -> Intake:
        """Settle what the door can: nulls, unsendable rows, duplicates, cache hits.

        ``recent``: the run's answers so far; a request among them is answered from
        there (counted as deduplicated), and what the sender delivers is kept there.
        """
        results: list[ChatResult | None] = [None] * len(requests)
        todo: dict[str, int] = {}
        followers: list[tuple[int, str]] = []
        key = self.shape.key
        problem = self.shape.problem
        for i, req in enumerate(requests):
            if req is None:
                stats.null_rows += 1
            elif (error := problem(req)) is not None:
                results[i] = unsendable = ChatResult(exception=error)
                stats.count(unsendable)
            else:
                k = key(req)
                if k in todo:
                    followers.append((i, k))
                else:
                    todo[k] = i
        answers: dict[str, ChatResult] = {}
        if recent is not None and todo:
            for k in list(todo):
                earlier = recent.get(k)
                if earlier is not None:
                    answers[k] = earlier
                    results[todo.pop(k)] = again = dataclasses.replace(
                        earlier, attempts=0
                    )
                    stats.count(again)
                    stats.deduplicated += 1
        if self.cache is not None and todo:
            hits = self.shape.parse_cached(self.cache.get_many(todo))
            for k, hit in hits.items():
                results[todo.pop(k)] = answers[k] = hit
                stats.count(hit)
            stats.cached += len(hits)
        if self.progress is not None:
            self.progress(len(requests) - len(todo) - len(followers))
        return Intake(requests, results, todo, followers, answers, recent)

    def keep(self, key: str, result: ChatResult) -> None:
        """Put a good answer in the cache (an error is not kept: a rerun tries again)."""
        if self.cache is not None and result.exception is None:
            self.cache.put(key, result)
            if self.on_put is not None:
                self.on_put()

    def deliver(
        self,
        intake: Intake,
        key: str,
        result: ChatResult,
        stats: RunStats,
        *,
        kept: bool = False,
        shown: bool = False,
    ) -> None:
        """The sender's answer for ``key``: the leader's result, counted and cached.

        ``kept``: already in the cache (or another batch's answer, kept there);
        ``shown``: already counted by the progress bar.
        """
        intake.results[intake.todo[key]] = intake.answers[key] = result
        stats.count(result)
        if intake.recent is not None:
            intake.recent.put(key, result)
        if not kept:
            self.keep(key, result)
        if self.progress is not None and not shown:
            self.progress(1)

    def refuse_over_cap(
        self, intake: Intake, stats: RunStats, cap: SpendingCap, *, batch: bool
    ) -> dict[str, float]:
        """Hold each leader's worst case under ``cap``; the rows that do not fit fail.

        For a sender that holds once per request (batch mode); the online engine
        holds per attempt. Returns the worst case held per key.
        """
        held: dict[str, float] = {}
        for key, i in list(intake.todo.items()):
            req = intake.requests[i]
            assert req is not None  # noqa: S101 - leaders are sendable rows
            worst = self.shape.worst_cost(req, cap, batch=batch)
            refused = cap.reserve(worst)
            if refused is None:
                held[key] = worst
                continue
            self.deliver(intake, key, ChatResult(exception=refused), stats)
            del intake.todo[key]
        return held

    def finish(self, intake: Intake, stats: RunStats) -> list[ChatResult | None]:
        """Give each follower its leader's answer; the results, in row order."""
        results, answers = intake.results, intake.answers
        for i, key in intake.followers:
            results[i] = follower = dataclasses.replace(answers[key], attempts=0)
            stats.count(follower)
            stats.deduplicated += 1
        if self.progress is not None and intake.followers:
            self.progress(len(intake.followers))
        return results


def _says_json(req: ChatRequest) -> bool:
    """Whether a request's messages hold the word ``json`` (JSON mode needs it)."""
    for message in req.messages:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"text": content}]
        for part in parts:
            text = part.get("text") if isinstance(part, Mapping) else None
            if isinstance(text, str) and "json" in text.lower():
                return True
    return False
