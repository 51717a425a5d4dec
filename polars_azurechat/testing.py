"""Answer requests in memory, for tests: no server, no sockets, no waiting.

:class:`MemoryTransport` takes the place of the HTTP transport (the pattern of httpx's
``MockTransport``): each request the engine sends is handed to a function of yours,
which returns the status, headers and JSON body the server would have. The answer is
then read by the very code that reads a real HTTP answer, so statuses become the
package's errors (a 429 a :class:`~polars_azurechat.errors.RateLimitError` with its
``retry-after``, a 400 with ``content_filter`` a
:class:`~polars_azurechat.errors.ContentFilterError`, ...), and usage,
``finish_reason`` and the ``x-ratelimit-*`` headers reach the engine as they would.
The transport also counts what it was sent: every request in order, and the most
requests that were ever in flight at once.

This module is not imported by ``import polars_azurechat``.

Examples
--------
A handler that answers every question in capitals, and the engine that sends to it
(:class:`~polars_azurechat.Completer` does not take a transport yet: tests drive the
engine directly):

>>> from polars_azurechat.engine.core import ChatEngine
>>> from polars_azurechat._types import ChatRequest
>>> from polars_azurechat.testing import MemoryTransport, chat_completion
>>> def handler(request):
...     return chat_completion(request.prompt.upper(), prompt_tokens=3)
>>> transport = MemoryTransport(handler)
>>> engine = ChatEngine(transport, params={"max_tokens": 5})
>>> rows = [ChatRequest([{"role": "user", "content": q}]) for q in ("hi", "yo", "hi")]
>>> [r.content for r in engine.run(rows)]
['HI', 'YO', 'HI']
>>> len(transport.requests)  # the repeated question went once
2
>>> transport.requests[0].body
{'max_tokens': 5, 'messages': [{'role': 'user', 'content': 'hi'}]}
>>> engine.close()

An error status is the package's error, read from Azure's error body:

>>> import asyncio
>>> from polars_azurechat.testing import error_response
>>> refusing = MemoryTransport(
...     lambda request: error_response(429, "slow down", headers={"retry-after": "2"})
... )
>>> try:
...     asyncio.run(refusing.send({"messages": []}))
... except Exception as exc:
...     print(type(exc).__name__, exc.retry_after_s)
RateLimitError 2.0
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from polars_azurechat.transport.http import Api, Completion, read_answer
from polars_azurechat.transport.responses import (
    parse_response,
    responses_input,
    responses_params,
)

__all__ = [
    "Handler",
    "MemoryRequest",
    "MemoryResponse",
    "MemoryTransport",
    "chat_completion",
    "error_response",
    "response_answer",
]


@dataclasses.dataclass(frozen=True, slots=True)
class MemoryRequest:
    """One request as a server would receive it.

    Attributes
    ----------
    body
        The JSON body, decoded (a copy: changing it changes nothing in the engine).
    deployment
        The deployment named in the URL.
    headers
        The request's headers (lower-case names).
    timeout_s
        The time bound the engine gave this attempt (``None``: the transport's own).
    """

    body: dict[str, Any]
    deployment: str
    headers: Mapping[str, str]
    timeout_s: float | None

    @property
    def prompt(self) -> str:
        """The last message's text (``""`` when it is not a string)."""
        messages = self.body.get("messages") or self.body.get("input") or [{}]
        if isinstance(messages, str):  # the Responses API's input may be a string
            return messages
        content = messages[-1].get("content")
        return content if isinstance(content, str) else ""


@dataclasses.dataclass(frozen=True, slots=True)
class MemoryResponse:
    """What the handler answers: a status, headers and a JSON body.

    Attributes
    ----------
    status
        The HTTP status.
    json
        The body, encoded as JSON.
    headers
        Response headers, such as ``retry-after`` or ``x-ratelimit-remaining-tokens``
        (names in any case).
    content
        Raw body bytes sent instead of ``json`` (for a body that is not JSON).
    """

    status: int = 200
    json: Any = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    content: bytes | None = None


#: A handler: one request in, one answer out (a function or a coroutine function).
#: It may also raise :class:`~polars_azurechat.errors.APITimeoutError` or
#: :class:`~polars_azurechat.errors.APIConnectionError`, as a network would.
Handler = Callable[[MemoryRequest], "MemoryResponse | Awaitable[MemoryResponse]"]


def chat_completion(
    content: str | None,
    *,
    finish_reason: str = "stop",
    prompt_tokens: int = 10,
    completion_tokens: int | None = None,
    model: str = "gpt-4o-mini",
    refusal: str | None = None,
    headers: Mapping[str, str] | None = None,
    reasoning_tokens: int | None = None,
    cached_tokens: int | None = None,
) -> MemoryResponse:
    """A 200 answer in Azure's chat-completion shape, with one choice.

    Parameters
    ----------
    content
        The answer's text.
    finish_reason
        ``"stop"``, ``"length"`` (cut at ``max_tokens``) or ``"content_filter"``.
    prompt_tokens, completion_tokens
        The usage reported (``completion_tokens`` defaults to the words of ``content``).
    model
        The model named in the body.
    refusal
        ``message.refusal`` (a refused structured-output request).
    headers
        Response headers.
    reasoning_tokens, cached_tokens
        ``usage.completion_tokens_details.reasoning_tokens`` (added to the default
        ``completion_tokens``) and ``usage.prompt_tokens_details.cached_tokens``.

    Returns
    -------
    MemoryResponse
        The answer.

    Examples
    --------
    >>> chat_completion("4").json["choices"][0]["message"]
    {'role': 'assistant', 'content': '4'}
    """
    if completion_tokens is None:
        completion_tokens = len((content or "").split()) + (reasoning_tokens or 0)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    if refusal is not None:
        message["refusal"] = refusal
    body = {
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage,
    }
    return MemoryResponse(200, body, dict(headers or {}))


def response_answer(
    content: str | None,
    *,
    status: str = "completed",
    incomplete_reason: str | None = None,
    input_tokens: int = 10,
    output_tokens: int | None = None,
    reasoning_tokens: int = 0,
    model: str = "gpt-5-mini",
    headers: Mapping[str, str] | None = None,
) -> MemoryResponse:
    """A 200 answer in the Responses API's shape (``object: "response"``).

    Parameters
    ----------
    content
        The ``output_text`` of its message (``None``: no message item).
    status, incomplete_reason
        ``"completed"``, or ``"incomplete"`` with ``incomplete_details.reason``
        (``"max_output_tokens"``, ``"content_filter"``).
    input_tokens, output_tokens, reasoning_tokens
        The usage reported (``output_tokens`` defaults to the words of ``content``
        plus ``reasoning_tokens``).
    model
        The model named in the body.
    headers
        Response headers.

    Examples
    --------
    >>> response_answer("4").json["output"][0]["content"][0]["text"]
    '4'
    """
    if output_tokens is None:
        output_tokens = len((content or "").split()) + reasoning_tokens
    output: list[dict[str, Any]] = []
    if content is not None:
        output.append(
            {
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {"type": "output_text", "text": content, "annotations": []}
                ],
            }
        )
    body = {
        "id": "resp_memory",
        "object": "response",
        "status": status,
        "incomplete_details": (
            None if incomplete_reason is None else {"reason": incomplete_reason}
        ),
        "model": model,
        "output": output,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens,
        },
    }
    return MemoryResponse(200, body, dict(headers or {}))


