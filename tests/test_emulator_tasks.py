"""The emulator's side of the tasks: labels, conditions, log-probabilities, repairs.

Talked to with the openai SDK over HTTP, as any client would.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from polars_azurechat.emulator import Emulator


def _format(prop: dict[str, Any], name: str = "answer") -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": name,
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"value": prop},
                "required": ["value"],
                "additionalProperties": False,
            },
        },
    }


LABELS = _format({"type": "string", "enum": ["billing", "late_delivery", "other"]})
BOOLEAN = _format({"type": "boolean"})


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def client(emu: Emulator) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=emu.url,
        api_key=emu.api_key,
        api_version="2024-10-21",
        max_retries=0,
    )


def ask(
    client: openai.AzureOpenAI,
    user: str,
    fmt: dict[str, Any],
    *,
    system: str | None = None,
    more: list[dict[str, str]] | None = None,
    **kwargs: Any,
) -> Any:
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": user})
    messages.extend(more or [])
    return client.chat.completions.create(  # type: ignore[call-overload]
        model="gpt-4o-mini",
        messages=messages,
        response_format=fmt,
        **kwargs,
    )


def value(reply: Any) -> Any:
    return json.loads(reply.choices[0].message.content)["value"]


def test_an_enum_answers_the_label_the_text_names(client: openai.AzureOpenAI) -> None:
    assert value(ask(client, "BILLING went wrong", LABELS)) == "billing"
    # an underscore is read as a space; the earliest label named wins
    assert value(ask(client, "a late delivery, then billing", LABELS)) == (
        "late_delivery"
    )
    # "billings" is not the word "billing": a label by the hash, the same each time
    unnamed = [value(ask(client, "billings and more", LABELS)) for _ in range(3)]
    assert len(set(unnamed)) == 1 and unnamed[0] in (
        "billing",
        "late_delivery",
        "other",
    )


def test_a_boolean_answers_a_quoted_condition(client: openai.AzureOpenAI) -> None:
    system = 'Does the text meet the condition "asks for a refund"? Say "match".'
    assert value(ask(client, "I want my money refunded", BOOLEAN, system=system))
    assert not value(ask(client, "Great app, thanks", BOOLEAN, system=system))
    # only the first quoted phrase is the condition ("match" is not)
    assert not value(ask(client, "a good match", BOOLEAN, system=system))
    # common words do not count
    assert not value(ask(client, "about it", BOOLEAN, system='"about the refund"'))


def test_logprobs_when_asked_spell_the_answer(client: openai.AzureOpenAI) -> None:
    plain = ask(client, "billing", LABELS)
    assert plain.choices[0].logprobs is None
    reply = ask(client, "billing", LABELS, logprobs=True, top_logprobs=3)
    content = reply.choices[0].message.content
    tokens = reply.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == content
    by_token = {t.token: t for t in tokens}
    assert by_token['{"'].logprob == 0.0  # punctuation: forced by the grammar
    assert 0.90 <= math.exp(by_token["billing"].logprob) <= 0.99  # named in the text
    assert math.exp(by_token["value"].logprob) <= 0.85  # a word it did not read
    top = by_token["billing"].top_logprobs
    assert len(top) == 3 and top[0].token == "billing"
    assert top[0].logprob >= top[1].logprob >= top[2].logprob
    assert all(t.bytes == list(t.token.encode()) for t in top)  # as Azure's carry
    wide = ask(client, "about it", LABELS, logprobs=True, top_logprobs=20)
    for t in wide.choices[0].logprobs.content:  # a distribution: at most 1 in all
        assert sum(math.exp(o.logprob) for o in t.top_logprobs) <= 1.0 + 1e-9
    again = ask(client, "billing", LABELS, logprobs=True)
    assert [t.logprob for t in again.choices[0].logprobs.content] == [
        t.logprob for t in tokens
    ]


def test_a_validation_error_in_the_conversation_repairs_the_answer(
    client: openai.AzureOpenAI,
) -> None:
    broken = ask(client, "[emu:bad_json] billing", LABELS)
    answer = broken.choices[0].message.content
    assert "value" not in json.loads(answer)
    told = [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "That is not valid for the schema: value missing"},
    ]
    fixed = ask(client, "[emu:bad_json] billing", LABELS, more=told)
    assert value(fixed) == "billing"  # the first question's answer, well formed
    # a next turn that does not name the schema is no repair
    chat = [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "[emu:bad_json] try harder"},
    ]
    still = ask(client, "billing", LABELS, more=chat)
    assert "value" not in json.loads(still.choices[0].message.content)


def test_bad_json_rate_breaks_structured_answers_at_random() -> None:
    with Emulator(bad_json_rate=0.5, seed=7) as emu:
        client = openai.AzureOpenAI(
            azure_endpoint=emu.url,
            api_key=emu.api_key,
            api_version="2024-10-21",
            max_retries=0,
        )
        answers = [
            json.loads(ask(client, f"billing {i}", LABELS).choices[0].message.content)
            for i in range(40)
        ]
        broken = sum("value" not in a for a in answers)
        assert 8 <= broken <= 32
        text = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "What is 1 + 1?"}],
        )
        assert text.choices[0].message.content == "2"  # free text is never broken
