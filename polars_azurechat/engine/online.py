"""The online sender: one request at a time through the pool, retried. Not meant for outside use.

:class:`OnlineSender` answers the leaders the front door leaves
(:class:`~polars_azurechat.engine.frontdoor.Intake`), one request per row, on the event
loop: under the semaphore (``max_concurrency``), admitted by the pool (its limiters:
the quota the server enforces), sent through the route's transport, the answer
validated for a typed answer, a failure retried under the tenacity policy (429s waited
out, not counted as attempts), a worst case held per attempt under the spending cap.
A request another batch is sending right now is awaited, not sent twice.

:func:`answer_error` and :func:`completed` (is this answer the row's answer, and the
row's result from it) are shared with batch mode.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import tenacity
from tenacity.wait import wait_base

from polars_azurechat._types import REASONING_LENGTH, ChatRequest, ChatResult
from polars_azurechat.errors import (
    AnswerConversionError,
    AuthenticationError,
    AzureChatError,
    ContentFilterError,
    ContextLengthError,
    DeadlineExceededError,
    NotFoundError,
    RateLimitError,
    RefusalError,
    SchemaValidationError,
    TruncatedError,
    UnsupportedParameterError,
)
from polars_azurechat.options import DEFAULT_RESERVED_COMPLETION_TOKENS
from polars_azurechat.schema.errors import DumpMismatchError, SchemaMismatchError
from polars_azurechat.transport.http import Completion
from polars_azurechat.transport.retry import is_retryable
from polars_azurechat.transport.status import (
    is_capacity_refusal,
    rate_limited_resource,
)

if TYPE_CHECKING:
    from polars_azurechat.engine.core import Run
    from polars_azurechat.engine.frontdoor import RequestShape
    from polars_azurechat.schema.output import OutputSchema
    from polars_azurechat.summary import SpendingCap
    from polars_azurechat.transport.pool import Pool, Route

__all__ = ["OnlineSender", "answer_error", "completed", "invalid_answer"]

logger = logging.getLogger(__name__)

#: A row waits out 429s (which never use up ``max_attempts``) for at most this long in
#: all; a server that never has room then fails it with its RateLimitError.
MAX_RATE_LIMITED_S = 900.0


async def _answered_elsewhere(
    run: Run, key: str, sending: Mapping[str, asyncio.Future[ChatResult]]
) -> ChatResult | None:
    """The answer to ``key`` another batch got, or ``None``: this row must send it.

    One the run was given since this row's batch came in (:class:`Recent`), or the one
    another batch is sending now, waited for. A transient failure (a 429, a 5xx, a
    timeout after its retries) is not shared, once a run: the first row that waited
    for it sends the request again, the others wait for that; any other failure (a
    content filter, a refusal, a cut answer) is shared, as it would come again.
    """
    while True:
        earlier = run.recent.get(key)
        if earlier is not None:
            return earlier
        shared = sending.get(key)
        if shared is None:
            return None
        try:
            answer = await asyncio.shield(shared)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not shared.cancelled() or (task is not None and task.cancelling()):
                raise  # this row itself was cancelled (a stop cancels every batch)
            continue  # the row sending it was cancelled (its batch was)
        failed = answer.exception
        if failed is None or not is_retryable(failed) or key in run.resent:
            return answer
        run.resent.add(key)


class OnlineSender:
    """Send a job's requests one per row through its pool, with retries.

    Parameters
    ----------
    pool
        The deployments (a pool of one for a single deployment).
    shape
        The job's request shape (body, ``max_tokens``, schema tokens).
    max_concurrency
        Requests in flight at once, across every batch and run.
    max_attempts
        Attempts per row, first included.
    clock
        The monotonic clock (injected in tests).
    on_truncated
        ``"keep"`` or ``"error"`` for an answer cut at ``max_tokens``.
    flex_fallback
        Send a flex request refused for capacity again on the default tier.
    spending_cap
        The job's spending cap, or ``None``.
    repair
        ``"resend"`` an invalid typed answer's request as it was, or ``"teach"``:
        send it with the answer and the validation error added (:func:`taught`).
    """

    def __init__(
        self,
        pool: Pool,
        shape: RequestShape,
        *,
        max_concurrency: int,
        max_attempts: int,
        clock: Callable[[], float],
        on_truncated: str = "keep",
        flex_fallback: bool = False,
        spending_cap: SpendingCap | None = None,
        repair: str = "resend",
    ) -> None:
        self.pool = pool
        self.repair = repair
        self.flex_fallback = flex_fallback
        self.shape = shape
        self.schema: OutputSchema | None = shape.schema
        self.max_attempts = max_attempts
        self.clock = clock
        self.on_truncated = on_truncated
        self.spending_cap = spending_cap
        #: requests on the wire now
        self.in_flight = 0
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._sending: dict[str, asyncio.Future[ChatResult]] = {}
        self._warned_max_tokens = False

    async def answer(
        self, run: Run, key: str, req: ChatRequest
    ) -> tuple[ChatResult, bool]:
        """Answer one request, sharing the answer with another batch sending it now.

        Also says whether the answer is another batch's (it keeps it in the cache; see
        :func:`_answered_elsewhere`).
        """
        earlier = await _answered_elsewhere(run, key, self._sending)
        if earlier is not None:
            run.stats.deduplicated += 1
            return dataclasses.replace(earlier, attempts=0), True
        future: asyncio.Future[ChatResult] = asyncio.get_running_loop().create_future()
        self._sending[key] = future
        try:
            result = await self._complete_one(run, req)
        except BaseException:
            future.cancel()  # rows waiting for it send it themselves
            raise
        finally:
            self._sending.pop(key, None)
        future.set_result(result)
        return result, False

    async def _complete_one(self, run: Run, req: ChatRequest) -> ChatResult:
        if run.fatal is not None:
            return ChatResult(exception=run.fatal)
        try:
            run.check_deadline(self.clock())
        except DeadlineExceededError as exc:
            return ChatResult(exception=exc, attempts=0)
        shape = self.shape
        body = shape.body(req)
        exact = self._token_budget_known()
        cost = shape.quota_tokens(req, exact=exact)
        sent = _Sent()
        if not exact:
            sent.inexact = req
        cap = self.spending_cap
        if cap is not None:  # admitted only if its worst case stays under the cap
            sent.cap = cap
            sent.worst = shape.worst_cost(req, cap)
            refused = await cap.reserve_waiting(sent.worst)
            if refused is not None:
                return ChatResult(exception=refused)
            sent.held = True
        answer: _Answer | None = None
        failure: AzureChatError | None = None
        try:
            try:  # the first attempt outside tenacity: the common case stays cheap
                answer = await self._attempt(run, body, cost, sent)
            except AzureChatError as first:
                failure = first
                if is_retryable(first) and self.max_attempts > 1:
                    answer, failure = await self._retry(run, body, cost, first, sent)
        finally:
            sent.spend(None if answer is None else answer[0])
        if failure is not None or answer is None:
            return self._failed(run, failure, sent.count, req)
        completion, parsed = answer
        st = run.stats
        st.add_usage(completion)
        if completion.model and st.model is None:
            st.model = completion.model
        return self._result(completion, parsed, sent.count)

    def _result(
        self, completion: Completion, parsed: dict[str, Any] | None, attempts: int
    ) -> ChatResult:
        """The row's result from its final answer (an error when the answer is not one)."""
        exception = answer_error(
            completion,
            typed=self.schema is not None,
            max_tokens=self.shape.max_tokens,
            on_truncated=self.on_truncated,
        )
        return completed(completion, parsed, attempts, exception)

    async def _attempt(
        self, run: Run, body: Mapping[str, Any], cost: int, sent: _Sent
    ) -> _Answer:
        """One attempt (429s waited out in :meth:`_send`), a typed answer validated.

        An answer that is not valid JSON for the schema raises
        :class:`SchemaValidationError` (retryable: it counts as an attempt). A refusal,
        a truncated answer and a filtered one are not validated: they are the row's
        error (see :meth:`_result`), not retried.
        """
        completion = await self._send(run, body, cost, sent)
        schema = self.schema
        if (
            schema is None
            or completion.refusal is not None
            or completion.finish_reason
            in ("length", REASONING_LENGTH, "content_filter")
        ):
            return completion, None
        try:
            if completion.content is None:
                raise SchemaMismatchError("the answer has no content", json_error=True)  # noqa: TRY301
            return completion, schema.parse(completion.content)
        except Exception as err:  # noqa: BLE001 - a user's validator may raise anything
            exc = invalid_answer(schema.name, err, completion.request_id)
            retried = isinstance(exc, SchemaValidationError)
            if self.repair == "teach" and retried:  # what the resend tells the model
                sent.invalid = (completion.content or "", str(err))
        sent.spend(completion)  # Azure charged it: a resend holds its worst case again
        st = run.stats
        # the attempt was answered and charged: its tokens count
        st.add_usage(completion)
        st.failures_by_kind[type(exc).__name__] += 1
        st.retries += retried
        logger.debug("attempt %d gave an invalid typed answer: %s", sent.count, exc)
        raise exc

    async def _retry(
        self,
        run: Run,
        body: Mapping[str, Any],
        cost: int,
        first: AzureChatError,
        sent: _Sent,
    ) -> tuple[_Answer | None, AzureChatError | None]:
        """Run the remaining attempts under the tenacity policy.

        The first attempt's failure is replayed as tenacity's attempt 1, so waits, stop
        and attempt numbers are exactly the policy's (429s, waited out in :meth:`_send`,
        are not attempts). An invalid typed answer is sent again at once (it is not the
        server's load). Returns the answer (or ``None``) and the last failure (or
        ``None``).
        """
        replay: list[AzureChatError] = [first]
        retrying = run.retrying
        retrying = (
            retrying.copy()
            if self.schema is None
            else retrying.copy(wait=_NoWaitAfterInvalid(retrying.wait))
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if replay:
                        raise replay.pop()
                    if run.fatal is not None:
                        raise run.fatal
                    run.check_deadline(self.clock())
                    sent.hold()  # after an invalid answer: the cap may refuse a resend
                    if sent.invalid is None:
                        return await self._attempt(run, body, cost, sent), None
                    told = taught(body, *sent.invalid)
                    sent.invalid = None
                    added = len(told["messages"][-1]["content"]) // 3 + 10
                    return await self._attempt(run, told, cost + added, sent), None
        except AzureChatError as exc:
            return None, exc
        return None, first  # pragma: no cover - tenacity re-raises or returns

    def _failed(
        self, run: Run, exc: AzureChatError | None, attempts: int, req: ChatRequest
    ) -> ChatResult:
        if exc is None:  # pragma: no cover - a completion or an error always comes back
            exc = AzureChatError("no answer and no error")
        if isinstance(
            exc, AuthenticationError | NotFoundError | UnsupportedParameterError
        ):
            if run.fatal is None:
                logger.info("stopping the run: %s", exc)  # raised to the caller
                run.fatal = exc
        elif isinstance(exc, ContextLengthError):
            estimate = self.shape.quota_tokens(req)
            exc = ContextLengthError(
                f"{exc} (estimated request tokens: {estimate}, max_tokens included)",
                status_code=exc.status_code,
                code=exc.code,
                body=exc.body,
                request_id=exc.request_id,
            )
        return ChatResult(exception=exc, attempts=attempts)

    def _recost(self, sent: _Sent) -> int:
        """A row's cost made exactly, now that a token budget is known.

        Its length estimate (made when none was) runs low against the server's count:
        a row that waited for a slot, or for admission, while the budget was learned
        is counted as the budget is.
        """
        assert sent.inexact is not None  # noqa: S101 - called only while inexact
        sent.cost = self.shape.quota_tokens(sent.inexact)
        sent.inexact = None
        return sent.cost

    def _token_budget_known(self) -> bool:
        return any(r.limiter.token_budget is not None for r in self.pool.routes)

    def _remaining_s(self, run: Run) -> float | None:
        if run.deadline is None:
            return None
        return run.deadline - self.clock()

    async def _send(
        self, run: Run, body: Mapping[str, Any], cost: int, sent: _Sent
    ) -> Completion:
        """One attempt; 429s are waited out here and do not count as attempts.

        The limiter pauses admission until the time a 429 names; the row is sent again
        then, until the run's deadline or :data:`MAX_RATE_LIMITED_S` of such waits.
        """
        waited = 0.0
        while True:
            try:
                return await self._send_once(run, body, cost, sent)
            except RateLimitError as exc:
                if (
                    self.flex_fallback
                    and body.get("service_tier") == "flex"
                    and is_capacity_refusal(exc)
                ):
                    # flex is busy: at once, on the default tier (at its price)
                    body = {**body, "service_tier": "default"}
                    run.stats.flex_fallbacks += 1
                    continue
                waited += exc.retry_after_s or 1.0
                if is_capacity_refusal(exc):  # this request waits; the others go on
                    await self.pool.sleep(exc.retry_after_s or 1.0)
                if waited > MAX_RATE_LIMITED_S:
                    raise
                run.check_deadline(self.clock())

    async def _send_once(
        self, run: Run, body: Mapping[str, Any], cost: int, sent: _Sent
    ) -> Completion:
        """One request, unless the run is stopping: it then admits nothing.

        A request of a stopping run (a first Ctrl-C) waits, unsent, until its batch is
        cancelled (when the requests in flight are answered, or the grace ends).
        """
        if run.interrupted is None:
            try:
                return await self._admitted(run, body, cost, sent)
            except _Stopping:
                pass
        await asyncio.get_running_loop().create_future()  # cancelled with its batch
        raise AssertionError  # pragma: no cover - the future never resolves

    async def _admitted(
        self, run: Run, body: Mapping[str, Any], cost: int, sent: _Sent
    ) -> Completion:
        st = run.stats
        pool = self.pool
        async with self._semaphore:
            if sent.cost is not None:
                cost = sent.cost
            route, ticket = await pool.acquire(
                cost,
                sent.failed_on,
                None if sent.inexact is None else functools.partial(self._recost, sent),
            )
            limiter = route.limiter
            try:
                if run.fatal is not None:  # it may have arrived while this one waited
                    raise run.fatal
                run.check_deadline(self.clock())
                if run.interrupted is not None:
                    raise _Stopping  # noqa: TRY301 - released just below
            except (AzureChatError, _Stopping):
                limiter.on_failure(ticket)  # not sent: release the admission
                pool.released(route)
                raise
            self.in_flight += 1
            run.request_started()
            st.requests += 1
            sent.count += 1
            per = st.by_deployment.get(route.name)
            if per is None:
                per = st.by_deployment[route.name] = collections.Counter()
            per["requests"] += 1
            if self.in_flight > st.peak_in_flight:
                st.peak_in_flight = self.in_flight
            try:
                completion = await route.transport.send(body, self._remaining_s(run))
            except AzureChatError as exc:
                st.failures_by_kind[type(exc).__name__] += 1
                per["failed_attempts"] += 1
                if is_retryable(exc):
                    st.retries += 1
                if isinstance(exc, RateLimitError) and is_capacity_refusal(exc):
                    st.capacity_refused += 1  # the tier was busy: no quota to learn
                    limiter.on_failure(ticket)
                elif isinstance(exc, RateLimitError):
                    st.rate_limited += 1
                    per["rate_limited"] += 1
                    limiter.on_rate_limited(
                        exc.retry_after_s, ticket, rate_limited_resource(exc)
                    )
                else:
                    limiter.on_failure(ticket)
                    sent.failed_on = route
                pool.done(route, exc)
                logger.debug("attempt failed on %s: %s", route.name, exc)
                raise
            except BaseException:
                limiter.on_failure(ticket)
                pool.released(route)
                raise
            finally:
                self.in_flight -= 1
                run.request_ended()
            pool.done(route)
            per["prompt_tokens"] += completion.prompt_tokens or 0
            per["completion_tokens"] += completion.completion_tokens or 0
            if completion.spilled_over:
                # another deployment answered: its x-ratelimit-* are not this one's
                per["spilled_over"] += 1
                completion.remaining_requests = completion.remaining_tokens = None
                completion.limit_requests = completion.limit_tokens = None
            if (
                completion.remaining_tokens is not None
                and self.shape.max_tokens is None
                and not self._warned_max_tokens
            ):
                self._warned_max_tokens = True
                logger.warning(
                    "the deployment limits tokens per minute and max_tokens is not set: "
                    "Azure then counts %d tokens per request against the quota for the "
                    "answer alone; set max_tokens",
                    DEFAULT_RESERVED_COMPLETION_TOKENS,
                )
            limiter.on_success(
                ticket,
                completion.remaining_requests,
                completion.remaining_tokens,
                completion.limit_requests,
                completion.limit_tokens,
                charged_tokens=(
                    None
                    if completion.prompt_tokens is None
                    else completion.prompt_tokens + self.shape.reserved
                ),
            )
            return completion


class _Stopping(Exception):  # noqa: N818 - not an error: the run is stopping
    """The run stopped admitting requests while this one waited for admission."""


#: An answer and its typed value (``None`` without a schema).
_Answer = tuple[Completion, dict[str, Any] | None]


def _said(request_id: str | None) -> str:
    return f" (request id {request_id})" if request_id else ""


def invalid_answer(
    name: str, err: Exception, request_id: str | None
) -> SchemaValidationError | AnswerConversionError:
    """The attempt's error for an answer that is not valid for the schema ``name``.

    The message names where and what did not validate, never the answer's values. An
    answer that validated but whose model dumps what the column cannot take is the
    model's doing: :class:`AnswerConversionError`, not retried.
    """
    said = _said(request_id)
    if isinstance(err, DumpMismatchError):
        return AnswerConversionError(
            f"the answer validated against {name!r}, but the model's dump does not "
            f"fit the column its schema gives ({err} converting it): a "
            f"field_serializer or model_serializer that changes a value's type does "
            f"this; not retried, as a resend dumps the same way{said}",
            request_id=request_id,
        )
    if not isinstance(err, SchemaMismatchError):
        problem = f"{type(err).__name__} raised while validating"
        return SchemaValidationError(
            f"the answer could not be validated against the schema {name!r}: "
            f"{problem}{said}",
            problem=problem,
            request_id=request_id,
        )
    if err.json_error:
        return SchemaValidationError(
            f"the answer is not valid JSON for the schema {name!r} "
            f"({err.safe_problem}){said}",
            problem=err.safe_problem,
            request_id=request_id,
        )
    where = err.path or "<root>"
    return SchemaValidationError(
        f"the answer does not match the schema {name!r}: {where}: "
        f"{err.safe_problem}{said}",
        path=err.path,
        problem=err.safe_problem,
        request_id=request_id,
    )


class _NoWaitAfterInvalid(wait_base):
    """No wait after an invalid typed answer; else the policy's own wait."""

    def __init__(
        self, fallback: Callable[[tenacity.RetryCallState], float | int]
    ) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        """The delay before the next attempt."""
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, SchemaValidationError):
            return 0.0
        return float(self.fallback(retry_state))


