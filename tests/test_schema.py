from __future__ import annotations

import datetime as dt
import enum
import json
import logging
from typing import Annotated, Any, Literal

import polars as pl
import pytest
from pydantic import (
    AfterValidator,
    Base64Encoder,
    BaseModel,
    EncodedStr,
    Field,
    computed_field,
    field_serializer,
    field_validator,
)

from polars_azurechat.schema.errors import SchemaMismatchError
from polars_azurechat.schema.output import OutputSchema

# ---------------------------------------------------------------------------------------
# models shared by the tests (module level: pydantic resolves annotations here)


class Priority(enum.Enum):
    low = "low"
    high = "high"


class Level(enum.IntEnum):
    one = 1
    two = 2


class Address(BaseModel):
    city: str
    zip: str | None = None


class Ticket(BaseModel):
    """A support ticket."""

    title: str
    count: int
    score: float
    urgent: bool
    tags: list[str]
    address: Address
    history: list[Address]
    kind: Literal["bug", "question"]
    priority: Priority
    level: Level
    note: str | None
    due: dt.date
    seen_at: dt.datetime
    retries: int = 3


TICKET_DTYPE = pl.Struct(
    {
        "title": pl.String,
        "count": pl.Int64,
        "score": pl.Float64,
        "urgent": pl.Boolean,
        "tags": pl.List(pl.String),
        "address": pl.Struct({"city": pl.String, "zip": pl.String}),
        "history": pl.List(pl.Struct({"city": pl.String, "zip": pl.String})),
        "kind": pl.Enum(["bug", "question"]),
        "priority": pl.Enum(["low", "high"]),
        "level": pl.Int64,
        "note": pl.String,
        "due": pl.Date,
        "seen_at": pl.Datetime("us", "UTC"),
        "retries": pl.Int64,
    }
)

TICKET_ANSWER = {
    "title": "printer",
    "count": 2,
    "score": 0.5,
    "urgent": True,
    "tags": ["hw", "office"],
    "address": {"city": "Paris", "zip": "75001"},
    "history": [{"city": "Lyon", "zip": "69000"}],
    "kind": "bug",
    "priority": "high",
    "level": 2,
    "note": "call back",
    "due": "2024-03-01",
    "seen_at": "2024-03-01T10:00:00+02:00",
    "retries": 1,
}

TICKET_VALUE = {
    **TICKET_ANSWER,
    "due": dt.date(2024, 3, 1),
    "seen_at": dt.datetime(2024, 3, 1, 8, 0, tzinfo=dt.UTC),
}


def strict_schema(schema: OutputSchema) -> dict[str, Any]:
    fmt = schema.response_format
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["strict"] is True
    result: dict[str, Any] = fmt["json_schema"]["schema"]
    return result