def error_response(
    status: int,
    message: str = "error",
    *,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    **error: Any,
) -> MemoryResponse:
    """An error answer in Azure's shape: ``{"error": {"code", "message", ...}}``.

    Parameters
    ----------
    status
        The HTTP status (429, 500, ...).
    message
        The error's message.
    code
        The error's code (``"content_filter"``, ``"context_length_exceeded"``, ...);
        defaults to the status.
    headers
        Response headers (``retry-after``, ``retry-after-ms``, ...).
    **error
        More fields of the error object (``innererror=...``).

    Returns
    -------
    MemoryResponse
        The answer.

    Examples
    --------
    >>> error_response(500, "boom").json
    {'error': {'code': '500', 'message': 'boom'}}
    """
    body = {"error": {"code": code or str(status), "message": message, **error}}
    return MemoryResponse(status, body, dict(headers or {}))


class MemoryTransport:
    """A transport that hands every request to ``handler`` and reads its answer.

    Parameters
    ----------
    handler
        Called with a :class:`MemoryRequest` for each request, on the event loop; a
        coroutine function may await (other requests then proceed: that is how
        requests come to be in flight together).
    deployment
        The deployment the requests are for.
    api_version
        The API version (``"v1"``: the v1 API).
    endpoint
        The endpoint named in the cache key and in error messages.
    api_key
        The ``api-key`` header the handler sees.
    api
        ``"responses"``: the handler sees the Responses API's body (``input``,
        ``max_output_tokens``, ...) and answers in its shape (:func:`response_answer`).

    Attributes
    ----------
    requests
        Every request received, in order.
    in_flight, peak_in_flight
        Requests inside the handler now, and the most there ever were at once.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        deployment: str = "gpt-4o-mini",
        api_version: str = "2024-10-21",
        endpoint: str = "https://memory.openai.azure.com",
        api_key: str = "memory-key",
        api: Api = "chat",
    ) -> None:
        self.handler = handler
        self.deployment = deployment
        self.api = api
        self.api_version = "v1" if api == "responses" else api_version
        self.endpoint = endpoint.rstrip("/")
        self._headers = {"content-type": "application/json", "api-key": api_key}
        self.requests: list[MemoryRequest] = []
        self.in_flight = 0
        self.peak_in_flight = 0

    @property
    def endpoint_host(self) -> str:
        """Host part of the endpoint."""
        return self.endpoint.split("://", 1)[-1].split("/", 1)[0]

    async def open(self, limit: int) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def send(
        self, body: Mapping[str, Any], timeout_s: float | None = None
    ) -> Completion:
        """Hand the request to the handler; return its answer as a real one would be."""
        wire: Mapping[str, Any] = body
        if self.api == "responses":
            fields = {k: v for k, v in body.items() if k != "messages"}
            wire = {
                "model": self.deployment,
                **responses_params(fields),
                "input": responses_input(body.get("messages") or []),
            }
        request = MemoryRequest(
            json.loads(json.dumps(wire)), self.deployment, self._headers, timeout_s
        )
        self.requests.append(request)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        started = time.perf_counter()
        try:
            answer = self.handler(request)
            if inspect.isawaitable(answer):
                answer = await answer
        finally:
            self.in_flight -= 1
        latency_ms = (time.perf_counter() - started) * 1000
        if not isinstance(answer, MemoryResponse):
            msg = f"the handler returned {type(answer).__name__}, not a MemoryResponse"
            raise TypeError(msg)
        raw = answer.content
        if raw is None:
            raw = json.dumps(answer.json).encode()
        headers = {name.lower(): value for name, value in answer.headers.items()}
        completion = read_answer(
            answer.status,
            headers,
            raw,
            self.deployment,
            self.endpoint_host,
            parse_response if self.api == "responses" else None,
        )
        completion.latency_ms = round(latency_ms, 3)
        return completion