@dataclasses.dataclass(slots=True)
class _Sent:
    """One row's requests so far, its last failed route, its hold under the cap.

    ``count`` includes 429s. Azure charges every answered attempt, an invalid typed
    answer sent again too: the hold (the worst case of one attempt) is settled with
    each answer's cost, and taken again before a resend.
    """

    count: int = 0
    failed_on: Route | None = None
    #: the row, while its quota cost is a length estimate (no token budget known
    #: when it was made): made again exactly once a budget is known
    inexact: ChatRequest | None = None
    cost: int | None = None
    cap: SpendingCap | None = None
    worst: float = 0.0
    held: bool = False
    #: ``repair="teach"``: the last invalid answer and why (the next attempt says so)
    invalid: tuple[str, str] | None = None

    def hold(self) -> None:
        """Hold the worst case of the next attempt (no-op if held or no cap).

        Raises :class:`SpendingCapError` when it does not fit under the cap.
        """
        if self.cap is None or self.held:
            return
        refused = self.cap.reserve(self.worst)
        if refused is not None:
            raise refused
        self.held = True

    def spend(self, completion: Completion | None) -> None:
        """Release the hold, spending what ``completion`` cost (``None``: nothing)."""
        cap = self.cap
        if cap is None:
            return
        spent = (
            0.0
            if completion is None
            else cap.cost(
                completion.prompt_tokens or 0, completion.completion_tokens or 0
            )
        )
        if self.held or spent:
            cap.settle(self.worst if self.held else 0.0, spent)
        self.held = False