def walk_objects(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object schema in a JSON schema, $defs included."""
    found: list[dict[str, Any]] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                found.append(node)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return found


def accepts_null(schema: dict[str, Any], defs: dict[str, Any]) -> bool:
    if "$ref" in schema:
        return accepts_null(defs[schema["$ref"].split("/")[-1]], defs)
    t = schema.get("type")
    if t == "null" or (isinstance(t, list) and "null" in t):
        return True
    return any(accepts_null(m, defs) for m in schema.get("anyOf", []))


# ---------------------------------------------------------------------------------------
# dtypes


def test_pydantic_dtype_covers_every_mapping() -> None:
    assert OutputSchema.from_user(Ticket).dtype == TICKET_DTYPE


def test_dict_dtype_covers_every_mapping_with_refs() -> None:
    schema = {
        "type": "object",
        "$defs": {
            "Addr": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                "required": ["city"],
            },
            "Pri": {"type": "string", "enum": ["low", "high"]},
        },
        "properties": {
            "title": {"type": "string"},
            "count": {"type": "integer"},
            "score": {"type": "number"},
            "urgent": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "address": {"$ref": "#/$defs/Addr"},
            "history": {"type": "array", "items": {"$ref": "#/$defs/Addr"}},
            "kind": {"enum": ["bug", "question"]},
            "priority": {"$ref": "#/$defs/Pri"},
            "level": {"enum": [1, 2]},
            "note": {"type": ["string", "null"]},
            "due": {"type": "string", "format": "date"},
            "seen_at": {"type": "string", "format": "date-time"},
            "retries": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        },
    }
    assert OutputSchema.from_user(schema).dtype == TICKET_DTYPE


def test_struct_dtype_is_kept() -> None:
    schema = OutputSchema.from_user(TICKET_DTYPE)
    assert schema.dtype == TICKET_DTYPE
    assert schema.source == "struct"
    # the schema it sends maps back to the same dtype
    assert OutputSchema.from_user(schema.response_format).dtype == TICKET_DTYPE


@pytest.mark.parametrize(
    ("prop", "dtype"),
    [
        ({"type": "string"}, pl.String()),
        ({"type": "string", "format": "email"}, pl.String()),
        ({"type": "integer"}, pl.Int64()),
        ({"type": "number"}, pl.Float64()),
        ({"type": "boolean"}, pl.Boolean()),
        ({"type": "string", "format": "date"}, pl.Date()),
        ({"type": "string", "format": "date-time"}, pl.Datetime("us", "UTC")),
        ({"type": "string", "format": "time"}, pl.Time()),
        ({"type": "array", "items": {"type": "integer"}}, pl.List(pl.Int64)),
        (
            {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            pl.List(pl.List(pl.Float64)),
        ),
        ({"enum": ["a", "b", "a"]}, pl.Enum(["a", "b"])),
        ({"type": "string", "const": "only"}, pl.Enum(["only"])),
        ({"enum": ["a", None]}, pl.Enum(["a"])),
        ({"enum": [1, 2]}, pl.Int64()),
        ({"enum": [1, 2.5]}, pl.Float64()),
        ({"enum": [True, False]}, pl.Boolean()),
        ({"enum": ["a", 1]}, pl.String()),
        ({"type": ["integer", "null"]}, pl.Int64()),
        ({"anyOf": [{"type": "null"}, {"type": "boolean"}]}, pl.Boolean()),
        ({"oneOf": [{"type": "string"}, {"type": "null"}]}, pl.String()),
        ({"allOf": [{"type": "integer"}]}, pl.Int64()),
        (  # keywords beside anyOf hold for each branch (pydantic puts formats there)
            {"anyOf": [{"type": "string"}, {"type": "null"}], "format": "date"},
            pl.Date(),
        ),
        (
            {"type": "object", "properties": {"x": {"type": "integer"}}},
            pl.Struct({"x": pl.Int64}),
        ),
    ],
)
def test_dict_property_dtype(prop: dict[str, Any], dtype: pl.DataType) -> None:
    schema = OutputSchema.from_user({"type": "object", "properties": {"p": prop}})
    assert schema.dtype == pl.Struct({"p": dtype})


def test_literal_of_ints_and_optional_and_const() -> None:
    class M(BaseModel):
        n: Literal[1, 2]
        one: Literal["x"]
        maybe: Literal["a", "b"] | None
        words: list[str] | None = None

    assert OutputSchema.from_user(M).dtype == pl.Struct(
        {
            "n": pl.Int64,
            "one": pl.Enum(["x"]),
            "maybe": pl.Enum(["a", "b"]),
            "words": pl.List(pl.String),
        }
    )


def test_struct_input_accepts_bare_dtype_classes_and_arrays() -> None:
    schema = OutputSchema.from_user(
        pl.Struct(
            {
                "a": pl.Int32,
                "b": pl.Array(pl.Float32, 2),
                "c": pl.Categorical,
                "d": pl.Datetime("ms"),
            }
        )
    )
    props = strict_schema(schema)["properties"]
    assert props["a"] == {
        "type": "integer",
        "minimum": -(2**31),
        "maximum": 2**31 - 1,
    }
    assert props["b"] == {
        "type": "array",
        "items": {"type": "number"},
        "minItems": 2,
        "maxItems": 2,
    }
    assert props["c"] == {"type": "string"}
    assert props["d"] == {"type": "string", "format": "date-time"}


# ---------------------------------------------------------------------------------------
# response_format


@pytest.mark.parametrize(
    "source",
    [
        Ticket,
        TICKET_DTYPE,
        {"type": "object", "properties": {"a": {"type": "string"}}},
    ],
    ids=["pydantic", "struct", "dict"],
)
def test_response_format_is_strict(source: Any) -> None:
    schema = OutputSchema.from_user(source)
    fmt = schema.response_format
    assert set(fmt) == {"type", "json_schema"}
    assert set(fmt["json_schema"]) <= {"name", "strict", "schema", "description"}
    assert fmt["json_schema"]["name"] == schema.name
    objects = walk_objects(fmt["json_schema"]["schema"])
    assert objects
    for obj in objects:
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    assert "default" not in json.dumps(fmt)  # strict mode: every field is sent


def test_pydantic_response_format_details() -> None:
    fmt = OutputSchema.from_user(Ticket).response_format
    spec = fmt["json_schema"]
    assert spec["name"] == "Ticket"
    assert spec["description"] == "A support ticket."
    schema = spec["schema"]
    defs = schema["$defs"]
    assert schema["properties"]["address"] == {"$ref": "#/$defs/Address"}
    assert defs["Address"]["required"] == ["city", "zip"]
    assert accepts_null(defs["Address"]["properties"]["zip"], defs)
    assert accepts_null(schema["properties"]["note"], defs)
    # a field with a default is required and keeps its type (pydantic refuses null)
    assert schema["properties"]["retries"]["type"] == "integer"
    assert schema["properties"]["due"] == {
        "format": "date",
        "title": "Due",
        "type": "string",
    }
    assert schema["properties"]["seen_at"]["format"] == "date-time"
    # the response format is a copy: changing it changes nothing inside
    fmt["json_schema"]["schema"]["properties"].clear()
    assert OutputSchema.from_user(Ticket).response_format != fmt


def test_ref_with_description_is_inlined_for_strict_mode() -> None:
    class Outer(BaseModel):
        home: Address = Field(description="where they live")
        away: Address | None = Field(description="maybe")

    schema = strict_schema(OutputSchema.from_user(Outer))
    for prop in schema["properties"].values():
        if "$ref" in prop:
            assert set(prop) == {"$ref"}


def test_dict_optional_properties_become_nullable() -> None:
    schema = OutputSchema.from_user(
        {
            "type": "object",
            "title": "my answer!",
            "properties": {
                "a": {"type": "string"},
                "b": {"type": "integer"},
                "c": {"enum": ["x", "y"], "type": "string"},
                "d": {"type": "object", "properties": {"e": {"type": "number"}}},
            },
            "required": ["a"],
        }
    )
    assert schema.name == "my_answer_"
    props = strict_schema(schema)["properties"]
    assert props["a"] == {"type": "string"}
    assert props["b"] == {"type": ["integer", "null"]}
    assert props["c"] == {"enum": ["x", "y", None], "type": ["string", "null"]}
    assert props["d"]["type"] == ["object", "null"]
    assert props["d"]["required"] == ["e"]
    assert props["d"]["additionalProperties"] is False
    assert schema.parse('{"a": "x", "b": null, "c": null, "d": null}') == {
        "a": "x",
        "b": None,
        "c": None,
        "d": None,
    }


def test_openai_shape_keeps_name_and_forces_strict() -> None:
    schema = OutputSchema.from_user(
        {
            "type": "json_schema",
            "json_schema": {
                "name": "city_facts",
                "description": "facts",
                "strict": False,
                "schema": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}},
                    "required": ["name"],
                    "additionalProperties": False,
                },
            },
        }
    )
    assert schema.response_format == {
        "type": "json_schema",
        "json_schema": {
            "name": "city_facts",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
                "additionalProperties": False,
            },
            "description": "facts",
        },
    }


def test_from_user_is_idempotent_and_default_name() -> None:
    schema = OutputSchema.from_user(pl.Struct({"a": pl.String}))
    assert OutputSchema.from_user(schema) is schema
    assert schema.name == "answer"
    assert "OutputSchema(name='answer'" in repr(schema)


def test_schema_tokens_follows_the_documented_rule() -> None:
    small = OutputSchema.from_user(pl.Struct({"a": pl.String}))
    big = OutputSchema.from_user(Ticket)
    text = json.dumps(big.response_format, separators=(",", ":"))
    assert big.schema_tokens() == -(-len(text) // 4)
    assert 0 < small.schema_tokens() < big.schema_tokens()


# ---------------------------------------------------------------------------------------
# refused schemas


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (42, ["response_format must be", "not a int (42)"]),
        ("Ticket", ["not a str"]),
        (int, ["the class int"]),
        (pl.Struct, ["with its fields"]),
        ({"type": "text"}, ["has no schema"]),
        ({"type": "string"}, ["root must be an object"]),
        (pl.Struct({"a": pl.Binary}), ["a: Binary has no JSON-schema"]),
        (pl.Struct({"a": pl.List(pl.Duration)}), ["a[]: Duration"]),
        (pl.Struct({}), ["without fields"]),
    ],
)
def test_wrong_inputs_are_type_errors(source: Any, words: list[str]) -> None:
    with pytest.raises(TypeError) as info:
        OutputSchema.from_user(source)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("prop", "words"),
    [
        ({"type": "object"}, ["meta.x:", "free-form dict"]),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": {"type": "string"},
            },
            ["meta.x:", "additionalProperties with a schema"],
        ),
        (
            {
                "anyOf": [
                    {"type": "object", "properties": {"a": {"type": "string"}}},
                    {"type": "object", "properties": {"b": {"type": "string"}}},
                ]
            },
            ["meta.x:", "union of"],
        ),
        ({"type": ["string", "integer"]}, ["meta.x:", "several types"]),
        ({"type": "array"}, ["meta.x:", "'items'"]),
        ({"type": "array", "items": {"type": "object"}}, ["meta.x[]:", "free-form"]),
        ({}, ["meta.x:", "no supported 'type'"]),
        ({"type": "null"}, ["meta.x:", "always null"]),
        ({"$ref": "#/$defs/Nope"}, ["meta.x:", "not in $defs"]),
        ({"not": {"type": "string"}}, ["meta.x:", "'not' is not supported"]),
        ({"type": "string", "pattern": "("}, ["meta.x:", "pattern"]),
        ({"type": "integer", "minimum": "1"}, ["meta.x:", "minimum"]),
    ],
)
def test_unsupported_constructs_name_the_field(
    prop: dict[str, Any], words: list[str]
) -> None:
    schema = {
        "type": "object",
        "properties": {"meta": {"type": "object", "properties": {"x": prop}}},
    }
    with pytest.raises(TypeError) as info:
        OutputSchema.from_user(schema)
    for word in words:
        assert word in str(info.value)


def test_pydantic_unsupported_constructs_name_the_field() -> None:
    class Free(BaseModel):
        extra: dict[str, int]

    class Node(BaseModel):
        name: str
        children: list[Node]

    class Mixed(BaseModel):
        value: int | str

    with pytest.raises(TypeError, match=r"extra: additionalProperties with a schema"):
        OutputSchema.from_user(Free)
    with pytest.raises(TypeError, match=r"children\[\]: \$ref .* is recursive"):
        OutputSchema.from_user(Node)
    with pytest.raises(TypeError, match=r"value: a union of Int64 \| String"):
        OutputSchema.from_user(Mixed)


def test_malformed_openai_shape_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="needs"):
        OutputSchema.from_user({"type": "json_schema", "json_schema": {"name": "x"}})
    with pytest.raises(ValueError, match=r"json_schema\.name 'a b'"):
        OutputSchema.from_user(
            {
                "type": "json_schema",
                "json_schema": {"name": "a b", "schema": {"type": "object"}},
            }
        )


# ---------------------------------------------------------------------------------------
# parse


@pytest.mark.parametrize(
    "source",
    [Ticket, TICKET_DTYPE, OutputSchema.from_user(Ticket).response_format],
    ids=["pydantic", "struct", "dict"],
)
def test_parse_gives_column_values(source: Any) -> None:
    schema = OutputSchema.from_user(source)
    value = schema.parse(json.dumps(TICKET_ANSWER))
    assert value == TICKET_VALUE
    nulls = {**TICKET_ANSWER, "note": None, "address": {"city": "Paris", "zip": None}}
    if isinstance(source, pl.Struct):
        # a Struct says nothing of nulls: its fields are required and not nullable
        with pytest.raises(SchemaMismatchError, match=r"address\.zip: None is not of"):
            schema.parse(json.dumps(nulls))
    else:
        value = schema.parse(json.dumps(nulls))
        assert value["note"] is None
        assert value["address"] == {"city": "Paris", "zip": None}
        with pytest.raises(SchemaMismatchError) as info:
            schema.parse(json.dumps({**TICKET_ANSWER, "title": None}))
        assert info.value.path == "title"
    assert isinstance(value["due"], dt.date)
    assert type(value["priority"]) is str
    assert type(value["level"]) is int


def test_parse_datetime_rule() -> None:
    schema = OutputSchema.from_user(
        pl.Struct({"utc": pl.Datetime("us", "UTC"), "naive": pl.Datetime("ms")})
    )
    value = schema.parse(
        '{"utc": "2024-01-01T23:30:00-01:00", "naive": "2024-01-01T12:00:00"}'
    )
    assert value == {
        "utc": dt.datetime(2024, 1, 2, 0, 30, tzinfo=dt.UTC),
        "naive": dt.datetime(2024, 1, 1, 12, 0),
    }
    series = schema.series([value])
    assert series.dtype == schema.dtype
    assert series.struct.field("naive").dt.hour().item() == 12


def test_parse_drops_pydantic_computed_fields() -> None:
    class WithComputed(BaseModel):
        a: int

        @computed_field  # type: ignore[prop-decorator]
        @property
        def double(self) -> int:
            return 2 * self.a

    assert OutputSchema.from_user(WithComputed).parse('{"a": 2}') == {"a": 2}


def test_parse_uses_aliases() -> None:
    class Aliased(BaseModel):
        full_name: str = Field(alias="fullName")

    schema = OutputSchema.from_user(Aliased)
    assert list(strict_schema(schema)["properties"]) == ["fullName"]
    assert schema.dtype == pl.Struct({"fullName": pl.String})
    assert schema.parse('{"fullName": "Ada"}') == {"fullName": "Ada"}


def test_integer_valued_float_is_an_int() -> None:
    schema = OutputSchema.from_user(pl.Struct({"n": pl.Int64}))
    value = schema.parse('{"n": 3.0}')
    assert value == {"n": 3}
    assert type(value["n"]) is int


READER_LOG = "answers go through model_dump"


def test_plain_model_values_match_the_schema_walker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plain model is read from its instances; the dict schema's walker agrees."""
    with caplog.at_level(logging.DEBUG, logger="polars_azurechat.schema.models"):
        model = OutputSchema.from_user(Ticket)
    assert READER_LOG not in caplog.text  # no validator or serializer: read directly
    walker = OutputSchema.from_user(model.response_format)  # the dict path, no pydantic
    answers = [
        TICKET_ANSWER,
        {**TICKET_ANSWER, "seen_at": "2024-03-01T23:30:00-01:00", "score": 2},
        {**TICKET_ANSWER, "seen_at": "2024-03-01T10:00:00", "note": None},
        {**TICKET_ANSWER, "seen_at": "2024-03-01T10:00:00Z", "tags": [], "level": 1},
        {**TICKET_ANSWER, "address": {"city": "Oslo", "zip": None}, "history": []},
    ]
    for answer in answers:
        text = json.dumps(answer)
        got = model.parse(text)
        assert got == walker.parse(text)
        assert type(got["priority"]) is str
        assert type(got["level"]) is int
        assert got["seen_at"].tzinfo is not None
    rows = [model.parse(json.dumps(a)) for a in answers]
    assert model.series(rows).to_list() == walker.series(rows).to_list()


class Shade(enum.Enum):
    dark = "dark"
    light = "light"


class Plain(BaseModel):
    model_config = {"use_enum_values": True}

    shade: Shade
    shades: list[Shade]
    when: dt.time
    maybe: Address | None
    sizes: list[Annotated[int, Field(ge=0)]]
    name: Annotated[str, Field(max_length=20)] = Field(alias="fullName")


def test_plain_model_reader_covers_enum_values_times_and_nested_nulls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="polars_azurechat.schema.models"):
        schema = OutputSchema.from_user(Plain)
    assert READER_LOG not in caplog.text
    text = json.dumps(
        {
            "shade": "dark",
            "shades": ["light", "dark"],
            "when": "10:30:00+02:00",
            "maybe": None,
            "sizes": [1, 2],
            "fullName": "Ada",
        }
    )
    value = schema.parse(text)
    assert value == {
        "shade": "dark",
        "shades": ["light", "dark"],
        "when": dt.time(10, 30),
        "maybe": None,
        "sizes": [1, 2],
        "fullName": "Ada",
    }
    assert value == OutputSchema.from_user(schema.response_format).parse(text)


