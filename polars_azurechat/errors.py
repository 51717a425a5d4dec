"""Exceptions raised by polars_azurechat.

Every exception derives from one root, so ``except AzureChatError`` catches them all::

    AzureChatError
    ├── ConfigurationError          a setting is missing or invalid (names the variable)
    │   ├── CacheError              the cache file cannot be used (names the path and why)
    │   └── LimiterError            the shared limiter's Redis cannot be reached (names it)
    ├── RequestError                the request did not get a usable answer
    │   ├── APIConnectionError      connection refused, reset or dropped
    │   ├── APITimeoutError         no answer within ``timeout_s``
    │   ├── MalformedResponseError  a 200 whose body is not a chat completion
    │   └── SchemaValidationError   a typed answer is not valid JSON for the schema (retried)
    ├── APIStatusError              Azure answered with an error status
    │   ├── BadRequestError         400 (not retried)
    │   │   ├── ContentFilterError      400 ``content_filter`` (or an answer the output filter cut)
    │   │   ├── ContextLengthError      400 ``context_length_exceeded``
    │   │   └── UnsupportedParameterError  400 a parameter the deployment refuses (stops the run)
    │   ├── AuthenticationError     401 / 403: wrong key or no access (stops the run)
    │   ├── NotFoundError           404: wrong deployment, endpoint or api-version (stops the run)
    │   │   └── RedirectError           3xx: the endpoint sends elsewhere; never followed (stops the run)
    │   ├── RateLimitError          429, with ``retry_after_s``
    │   └── ServerError             5xx
    │       └── PoolUnavailableError    every deployment of a pool is failing (circuits open)
    ├── InputError                  one row's input cannot be sent (empty list, bad role, ...)
    ├── TruncatedError              the answer was cut at ``max_tokens`` (``on_truncated="error"``,
    │                               or always for a typed answer)
    ├── RefusalError                the model refused to give a typed answer (``message.refusal``)
    ├── AnswerConversionError       a typed answer validated, but its model's dump does not fit
    │                               the column (a serializer's doing; not retried)
    ├── DeadlineExceededError       the run's ``deadline_s`` passed before the row was answered
    ├── SpendingCapError            sending the row could take the job past ``max_cost_usd``
    ├── BatchIncompleteError        (batch mode) the row's batch expired or was cancelled first
    ├── BatchFailedError            (batch mode) the row's batch failed (validation, quota, ...)
    └── CompletionFailed            (also an ``ExceptionGroup``) rows failed with ``on_error="raise"``

``CompletionFailed`` gathers one :class:`RowError` per failed row; each has ``row_index`` and its
cause as ``__cause__``. Messages never contain the API key or prompt text.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any, Self

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AnswerConversionError",
    "AuthenticationError",
    "AzureChatError",
    "BadRequestError",
    "BatchFailedError",
    "BatchIncompleteError",
    "CacheError",
    "CompletionFailed",
    "ConfigurationError",
    "ContentFilterError",
    "ContextLengthError",
    "DeadlineExceededError",
    "InputError",
    "LimiterError",
    "MalformedResponseError",
    "NotFoundError",
    "PoolUnavailableError",
    "RateLimitError",
    "RedirectError",
    "RefusalError",
    "RequestError",
    "RowError",
    "SchemaValidationError",
    "ServerError",
    "SpendingCapError",
    "TruncatedError",
    "UnsupportedParameterError",
]


class AzureChatError(Exception):
    """Root of every error raised by polars_azurechat."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # Polars re-creates an exception raised inside an expression as
        # ``type(exc)(message + context)``, which would lose our attributes: copy them
        # back from the original (subclasses set their attributes before this runs).
        if len(args) == 1 and isinstance(args[0], str):
            original = _originals.find(args[0], type(self))
            if original is not None and original is not self:
                self.__dict__.update(original.__dict__)
                self.__cause__ = original.__cause__


class _Originals:
    """Errors raised through Polars and still alive, so Polars' copies find them.

    Weak: it keeps nothing alive (the job's last run holds the error it raised), and
    messages carry Azure's request id, so two errors alike but for it stay apart.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: weakref.WeakValueDictionary[int, BaseException] = (
            weakref.WeakValueDictionary()
        )

    def remember(self, exc: BaseException) -> None:
        with self._lock:
            self._items[id(exc)] = exc

    def find(self, message: str, cls: type) -> Any:
        with self._lock:
            items = list(self._items.values())
        best = None
        for exc in items:
            text = exc.message if isinstance(exc, BaseExceptionGroup) else str(exc)
            if (
                type(exc) is cls
                and text
                and message.startswith(text)
                and (best is None or len(text) > len(str(best)))
            ):
                best = exc
        return best


_originals = _Originals()


def remember_for_polars(exc: BaseException) -> None:
    """Record ``exc`` so that the copy Polars makes of it keeps its attributes."""
    _originals.remember(exc)


class ConfigurationError(AzureChatError, ValueError):
    """A required setting is missing or invalid; the message names what to set."""


class CacheError(ConfigurationError):
    """The cache file cannot be used: the message names the path and the problem."""


class LimiterError(ConfigurationError):
    """The Redis server of ``limiter="redis://..."`` cannot be reached.

    Raised when the job is built, before any request; during a run, the rows that
    could not be admitted fail with it (no request goes out unaccounted for, which
    could overrun the shared quota). The message names the server, never its password.
    """


class InputError(AzureChatError, ValueError):
    """One row's messages cannot be sent (empty list, unknown role, null content, ...)."""


