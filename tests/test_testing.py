"""``polars_azurechat.testing.MemoryTransport`` reads answers as the HTTP transport does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from polars_azurechat.errors import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    ContentFilterError,
    ContextLengthError,
    MalformedResponseError,
    NotFoundError,
    RateLimitError,
    ServerError,
)
from polars_azurechat.testing import (
    MemoryRequest,
    MemoryResponse,
    MemoryTransport,
    chat_completion,
    error_response,
)
from polars_azurechat.transport.http import Completion

BODY = {"max_tokens": 5, "messages": [{"role": "user", "content": "What is 1 + 1?"}]}


def _send(response: MemoryResponse) -> Completion:
    transport = MemoryTransport(lambda request: response, deployment="d1")
    return asyncio.run(transport.send(BODY))


def test_an_answer_carries_usage_finish_reason_and_the_quota_headers() -> None:
    headers = {
        "X-RateLimit-Remaining-Requests": "99",
        "x-ratelimit-remaining-tokens": "9000",
        "x-ratelimit-limit-tokens": "10000",
        "apim-request-id": "req-1",
    }
    completion = _send(
        chat_completion(
            "2",
            finish_reason="length",
            prompt_tokens=7,
            completion_tokens=1,
            headers=headers,
        )
    )
    assert completion.content == "2" and completion.finish_reason == "length"
    assert (completion.prompt_tokens, completion.completion_tokens) == (7, 1)
    assert completion.remaining_requests == 99
    assert completion.remaining_tokens == 9000 and completion.limit_tokens == 10000
    assert completion.request_id == "req-1" and completion.deployment == "d1"
    assert completion.model == "gpt-4o-mini"


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (error_response(401), AuthenticationError),
        (error_response(403), AuthenticationError),
        (error_response(404), NotFoundError),
        (error_response(400, "bad"), BadRequestError),
        (error_response(400, code="content_filter"), ContentFilterError),
        (error_response(400, code="context_length_exceeded"), ContextLengthError),
        (error_response(500), ServerError),
        (error_response(503), ServerError),
        (MemoryResponse(200, content=b"<html>"), MalformedResponseError),
        (MemoryResponse(200, {"choices": []}), MalformedResponseError),
    ],
)
def test_statuses_are_the_package_errors(
    response: MemoryResponse, error: type[Exception]
) -> None:
    with pytest.raises(error):
        _send(response)


def test_a_429_names_its_wait() -> None:
    with pytest.raises(RateLimitError) as caught:
        _send(error_response(429, headers={"Retry-After-Ms": "1500"}))
    assert caught.value.retry_after_s == 1.5
    assert caught.value.status_code == 429


def test_the_handler_sees_a_copy_of_the_body_and_may_fail_like_a_network() -> None:
    seen: list[MemoryRequest] = []
    prompts: list[str] = []

    def handler(request: MemoryRequest) -> MemoryResponse:
        seen.append(request)
        prompts.append(request.prompt)
        request.body["messages"].clear()  # changes nothing in the caller's body
        raise APIConnectionError("connection reset")

    transport = MemoryTransport(handler, api_key="k")
    with pytest.raises(APIConnectionError):
        asyncio.run(transport.send(BODY, timeout_s=2.0))
    assert BODY["messages"] and prompts == ["What is 1 + 1?"]
    assert seen[0].headers["api-key"] == "k" and seen[0].timeout_s == 2.0
    assert transport.requests == seen and transport.in_flight == 0


def test_a_handler_answering_something_else_is_a_type_error() -> None:
    bad: Any = lambda request: {"status": 200}  # noqa: E731
    with pytest.raises(TypeError, match="not a MemoryResponse"):
        asyncio.run(MemoryTransport(bad).send(BODY))
