"""The Responses API (``api="responses"``): the same engine, the body translated.

The engine runs against :class:`~polars_azurechat.testing.MemoryTransport` speaking the
Responses API: the handler sees the body as ``/openai/v1/responses`` takes it and
answers in that API's shape.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import polars_azurechat as pac
from polars_azurechat._types import ChatRequest
from polars_azurechat.emulator import Emulator
from polars_azurechat.engine.core import ChatEngine
from polars_azurechat.testing import (
    MemoryRequest,
    MemoryResponse,
    MemoryTransport,
    response_answer,
)
from polars_azurechat.transport.auth import KeyAuth
from polars_azurechat.transport.http import Transport

from .fakes import FakeClock


def _req(text: str) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}])


def _engine(transport: MemoryTransport, clock: FakeClock, **kw: object) -> ChatEngine:
    from polars_azurechat.transport.ratelimit import RateLimiter

    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    return ChatEngine(transport, limiter=limiter, sleep=clock.sleep, clock=clock, **kw)  # type: ignore[arg-type]


def test_rows_go_as_responses_and_come_back_in_order(clock: FakeClock) -> None:
    def handler(request: MemoryRequest) -> MemoryResponse:
        return response_answer(request.prompt[::-1], reasoning_tokens=7)

    transport = MemoryTransport(handler, api="responses", deployment="gpt-5-mini")
    engine = _engine(
        transport,
        clock,
        params={"max_completion_tokens": 50, "reasoning_effort": "low"},
    )
    rows = [_req(t) for t in ("abc", "xyz", "abc", "hello")]
    out = engine.run(rows)
    assert [r.content for r in out if r is not None] == ["cba", "zyx", "cba", "olleh"]
    assert [r.finish_reason for r in out if r is not None] == ["stop"] * 4
    assert len(transport.requests) == 3  # the repeated row went once
    body = transport.requests[0].body
    assert body == {
        "model": "gpt-5-mini",
        "max_output_tokens": 50,
        "reasoning": {"effort": "low"},
        "store": False,
        "input": [{"role": "user", "content": "abc"}],
    }
    engine.close()


def test_an_incomplete_response_is_a_truncation_not_a_success(clock: FakeClock) -> None:
    def handler(request: MemoryRequest) -> MemoryResponse:
        return response_answer(
            "", status="incomplete", incomplete_reason="max_output_tokens"
        )

    transport = MemoryTransport(handler, api="responses")
    engine = _engine(transport, clock, params={"max_tokens": 16})
    [r] = engine.run([_req("think hard")])
    assert r is not None and r.finish_reason == "length" and r.content == ""
    assert transport.requests[0].body["max_output_tokens"] == 16
    engine.close()


def test_fields_without_an_equivalent_are_refused_before_any_request(
    emulator: Emulator,
) -> None:
    with pytest.raises(ValueError, match="seed has no equivalent in the Responses API"):
        pac.Completer(api="responses", seed=3, max_tokens=5)
    with pytest.raises(ValueError, match="api must be"):
        pac.Completer(api="assistants", max_tokens=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="takes at least 16 output tokens"):
        pac.Completer(api="responses", max_tokens=5)  # Azure's 400 on every row
    assert emulator.stats()["requests"] == 0


def test_the_wire_body_is_the_responses_api_s(clock: FakeClock) -> None:
    """The HTTP transport's bytes: the model, the translated fields, the input last."""
    transport = Transport(
        endpoint="https://r.openai.azure.com",
        deployment="gpt-5-mini",
        api_version="2024-10-21",
        auth=KeyAuth({"api-key": "k"}),
        timeout_s=5,
        api="responses",
    )
    assert transport.url == "https://r.openai.azure.com/openai/v1/responses"
    assert transport.api_version == "v1"
    schema: dict[str, Any] = {
        "name": "Sum",
        "schema": {"type": "object"},
        "strict": True,
    }
    fmt = {"type": "json_schema", "json_schema": schema}
    params = {"max_tokens": 19, "response_format": fmt}
    messages = [{"role": "user", "content": "é"}]
    for _ in range(2):  # the second from the fields encoded once
        data = json.loads(transport._encode({**params, "messages": messages}))
        assert data == {
            "model": "gpt-5-mini",
            "max_output_tokens": 19,
            "text": {"format": {"type": "json_schema", **schema}},
            "store": False,
            "input": messages,
        }


def test_logprobs_join_the_jobs_own_include_without_changing_it(
    clock: FakeClock,
) -> None:
    seen: list[Any] = []

    def handler(request: MemoryRequest) -> MemoryResponse:
        seen.append(request.body.get("include"))
        return response_answer("ok")

    own = ["reasoning.encrypted_content"]
    for params in (
        {"logprobs": True, "include": own, "max_completion_tokens": 20},
        {"include": own, "logprobs": True, "max_completion_tokens": 20},
    ):
        transport = MemoryTransport(handler, api="responses", deployment="d")
        _engine(transport, clock, params=params).run([_req("hi")])
    both = ["reasoning.encrypted_content", "message.output_text.logprobs"]
    assert seen == [both, both]
    assert own == ["reasoning.encrypted_content"]  # the job's list is left as it was