def _shout(text: str) -> str:
    return text.upper()


class Validated(BaseModel):
    name: str

    @field_validator("name")
    @classmethod
    def strip(cls, value: str) -> str:
        return value.strip()


class Serialized(BaseModel):
    name: str

    @field_serializer("name")
    def lower(self, value: str) -> str:
        return value.lower()


class InAnnotated(BaseModel):
    name: Annotated[str, AfterValidator(_shout)]


class Renamed(BaseModel):
    name: str = Field(validation_alias="nom", serialization_alias="nom")


class Encoded(BaseModel):
    # validated: the decoded text; dumped: encoded again
    name: Annotated[str, EncodedStr(encoder=Base64Encoder)]


@pytest.mark.parametrize(
    ("model", "answer", "expected"),
    [
        (Validated, '{"name": "  Ada "}', {"name": "Ada"}),
        (Serialized, '{"name": "Ada"}', {"name": "ada"}),
        (InAnnotated, '{"name": "Ada"}', {"name": "ADA"}),
        (Renamed, '{"nom": "Ada"}', {"nom": "Ada"}),
        (Encoded, '{"name": "QWRh"}', {"name": "QWRh"}),
    ],
    ids=[
        "field_validator",
        "field_serializer",
        "AfterValidator",
        "validation_alias",
        "EncodedStr",
    ],
)
def test_models_with_own_code_keep_their_dump(
    model: type[BaseModel],
    answer: str,
    expected: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What a model's own code makes of a value is what the column gets."""
    with caplog.at_level(logging.DEBUG, logger="polars_azurechat.schema.models"):
        schema = OutputSchema.from_user(model)
    assert READER_LOG in caplog.text
    assert schema.parse(answer) == expected


@pytest.mark.parametrize(
    ("answer", "path", "problem"),
    [
        ('{"priority": "urgent", "tags": []}', "priority", "'urgent' is not one of"),
        ('{"priority": "low", "tags": ["a", 3]}', "tags[1]", "3 is not of type"),
        ('{"priority": "low"}', "", "'tags' is a required property"),
        (
            '{"priority": "low", "tags": [], "x": 1}',
            "",
            "additional properties are not allowed ('x' unexpected)",
        ),
        ('{"priority": null, "tags": []}', "priority", "None is not one of"),
        ("[1, 2]", "", "is not of type 'object'"),
    ],
)
def test_dict_parse_errors_name_the_path(answer: str, path: str, problem: str) -> None:
    schema = OutputSchema.from_user(
        {
            "type": "object",
            "properties": {
                "priority": {"enum": ["low", "high"]},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["priority", "tags"],
        }
    )
    with pytest.raises(SchemaMismatchError) as info:
        schema.parse(answer)
    err = info.value
    assert err.path == path
    assert problem in err.problem
    assert str(err).startswith(
        f"answer does not match the schema: {path or '<root>'}: "
    )


def test_brief_example_message() -> None:
    schema = OutputSchema.from_user(
        {
            "type": "object",
            "properties": {"priority": {"type": "string", "enum": ["low", "high"]}},
            "required": ["priority"],
        }
    )
    with pytest.raises(SchemaMismatchError) as info:
        schema.parse('{"priority": "urgent"}')
    assert str(info.value) == (
        "answer does not match the schema: priority: 'urgent' is not one of "
        "['low', 'high']"
    )


def test_nested_path_through_lists_of_objects() -> None:
    schema = OutputSchema.from_user(Ticket.model_json_schema())
    bad = {
        **TICKET_ANSWER,
        "history": [{"city": "a", "zip": None}, {"city": 5, "zip": None}],
    }
    with pytest.raises(SchemaMismatchError) as info:
        schema.parse(json.dumps(bad))
    assert info.value.path == "history[1].city"
    bad = {**TICKET_ANSWER, "due": "2024-02-30"}
    with pytest.raises(
        SchemaMismatchError, match=r"due: '2024-02-30' is not a valid date"
    ):
        schema.parse(json.dumps(bad))


def test_pydantic_parse_errors_name_the_path() -> None:
    schema = OutputSchema.from_user(Ticket)
    with pytest.raises(SchemaMismatchError) as info:
        schema.parse(json.dumps({**TICKET_ANSWER, "priority": "urgent"}))
    assert info.value.path == "priority"
    assert "'urgent'" in str(info.value)
    assert str(info.value).startswith("answer does not match the schema: priority: ")
    bad = {**TICKET_ANSWER, "history": [{"zip": None}]}
    with pytest.raises(SchemaMismatchError) as info:
        schema.parse(json.dumps(bad))
    assert info.value.path == "history[0].city"
    assert "Field required" in str(info.value)


@pytest.mark.parametrize("source", [Ticket, TICKET_DTYPE], ids=["pydantic", "walker"])
@pytest.mark.parametrize("text", ['{"title": "cut', "", "not json"])
def test_invalid_json_says_so(source: Any, text: str) -> None:
    with pytest.raises(SchemaMismatchError) as info:
        OutputSchema.from_user(source).parse(text)
    assert info.value.json_error
    assert str(info.value).startswith("answer is not valid JSON")
    assert "max_tokens" in str(info.value)


@pytest.mark.parametrize(
    ("prop", "good", "bad", "problem"),
    [
        ({"type": "string", "pattern": "^[A-Z]+$"}, "AB", "ab", "does not match"),
        ({"type": "string", "minLength": 2}, "ab", "a", "shorter than 2"),
        ({"type": "string", "maxLength": 2}, "ab", "abc", "longer than 2"),
        ({"type": "integer", "minimum": 1}, 1, 0, "less than the minimum of 1"),
        ({"type": "integer", "maximum": 1}, 1, 2, "greater than the maximum of 1"),
        ({"type": "number", "exclusiveMinimum": 0}, 0.5, 0, "less than or equal"),
        ({"type": "number", "exclusiveMaximum": 1}, 0.5, 1, "greater than or equal"),
        ({"type": "number", "multipleOf": 0.5}, 1.5, 1.2, "not a multiple of 0.5"),
        (
            {"type": "array", "items": {"type": "integer"}, "minItems": 1},
            [1],
            [],
            "fewer",
        ),
        (
            {"type": "array", "items": {"type": "integer"}, "maxItems": 1},
            [1],
            [1, 2],
            "more",
        ),
        (
            {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
            [1, 2],
            [2, 2],
            "non-unique",
        ),
        ({"type": "boolean"}, True, 1, "is not of type 'boolean'"),
        ({"type": "integer"}, 1, True, "is not of type 'integer'"),
        ({"type": "integer"}, 1, 1.5, "is not of type 'integer'"),
        ({"type": "number"}, 1, "1", "is not of type 'number'"),
        (
            {"type": "string", "format": "date-time"},
            "2024-01-01T00:00:00Z",
            "soon",
            "valid date-time",
        ),
        ({"type": "string", "format": "time"}, "10:00:00", "25:00", "valid time"),
        ({"enum": [1, 2]}, 2, True, "is not one of [1, 2]"),
        ({"enum": ["a", 1]}, 1, "1", "is not one of"),
        (
            {
                "anyOf": [
                    {"type": "string", "pattern": "^a"},
                    {"type": "string", "pattern": "b$"},
                ]
            },
            "xb",
            "xx",
            "not valid under any of the given schemas",
        ),
    ],
)
def test_walker_checks_constraints(
    prop: dict[str, Any], good: Any, bad: Any, problem: str
) -> None:
    schema = OutputSchema.from_user(
        {"type": "object", "properties": {"p": prop}, "required": ["p"]}
    )
    schema.parse(json.dumps({"p": good}))
    with pytest.raises(SchemaMismatchError) as info:
        schema.parse(json.dumps({"p": bad}))
    assert info.value.path == "p"
    assert problem in info.value.problem


def test_mixed_enum_values_become_json_text() -> None:
    schema = OutputSchema.from_user(
        {"type": "object", "properties": {"p": {"enum": ["a", 1]}}, "required": ["p"]}
    )
    assert schema.parse('{"p": 1}') == {"p": "1"}
    assert schema.series([schema.parse('{"p": 1}')]).to_list() == [{"p": "1"}]


def test_struct_bounds_are_checked() -> None:
    schema = OutputSchema.from_user(pl.Struct({"small": pl.UInt8}))
    assert schema.parse('{"small": 255}') == {"small": 255}
    with pytest.raises(SchemaMismatchError, match="small: 256 is greater than"):
        schema.parse('{"small": 256}')


def test_parse_refuses_non_text() -> None:
    with pytest.raises(TypeError, match="not dict"):
        OutputSchema.from_user(Ticket).parse({"a": 1})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# series


@pytest.mark.parametrize("rows", [3, 3000], ids=["direct", "arrow"])
def test_series_builds_the_column(rows: int) -> None:
    schema = OutputSchema.from_user(Ticket)
    value = schema.parse(json.dumps(TICKET_ANSWER))
    values: list[dict[str, Any] | None] = [value] * rows
    values[1] = None
    series = schema.series(values, name="ticket")
    assert series.name == "ticket"
    assert series.dtype == TICKET_DTYPE
    assert series.len() == rows
    assert series.null_count() == 1
    assert series[0] == TICKET_VALUE
    assert series.struct.field("priority").cast(pl.String)[0] == "high"
    assert series.struct.field("seen_at").dt.hour()[0] == 8


def test_series_paths_agree() -> None:
    schema = OutputSchema.from_user(Ticket)
    value = schema.parse(json.dumps(TICKET_ANSWER))
    big = schema.series([value, None] * 1000)
    small = schema.series([value, None])
    assert big.head(2).equals(small)


def test_series_of_struct_input_keeps_its_dtype() -> None:
    dtype = pl.Struct(
        {"n": pl.Int16, "when": pl.Datetime("ms", "Europe/Paris"), "e": pl.Enum(["x"])}
    )
    schema = OutputSchema.from_user(dtype)
    value = schema.parse('{"n": 7, "when": "2024-06-01T12:00:00Z", "e": "x"}')
    for rows in (1, 2000):
        series = schema.series([value] * rows)
        assert series.dtype == dtype
        assert series.struct.field("when").dt.hour()[0] == 14  # 12:00 UTC in Paris
