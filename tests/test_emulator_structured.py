"""Structured outputs against the emulator, over real HTTP.

The client's :class:`OutputSchema` and the emulator's ``_structured`` are independent
implementations: they must agree through the JSON schema alone.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, Literal

import openai
import polars as pl
import pytest
from pydantic import BaseModel, Field

from polars_azurechat.emulator import Emulator
from polars_azurechat.emulator._structured import (
    REFUSAL,
    broken_answer,
    structured_answer,
)
from polars_azurechat.schema.errors import SchemaMismatchError
from polars_azurechat.schema.output import OutputSchema

API_VERSION = "2024-10-21"


class Severity(enum.Enum):
    low = "low"
    medium = "medium"
    high = "high"


class Contact(BaseModel):
    name: str
    email: str | None = Field(json_schema_extra={"format": "email"})


class Step(BaseModel):
    order: int
    action: str


class Ticket(BaseModel):
    """What a support ticket says."""

    summary: str
    answer: int
    ratio: float
    severity: Severity
    kind: Literal["bug", "question", "praise"]
    urgent: bool
    reported_on: dt.date
    reported_at: dt.datetime
    contact: Contact
    steps: list[Step]
    labels: list[str] = []
    note: str | None = None


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def client(emu: Emulator) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=emu.url,
        api_key=emu.api_key,
        api_version=API_VERSION,
        max_retries=0,
    )


def ask(
    client: openai.AzureOpenAI,
    prompt: str,
    response_format: Any,
    **kwargs: Any,
) -> Any:
    return client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": prompt}],
        response_format=response_format,
        **kwargs,
    )


def post(emu: Emulator, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        emu.url + f"/openai/deployments/d/chat/completions?api-version={API_VERSION}",
        data=json.dumps(body).encode(),
        headers={"api-key": emu.api_key, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# ---------------------------------------------------------------------------------------
# the generator alone


PROMPTS = [
    "What is 6 x 7?",
    "What is 7 / 2?",
    "The printer on floor 3 is on fire [emu:delay=0]",
    "",
    'ünïcödé ✓ « quotes " and \\ backslashes »',
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_generated_answers_parse_with_the_client_schema(prompt: str) -> None:
    schema = OutputSchema.from_user(Ticket)
    strict = schema.response_format["json_schema"]["schema"]
    text = structured_answer(strict, prompt)
    assert text == structured_answer(strict, prompt)  # deterministic
    assert ": " not in text or '"' in text.split(": ")[0]  # compact
    value = schema.parse(text)
    assert schema.series([value]).dtype == schema.dtype
    assert 1 <= len(value["steps"]) <= 2
    assert value["contact"]["email"] is None or "@" in value["contact"]["email"]
    # the dict route (own walker) agrees with the pydantic route
    assert OutputSchema.from_user(schema.response_format).parse(text) == value


@pytest.mark.parametrize("prompt", PROMPTS)
def test_generated_answers_validate_with_jsonschema(prompt: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    strict = OutputSchema.from_user(Ticket).response_format["json_schema"]["schema"]
    value = json.loads(structured_answer(strict, prompt))
    jsonschema.Draft202012Validator(
        strict, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(value)


def test_arithmetic_fills_numbers() -> None:
    strict = OutputSchema.from_user(Ticket).response_format["json_schema"]["schema"]
    value = json.loads(structured_answer(strict, "What is 6 x 7?"))
    assert value["answer"] == 42
    assert value["ratio"] == 42
    value = json.loads(structured_answer(strict, "What is 7 / 2?"))
    assert value["ratio"] == 3.5
    assert value["answer"] in (3, 4)
    value = json.loads(structured_answer(strict, "What is 12 - 20?"))
    assert value["answer"] == -8


def test_strings_come_from_the_prompt_without_directives() -> None:
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "short": {"type": "string", "maxLength": 4},
        },
    }
    value = json.loads(
        structured_answer(
            schema, "[emu:delay=1] Tell me about the moon landing in 1969"
        )
    )
    assert value == {"s": "Tell me about the moon", "short": "Tell"}


def test_enums_follow_the_prompt_hash() -> None:
    schema = {
        "type": "object",
        "properties": {"e": {"type": "string", "enum": [f"v{i}" for i in range(8)]}},
    }
    seen = {
        json.loads(structured_answer(schema, f"prompt {i}"))["e"] for i in range(40)
    }
    assert len(seen) > 1
    assert seen <= {f"v{i}" for i in range(8)}


def test_bounds_lengths_and_item_counts_are_honoured() -> None:
    schema = {
        "type": "object",
        "properties": {
            "small": {"type": "integer", "minimum": 1000, "maximum": 1001},
            "pos": {"type": "number", "exclusiveMinimum": 50, "maximum": 60},
            "long": {"type": "string", "minLength": 40},
            "many": {"type": "array", "items": {"type": "boolean"}, "minItems": 3},
            "one": {"type": "array", "items": {"type": "integer"}, "maxItems": 1},
        },
    }
    for prompt in ("What is 6 x 7?", "hello", "What is 1 / 3?"):
        value = json.loads(structured_answer(schema, prompt))
        assert 1000 <= value["small"] <= 1001
        assert 50 < value["pos"] <= 60
        assert len(value["long"]) >= 40
        assert len(value["many"]) == 3
        assert len(value["one"]) == 1


def test_refs_nullable_recursion_and_formats() -> None:
    schema = {
        "type": "object",
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "child": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                },
            }
        },
        "properties": {
            "root": {"$ref": "#/$defs/Node"},
            "when": {"type": ["string", "null"], "format": "date-time"},
            "day": {"type": "string", "format": "date"},
            "at": {"type": "string", "format": "time"},
            "id": {"type": "string", "format": "uuid"},
            "fixed": {"const": "always"},
        },
    }
    value = json.loads(structured_answer(schema, "x"))
    assert value["root"] == {"name": "x", "child": None}  # recursion stops at null
    assert value["when"].endswith("Z")
    dt.datetime.fromisoformat(value["when"])
    dt.date.fromisoformat(value["day"])
    dt.time.fromisoformat(value["at"])
    assert len(value["id"]) == 36
    assert value["fixed"] == "always"


def test_broken_answer_breaks_the_schema() -> None:
    schema = OutputSchema.from_user(Ticket)
    strict = schema.response_format["json_schema"]["schema"]
    text = broken_answer(strict, "What is 6 x 7?")
    value = json.loads(text)  # still JSON
    assert "summary" not in value
    with pytest.raises(SchemaMismatchError, match="summary"):
        schema.parse(text)


# ---------------------------------------------------------------------------------------
# over HTTP


def test_sdk_request_with_the_client_schema(client: openai.AzureOpenAI) -> None:
    schema = OutputSchema.from_user(Ticket)
    reply = ask(client, "What is 6 x 7?", schema.response_format)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.refusal is None
    assert choice.message.content is not None
    value = schema.parse(choice.message.content)
    assert value["answer"] == 42
    assert value["summary"] == "What is 6 x 7?"
    assert isinstance(value["reported_on"], dt.date)
    column = schema.series([value, None])
    assert column.dtype == schema.dtype
    assert column.struct.field("answer").to_list() == [42, None]


def test_sdk_parse_helper_agrees(client: openai.AzureOpenAI) -> None:
    # the openai SDK's own strict schema and parser: a third implementation
    reply = client.chat.completions.parse(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What is 53 + 53?"}],
        response_format=Ticket,
    )
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Ticket)
    assert parsed.answer == 106
    content = reply.choices[0].message.content
    assert content is not None
    assert OutputSchema.from_user(Ticket).parse(content)["answer"] == 106


@pytest.mark.parametrize(
    "source",
    [
        pl.Struct({"city": pl.String, "count": pl.Int32, "days": pl.List(pl.Date)}),
        {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "count": {"type": "integer"},
                "days": {
                    "type": "array",
                    "items": {"type": "string", "format": "date"},
                },
            },
        },
    ],
    ids=["struct", "dict"],
)
def test_struct_and_dict_schemas_round_trip(
    client: openai.AzureOpenAI, source: Any
) -> None:
    schema = OutputSchema.from_user(source)
    reply = ask(client, "What is 2 + 3?", schema.response_format)
    content = reply.choices[0].message.content
    assert content is not None
    value = schema.parse(content)
    assert value["count"] == 5
    assert all(isinstance(d, dt.date) for d in value["days"])
    assert schema.series([value]).dtype == schema.dtype


def test_refuse_directive(client: openai.AzureOpenAI) -> None:
    schema = OutputSchema.from_user(Ticket)
    reply = ask(client, "[emu:refuse] What is 6 x 7?", schema.response_format)
    choice = reply.choices[0]
    assert choice.message.content is None
    assert choice.message.refusal == REFUSAL
    assert choice.finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0


def test_refusal_through_the_sdk_parse_helper(client: openai.AzureOpenAI) -> None:
    reply = client.chat.completions.parse(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "[emu:refuse] hi"}],
        response_format=Ticket,
    )
    assert reply.choices[0].message.parsed is None
    assert reply.choices[0].message.refusal == REFUSAL


def test_bad_json_directive(client: openai.AzureOpenAI) -> None:
    schema = OutputSchema.from_user(Ticket)
    reply = ask(client, "[emu:bad_json] What is 6 x 7?", schema.response_format)
    content = reply.choices[0].message.content
    assert content is not None
    json.loads(content)  # JSON, but not the schema's
    with pytest.raises(SchemaMismatchError) as info:
        schema.parse(content)
    assert not info.value.json_error
    assert info.value.path == "summary"


def test_small_max_tokens_truncates_the_json(client: openai.AzureOpenAI) -> None:
    schema = OutputSchema.from_user(Ticket)
    reply = ask(client, "What is 6 x 7?", schema.response_format, max_tokens=10)
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 10
    assert choice.message.content is not None
    with pytest.raises(SchemaMismatchError) as info:
        schema.parse(choice.message.content)
    assert info.value.json_error


def test_schema_tokens_are_charged_in_the_prompt(client: openai.AzureOpenAI) -> None:
    schema = OutputSchema.from_user(Ticket)
    plain = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    typed = ask(client, "hi", schema.response_format)
    assert plain.usage is not None
    assert typed.usage is not None
    extra = typed.usage.prompt_tokens - plain.usage.prompt_tokens
    # the client's estimate and the emulator's own count are near each other
    assert extra > 0
    assert 0.5 < schema.schema_tokens() / extra < 2


def test_non_strict_schema_is_accepted(emu: Emulator) -> None:
    status, body = post(
        emu,
        {
            "messages": [{"role": "user", "content": "What is 1 + 1?"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "loose",
                    "schema": {
                        "type": "object",
                        "properties": {"n": {"type": "integer"}},
                    },
                },
            },
        },
    )
    assert status == 200
    assert json.loads(body["choices"][0]["message"]["content"]) == {"n": 2}


def test_text_keeps_plain_answers_and_json_mode_answers_a_json_object(
    emu: Emulator,
) -> None:
    def ask(question: str, kind: str) -> tuple[int, dict[str, Any]]:
        return post(
            emu,
            {
                "messages": [{"role": "user", "content": question}],
                "response_format": {"type": kind},
            },
        )

    status, body = ask("What is 1 + 1?", "text")
    assert status == 200 and body["choices"][0]["message"]["content"] == "2"
    status, body = ask("What is 1 + 1? Answer in JSON.", "json_object")
    assert status == 200
    assert json.loads(body["choices"][0]["message"]["content"]) == {"answer": "2"}
    # JSON mode needs the word in the messages, as Azure says
    status, body = ask("What is 1 + 1?", "json_object")
    assert status == 400 and body["error"]["param"] == "messages"
    assert body["error"]["message"].startswith(
        "'messages' must contain the word 'json' in some form"
    )


def _strict(schema: dict[str, Any], strict: object = True) -> dict[str, Any]:
    """A strict ``json_schema`` response format around ``schema``."""
    return {
        "type": "json_schema",
        "json_schema": {"name": "x", "strict": strict, "schema": schema},
    }


@pytest.mark.parametrize(
    ("response_format", "words"),
    [
        ({"type": "json_schema"}, "'response_format.json_schema'"),
        (
            {"type": "json_schema", "json_schema": {"name": "x"}},
            "'response_format.json_schema.schema'",
        ),
        (
            {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
            "'response_format.json_schema.name'",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}},
            "'a b' must match",
        ),
        ({"type": "yaml"}, "Invalid value: 'yaml'"),
        (
            _strict({"type": "object", "properties": {}}, strict="yes"),
            "expected a boolean",
        ),
        (
            _strict({"anyOf": [{"type": "object"}]}),
            "schema must be a JSON Schema of 'type: \"object\"', got 'type: \"None\"'",
        ),
        (
            _strict({"type": "object", "properties": {"a": {"type": "string"}}}),
            "In context=(), 'additionalProperties' is required to be supplied and to "
            "be false.",
        ),
        (
            _strict(
                {
                    "type": "object",
                    "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                    "required": ["a"],
                    "additionalProperties": False,
                }
            ),
            "array including every key in properties. Missing 'b'.",
        ),
        (
            _strict(
                {
                    "type": "object",
                    "properties": {
                        "at": {"type": "object", "properties": {"city": {}}}
                    },
                    "required": ["at"],
                    "additionalProperties": False,
                }
            ),
            "In context=('properties', 'at'), 'additionalProperties' is required",
        ),
    ],
)
def test_malformed_response_format_is_a_400(
    emu: Emulator, response_format: dict[str, Any], words: str
) -> None:
    status, body = post(
        emu,
        {
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": response_format,
        },
    )
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == "response_format"
    assert words in body["error"]["message"]


def test_sdk_maps_the_400(client: openai.AzureOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="response_format"):
        ask(client, "hi", {"type": "json_schema", "json_schema": {"name": "x"}})