#: The user turn a taught resend adds after the invalid answer (``repair="teach"``).
TEACH_PROMPT = (
    "Your answer above is not valid for the required JSON schema: {error}. "
    "Answer the request again, with JSON that follows the schema exactly."
)


def taught(body: Mapping[str, Any], answer: str, error: str) -> dict[str, Any]:
    """``body`` with the invalid ``answer`` and its validation ``error`` added.

    The resend of ``repair="teach"``: the answer as an assistant turn, then a user
    turn (:data:`TEACH_PROMPT`) naming what did not validate. The row's cache key
    stays its original request's.

    Examples
    --------
    >>> body = {"messages": [{"role": "user", "content": "hi"}]}
    >>> [m["role"] for m in taught(body, '{"a": 1}', "a: not a string")["messages"]]
    ['user', 'assistant', 'user']
    """
    turns = [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": TEACH_PROMPT.format(error=error)},
    ]
    return {**body, "messages": [*body["messages"], *turns]}


def answer_error(
    completion: Completion, *, typed: bool, max_tokens: Any, on_truncated: str
) -> AzureChatError | None:
    """Why an answer Azure sent is not the row's answer (``None``: it is).

    A filtered answer is a :class:`ContentFilterError`, a refusal a
    :class:`RefusalError`, a truncated typed answer (or any truncated one with
    ``on_truncated="error"``) a :class:`TruncatedError`. Shared by the online and the
    batch paths.
    """
    rid = completion.request_id
    if completion.finish_reason == "content_filter":
        shown = ", ".join(completion.filtered) or "unspecified"
        return ContentFilterError(
            f"the answer was {'cut' if completion.content else 'withheld'} by Azure's "
            f"output content filter (categories: {shown})",
            status_code=200,
            categories=completion.filtered,
            request_id=rid,
        )
    if completion.refusal is not None:
        return RefusalError(
            "the model refused to answer (message.refusal is set; the refusal's "
            f"text is not shown here){_said(rid)}",
            request_id=rid,
        )
    if completion.finish_reason == REASONING_LENGTH and (
        typed or on_truncated == "error"
    ):
        return TruncatedError(
            f"no answer: reasoning used the whole budget (max_completion_tokens="
            f"{max_tokens}, {completion.reasoning_tokens} reasoning tokens); raise "
            f"max_completion_tokens or lower reasoning_effort{_said(rid)}"
        )
    if completion.finish_reason == "length" and typed:
        return TruncatedError(
            f"the typed answer was cut at max_tokens={max_tokens} "
            f"(finish_reason='length'), so its JSON is incomplete; raise "
            f"max_tokens{_said(rid)}"
        )
    if completion.finish_reason == "length" and on_truncated == "error":
        return TruncatedError(
            f"the answer was cut at max_tokens={max_tokens} "
            "(finish_reason='length'; raise max_tokens, or on_truncated='keep')"
        )
    return None


def completed(
    completion: Completion,
    parsed: dict[str, Any] | None,
    attempts: int,
    exception: AzureChatError | None,
    *,
    deployment: str | None = None,
) -> ChatResult:
    """A row's result from an answer: its content, usage and provenance, or the error."""
    ok = exception is None
    return ChatResult(
        content=completion.content if ok else None,
        finish_reason=completion.finish_reason,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        attempts=attempts,
        exception=exception,
        parsed=parsed if ok else None,
        request_id=completion.request_id,
        model=completion.model,
        system_fingerprint=completion.system_fingerprint,
        deployment=deployment or completion.deployment,
        latency_ms=completion.latency_ms,
        content_filter=completion.filtered,
        response_id=completion.response_id,
        reasoning_tokens=completion.reasoning_tokens,
        cached_tokens=completion.cached_tokens,
        service_tier=completion.service_tier,
        prompt_filter=completion.prompt_filter,
        logprobs=completion.logprobs if ok else None,
    )
