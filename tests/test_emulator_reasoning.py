"""Reasoning deployments of the emulator: Azure's 400s, reasoning tokens, the budget.

Over real HTTP with the openai SDK (v1 and classic routes) and urllib for the exact
error bodies.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from polars_azurechat.emulator import Emulator
from polars_azurechat.emulator._chat import Chat
from polars_azurechat.emulator._reasoning import EFFORTS

from .fakes import FakeClock

ASK: Any = [{"role": "user", "content": "What is 6 x 7?"}]


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    per = {"o4": {"model": "o4-mini"}, "gpt5": {"model": "gpt-5-mini"}}
    with Emulator(per_deployment=per) as emulator:
        yield emulator


def _post(emu: Emulator, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        emu.url + "/openai/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"api-key": emu.api_key, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _client(emu: Emulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=emu.base_url, api_key=emu.api_key, max_retries=0)


def test_max_tokens_is_refused_with_azures_body(emu: Emulator) -> None:
    status, body = _post(emu, {"model": "o4", "messages": ASK, "max_tokens": 50})
    assert status == 400
    assert body == {
        "error": {
            "code": "unsupported_parameter",
            "message": "Unsupported parameter: 'max_tokens' is not supported with "
            "this model. Use 'max_completion_tokens' instead.",
            "type": "invalid_request_error",
            "param": "max_tokens",
        }
    }


def test_a_temperature_other_than_1_is_an_unsupported_value(emu: Emulator) -> None:
    status, body = _post(emu, {"model": "o4", "messages": ASK, "temperature": 0.7})
    assert status == 400
    assert body["error"]["code"] == "unsupported_value"
    assert body["error"]["param"] == "temperature"
    assert body["error"]["message"] == (
        "Unsupported value: 'temperature' does not support 0.7 with this model. "
        "Only the default (1) value is supported."
    )
    ok, _ = _post(emu, {"model": "o4", "messages": ASK, "temperature": 1})
    assert ok == 200


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("top_p", 0.5),
        ("presence_penalty", 0),
        ("frequency_penalty", 0.5),
        ("logprobs", True),
        ("top_logprobs", 2),
        ("logit_bias", {"50256": -100}),
    ],
)
def test_sampling_parameters_are_unsupported(
    emu: Emulator, param: str, value: object
) -> None:
    status, body = _post(emu, {"model": "gpt5", "messages": ASK, param: value})
    assert status == 400
    assert body["error"]["code"] == "unsupported_parameter"
    assert body["error"]["param"] == param
    assert body["error"]["message"] == (
        f"Unsupported parameter: '{param}' is not supported with this model."
    )
    # the same body is fine on a model that does not reason (top_logprobs with
    # logprobs: alone, every model refuses it)
    body = {"model": "gpt-4o-mini", "messages": ASK, param: value}
    if param == "top_logprobs":
        alone, refused = _post(emu, body)
        assert alone == 400 and refused["error"]["message"] == (
            "The 'top_logprobs' parameter is only allowed when 'logprobs' is enabled."
        )
        body["logprobs"] = True
    fine, _ = _post(emu, body)
    assert fine == 200


def test_logprobs_false_is_accepted(emu: Emulator) -> None:
    status, _ = _post(emu, {"model": "o4", "messages": ASK, "logprobs": False})
    assert status == 200


def test_reasoning_effort_values(emu: Emulator) -> None:
    bad, body = _post(emu, {"model": "o4", "messages": ASK, "reasoning_effort": "max"})
    assert bad == 400 and body["error"]["code"] == "invalid_value"
    assert body["error"]["param"] == "reasoning_effort"
    assert body["error"]["message"] == (
        "Invalid value: 'max'. Supported values are: 'minimal', 'low', 'medium', "
        "and 'high'."
    )
    wrong_type, body = _post(
        emu, {"model": "o4", "messages": ASK, "reasoning_effort": 3}
    )
    assert wrong_type == 400 and body["error"]["code"] == "invalid_type"
    # minimal is the GPT-5 series' only
    o_minimal, body = _post(
        emu, {"model": "o4", "messages": ASK, "reasoning_effort": "minimal"}
    )
    assert o_minimal == 400 and body["error"]["code"] == "unsupported_value"
    ok, reply = _post(
        emu, {"model": "gpt5", "messages": ASK, "reasoning_effort": "minimal"}
    )
    assert ok == 200
    assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    # a model that does not reason does not take it at all
    plain, body = _post(
        emu, {"model": "gpt-4o-mini", "messages": ASK, "reasoning_effort": "low"}
    )
    assert plain == 400 and body["error"]["code"] == "unsupported_parameter"
    assert body["error"]["param"] == "reasoning_effort"


def test_reasoning_tokens_grow_with_effort_and_are_counted(emu: Emulator) -> None:
    client = _client(emu)
    spent = []
    effort: Any
    for effort in EFFORTS[1:]:
        reply = client.chat.completions.create(
            model="o4",
            messages=ASK,
            reasoning_effort=effort,
            max_completion_tokens=10_000,
        )
        assert reply.choices[0].message.content == "42"
        assert reply.choices[0].finish_reason == "stop"
        usage = reply.usage
        assert usage is not None and usage.completion_tokens_details is not None
        reasoning = usage.completion_tokens_details.reasoning_tokens
        assert reasoning is not None
        assert usage.completion_tokens == reasoning + 1  # "42" is one token
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        spent.append(reasoning)
    assert 0 < spent[0] < spent[1] < spent[2]
    # deterministic, and medium is the default effort
    again = client.chat.completions.create(model="o4", messages=ASK)
    assert again.usage is not None and again.usage.completion_tokens_details
    assert again.usage.completion_tokens_details.reasoning_tokens == spent[1]


def test_reasoning_that_takes_the_whole_budget_leaves_the_answer_empty(
    emu: Emulator,
) -> None:
    status, reply = _post(
        emu, {"model": "o4", "messages": ASK, "max_completion_tokens": 20}
    )
    assert status == 200
    choice = reply["choices"][0]
    assert choice["message"]["content"] == ""
    assert choice["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 20
    assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] == 20


def test_what_the_reasoning_leaves_of_the_budget_cuts_the_answer(
    emu: Emulator,
) -> None:
    question = [{"role": "user", "content": "Tell me a long story about tokens"}]
    _, full = _post(emu, {"model": "o4", "messages": question})
    reasoning = full["usage"]["completion_tokens_details"]["reasoning_tokens"]
    _, cut = _post(
        emu,
        {"model": "o4", "messages": question, "max_completion_tokens": reasoning + 2},
    )
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == reasoning + 2
    content = cut["choices"][0]["message"]["content"]
    assert content and full["choices"][0]["message"]["content"].startswith(content)
    assert len(content) < len(full["choices"][0]["message"]["content"])


def test_the_classic_route_and_the_default_deployment(emu: Emulator) -> None:
    classic = openai.AzureOpenAI(
        azure_endpoint=emu.url,
        api_key=emu.api_key,
        api_version="2025-04-01-preview",
        max_retries=0,
    )
    with pytest.raises(openai.BadRequestError, match="max_completion_tokens"):
        classic.chat.completions.create(model="o4", messages=ASK, max_tokens=9)
    plain = classic.chat.completions.create(
        model="gpt-4o-mini",
        messages=ASK,
        max_tokens=9,
    )
    assert plain.usage is not None and plain.usage.completion_tokens_details
    assert plain.usage.completion_tokens_details.reasoning_tokens == 0


def test_reasoning_setting_overrides_the_model_name() -> None:
    with Emulator(reasoning=True, per_deployment={"old": {"reasoning": False}}) as emu:
        forced, _ = _post(emu, {"model": "any", "messages": ASK, "max_tokens": 5})
        off, _ = _post(
            emu,
            {"model": "old", "messages": ASK, "max_tokens": 5},
        )
    assert (forced, off) == (400, 200)
    with Emulator(model="gpt-5-chat") as emu:  # gpt-5-chat does not reason
        chat, _ = _post(emu, {"model": "d", "messages": ASK, "max_tokens": 5})
    assert chat == 200


def test_reasoning_adds_latency_per_reasoning_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(Chat, "sleep", staticmethod(record))
    with Emulator(
        latency_ms=10,
        per_deployment={"o4": {"model": "o4-mini", "reasoning_ms_per_token": 2}},
    ) as emu:
        _, low = _post(emu, {"model": "o4", "messages": ASK, "reasoning_effort": "low"})
        _, plain = _post(emu, {"model": "gpt-4o-mini", "messages": ASK})
        stats = emu.stats()
    reasoning = low["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert waits == pytest.approx([(10 + 2 * reasoning) / 1000, 10 / 1000])
    assert plain["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert stats["reasoning_tokens"] == reasoning


def test_a_batch_line_of_a_reasoning_deployment_reasons() -> None:
    clock = FakeClock(5000.0)
    with Emulator(clock=clock, model="o3-mini") as emu:
        client = _client(emu)
        line = {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "o3-batch",
                "messages": ASK,
                "reasoning_effort": "high",
                "max_completion_tokens": 5000,
            },
        }
        bad = {**line, "custom_id": "b", "body": {**line["body"], "max_tokens": 9}}  # type: ignore[dict-item]
        data = (json.dumps(line) + "\n" + json.dumps(bad) + "\n").encode()
        file = client.files.create(file=("in.jsonl", data), purpose="batch")
        clock.advance(1)
        batch = client.batches.create(
            input_file_id=file.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        for _ in range(10):
            clock.advance(1)
            batch = client.batches.retrieve(batch.id)
        assert batch.status == "completed"
        assert batch.output_file_id and batch.error_file_id
        out = json.loads(client.files.content(batch.output_file_id).text)
        err = json.loads(client.files.content(batch.error_file_id).text)
    usage = out["response"]["body"]["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] > 1000
    assert err["custom_id"] == "b"
    assert err["response"]["body"]["error"]["code"] == "unsupported_parameter"