class RequestError(AzureChatError):
    """The request got no usable answer from the server."""


class APIConnectionError(RequestError):
    """The connection failed: refused, reset, or dropped before the answer arrived."""


class APITimeoutError(RequestError):
    """The server did not answer within ``timeout_s``."""


class MalformedResponseError(RequestError):
    """The server answered 200 with a body that is not a chat completion."""


class SchemaValidationError(RequestError):
    """A typed answer (``response_format=...``) is not valid JSON, or breaks the schema.

    Retried like a malformed response (it counts as an attempt; ``max_attempts`` bounds
    it, and no backoff is waited); the row fails with it once attempts run out. The
    message names where and what did not validate (``"priority: a string is not one of
    ['low', 'high']"``), never the answer's text.

    Attributes
    ----------
    path
        Where the first problem is (``"customer.address.city"``, ``"tags[1]"``), ``""``
        for the whole answer.
    problem
        What did not validate there, without the answer's values.
    request_id
        Azure's request id of the answer, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        problem: str = "",
        request_id: str | None = None,
    ) -> None:
        self.path = path
        self.problem = problem
        self.request_id = request_id
        super().__init__(message)


class AnswerConversionError(AzureChatError):
    """A typed answer validated, but its pydantic model's dump does not fit the column.

    The model's own ``field_serializer`` or ``model_serializer`` dumps a value of
    another type than the schema says (a number as a string, ...). The answer was
    right and a resend dumps the same way, so it is not retried: change the model.
    ``request_id`` is Azure's id of the answer.
    """

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        self.request_id = request_id
        super().__init__(message)


class APIStatusError(AzureChatError):
    """Azure answered with an error status.

    Attributes
    ----------
    status_code
        The HTTP status.
    request_id
        Azure's ``apim-request-id`` / ``x-request-id`` when present.
    code
        Azure's error code (``"content_filter"``, ``"DeploymentNotFound"``, ...) when present.
    body
        The decoded JSON error body (Azure's own words; no secrets are in it).
    retry_after_s
        The delay the server asked for (``retry-after-ms`` / ``Retry-After``), if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 0,
        request_id: str | None = None,
        code: str | None = None,
        body: Any = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.retry_after_s = retry_after_s
        self.status_code = status_code
        self.request_id = request_id
        self.code = code
        self.body = body
        super().__init__(message)


class BadRequestError(APIStatusError):
    """400: Azure refused the request as invalid. Retrying cannot help."""


class UnsupportedParameterError(BadRequestError):
    """400 a parameter or value the deployment refuses, whatever the row: the run stops.

    Azure's ``unsupported_parameter`` / ``unsupported_value`` (a reasoning model given
    ``max_tokens``, ``temperature``, ``logprobs``, ...) and ``OperationNotSupported``
    (a deployment that does not do chat completions), and any 400 whose ``param`` is a
    body field every request of the job sends (``seed``, ``response_format``: not the
    messages). Every row would repeat it, so the first such answer stops the run, as a
    401 does; ``param`` names the parameter
    (``None`` when Azure does not) and the message says what to change.
    """

    def __init__(self, message: str, *, param: str | None = None, **kw: Any) -> None:
        self.param = param  # before: Polars' copy takes the original's (see the root)
        super().__init__(message, **kw)


class ContentFilterError(BadRequestError):
    """400 ``content_filter``: the prompt triggered Azure's content management policy.

    ``categories`` lists the filter categories Azure flagged (``"hate"``, ``"violence"``, ...).
    """

    def __init__(
        self, message: str, *, categories: Sequence[str] = (), **kw: Any
    ) -> None:
        self.categories = tuple(categories)
        super().__init__(message, **kw)


class ContextLengthError(BadRequestError):
    """400 ``context_length_exceeded``: the messages plus ``max_tokens`` exceed the context."""


class AuthenticationError(APIStatusError):
    """401 / 403: the key or token is wrong, or has no access. The whole run stops."""


class NotFoundError(APIStatusError):
    """404: the deployment, endpoint or api-version does not exist. The whole run stops."""


class RedirectError(NotFoundError):
    """3xx: the endpoint answered with a redirect, which is never followed.

    Following it would send the key (an ``api-key`` header) and every prompt to the
    host it names. The message names that host only (not its path or query); the
    whole run stops, as for a wrong endpoint.

    Attributes
    ----------
    location_host
        The host the redirect named (``host[:port]``), or ``None`` when it named none.
    """

    def __init__(
        self, message: str, *, location_host: str | None = None, **kw: Any
    ) -> None:
        self.location_host = location_host
        super().__init__(message, **kw)


class RateLimitError(APIStatusError):
    """429: the deployment's quota is exhausted for now; ``retry_after_s`` says how long."""


class ServerError(APIStatusError):
    """5xx (or 408 / 409): a transient server-side failure; retried."""


class PoolUnavailableError(ServerError):
    """Every deployment of a pool has its circuit open; retried as a server error.

    The message names each deployment and its last failure.
    """


class TruncatedError(AzureChatError):
    """The answer was cut at ``max_tokens``; ``on_truncated="error"`` makes it an error."""


class RefusalError(AzureChatError):
    """The model refused to answer a typed request (``message.refusal`` was set).

    Not retried (the same request is refused again) and never cached. The refusal's
    text is not in the message (it may quote the prompt); ``request_id`` names the
    answer.
    """

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        self.request_id = request_id
        super().__init__(message)


class DeadlineExceededError(AzureChatError):
    """The run's ``deadline_s`` passed before this row got an answer."""


class SpendingCapError(AzureChatError):
    """The row was not sent: its worst-case cost would take the job past ``max_cost_usd``.

    The worst case is the prompt's estimated tokens plus ``max_tokens`` at the price
    table (the batch price in batch mode). The row is not cached: a rerun with a higher
    cap sends it (and only the rows like it).

    Attributes
    ----------
    max_cost_usd
        The cap.
    worst_case_usd
        The row's worst-case cost.
    committed_usd
        What the job had spent or held for requests in flight when the row was refused.
    """

    def __init__(
        self,
        message: str,
        *,
        max_cost_usd: float | None = None,
        worst_case_usd: float | None = None,
        committed_usd: float | None = None,
    ) -> None:
        self.max_cost_usd = max_cost_usd
        self.worst_case_usd = worst_case_usd
        self.committed_usd = committed_usd
        super().__init__(message)


class BatchIncompleteError(AzureChatError):
    """(Batch mode) The row's batch expired or was cancelled before the row was answered.

    ``batch_fallback="online"`` sends such rows online instead.

    Attributes
    ----------
    batch_id
        The batch.
    status
        ``"expired"`` or ``"cancelled"``.
    """

    def __init__(
        self, message: str, *, batch_id: str | None = None, status: str | None = None
    ) -> None:
        self.batch_id = batch_id
        self.status = status
        super().__init__(message)


class BatchFailedError(AzureChatError):
    """(Batch mode) The row's batch failed, or its line failed without an answer.

    A batch fails validation (a bad line, a file too large, the enqueued-token quota)
    or its input file cannot be used. ``batch_fallback="online"`` sends such rows
    online instead.

    Attributes
    ----------
    batch_id
        The batch, if one was created.
    code
        Azure's error code (``"model_mismatch"``, ``"token_limit_exceeded"``, ...).
    line
        The line of the input file Azure named, if any (1-based).
    """

    def __init__(
        self,
        message: str,
        *,
        batch_id: str | None = None,
        code: str | None = None,
        line: int | None = None,
    ) -> None:
        self.batch_id = batch_id
        self.code = code
        self.line = line
        super().__init__(message)


class RowError(AzureChatError):
    """The failure of one row; ``row_index`` is its position in the batch, cause in ``__cause__``."""

    def __init__(self, row_index: int, reason: str) -> None:
        self.row_index = row_index
        self.reason = reason
        super().__init__(f"row {row_index}: {reason}")


class CompletionFailed(ExceptionGroup[RowError], AzureChatError):  # noqa: N818
    """Some rows failed with ``on_error="raise"``; every row ran first.

    It is an ``ExceptionGroup`` of :class:`RowError`, so both ``except AzureChatError`` and
    ``except* RowError`` catch it. ``row_indices`` lists the failed rows, in order.
    """

    def __new__(cls, message: str, errors: Sequence[RowError] | None = None) -> Self:
        """Build the group (``errors`` is recovered when Polars re-creates it)."""
        return super().__new__(cls, message, _group_errors(message, errors))

    def __init__(self, message: str, errors: Sequence[RowError] | None = None) -> None:
        super().__init__(message, _group_errors(message, errors))

    @property
    def row_indices(self) -> list[int]:
        """Indices of the failed rows, in order."""
        return [e.row_index for e in self.exceptions if isinstance(e, RowError)]

    def derive(self, excs: Sequence[RowError]) -> CompletionFailed:  # type: ignore[override]
        """Build a new group of the same class (used by ``except*`` splitting)."""
        return CompletionFailed(self.message, excs)


def _group_errors(message: str, errors: Sequence[RowError] | None) -> list[RowError]:
    if errors is not None:
        return list(errors)
    original = _originals.find(
        message, CompletionFailed
    )  # Polars' copy: see AzureChatError
    if original is not None:
        return list(original.exceptions)
    return [RowError(-1, "unknown row")]
