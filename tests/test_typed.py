"""Typed answers end to end: response_format=Model through the engine, over HTTP.

Every test runs against the real emulator (its own reading of the schema answers each
request); request counts are the emulator's.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pytest
from pydantic import BaseModel, Field, SecretStr, field_serializer, field_validator

import polars_azurechat as pac
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator


class Kind(enum.Enum):
    bug = "bug"
    question = "question"


class Customer(BaseModel):
    name: str
    tier: int | None


class Everything(BaseModel):
    text: str
    count: int
    score: float
    ok: bool
    tags: list[str]
    customer: Customer
    level: Literal["low", "high"]
    kind: Kind
    note: str | None
    day: dt.date
    at: dt.datetime


EVERYTHING_DTYPE = pl.Struct(
    {
        "text": pl.String,
        "count": pl.Int64,
        "score": pl.Float64,
        "ok": pl.Boolean,
        "tags": pl.List(pl.String),
        "customer": pl.Struct({"name": pl.String, "tier": pl.Int64}),
        "level": pl.Enum(["low", "high"]),
        "kind": pl.Enum(["bug", "question"]),
        "note": pl.String,
        "day": pl.Date,
        "at": pl.Datetime("us", "UTC"),
    }
)


class Sum(BaseModel):
    total: int
    label: Literal["small", "large"]


SUM_DTYPE = pl.Struct({"total": pl.Int64, "label": pl.Enum(["small", "large"])})
PROVENANCE = (
    "request_id",
    "model",
    "system_fingerprint",
    "deployment",
    "latency_ms",
    "content_filter",
    "response_id",
    "reasoning_tokens",
    "cached_tokens",
    "service_tier",
    "prompt_filter",
)
HOW = ["eager", "lazy", "streaming"]


def collect(frame: pl.DataFrame, expr: pl.Expr, how: str) -> pl.DataFrame:
    if how == "eager":
        return frame.select(expr)
    lazy = frame.lazy().select(expr)
    if how == "lazy":
        return lazy.collect()
    return lazy.collect(engine="streaming")


# -- the dtype, before any request ----------------------------------------------------


def test_every_mapping_is_the_column_dtype_and_the_values_fit(
    emulator: Emulator, config: ChatConfig
) -> None:
    lf = pl.LazyFrame({"q": ["What is 20 + 22?", "A printer is on fire"]})
    lf = lf.with_columns(
        a=pl.col("q").chat.complete(config=config, response_format=Everything)
    )
    assert lf.collect_schema()["a"] == EVERYTHING_DTYPE
    assert emulator.stats()["requests"] == 0
    out = lf.collect()
    assert out.schema["a"] == EVERYTHING_DTYPE
    rows = out["a"].to_list()
    assert rows[0]["count"] == 42  # arithmetic fills integers
    for row in rows:
        Everything.model_validate(row)  # every value fits the model
        assert isinstance(row["day"], dt.date)
        assert row["at"].tzinfo is not None
    assert emulator.stats()["requests"] == 2


@pytest.mark.parametrize(
    "response_format",
    [
        Sum,
        {
            "title": "Sum",
            "type": "object",
            "properties": {
                "total": {"type": "integer"},
                "label": {"enum": ["small", "large"]},
            },
            "required": ["total", "label"],
        },
        {
            "type": "json_schema",
            "json_schema": {
                "name": "Sum",
                "schema": {
                    "type": "object",
                    "properties": {
                        "total": {"type": "integer"},
                        "label": {"enum": ["small", "large"]},
                    },
                    "required": ["total", "label"],
                    "additionalProperties": False,
                },
            },
        },
        SUM_DTYPE,
    ],
    ids=["pydantic", "json_schema", "openai_json_schema", "struct"],
)
def test_model_dict_and_struct_give_the_same_column(
    emulator: Emulator, config: ChatConfig, response_format: Any
) -> None:
    lf = pl.LazyFrame({"q": ["What is 40 + 2?", "What is 1 + 1?"]}).select(
        pl.col("q").chat.complete(config=config, response_format=response_format)
    )
    schema = lf.collect_schema()
    assert schema["q"] == SUM_DTYPE
    assert emulator.stats()["requests"] == 0
    # unnest in the lazy plan: the fields are columns before anything is sent
    unnested = lf.unnest("q")
    assert unnested.collect_schema().names() == ["total", "label"]
    assert emulator.stats()["requests"] == 0
    out = unnested.collect()
    assert out["total"].to_list() == [42, 2]
    assert out.schema["label"] == pl.Enum(["small", "large"])


def test_struct_output_dtype_is_known_and_carries_parsed(
    emulator: Emulator, config: ChatConfig
) -> None:
    lf = pl.LazyFrame({"q": ["What is 3 + 4?"]}).select(
        pl.col("q").chat.complete(config=config, response_format=Sum, output="struct")
    )
    dtype = lf.collect_schema()["q"]
    lf.explain()
    assert emulator.stats()["requests"] == 0
    assert isinstance(dtype, pl.Struct)
    names = [f.name for f in dtype.fields]
    assert names[:6] == [
        "content",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "attempts",
        "error",
    ]
    assert dtype.to_schema()["parsed"] == SUM_DTYPE
    assert names[7:] == list(PROVENANCE)
    row = lf.collect()["q"][0]
    assert row["parsed"]["total"] == 7
    assert json.loads(row["content"]) == {"total": 7, "label": row["parsed"]["label"]}


def test_text_and_json_object_stay_strings(
    emulator: Emulator, config: ChatConfig
) -> None:
    df = pl.DataFrame({"q": ["What is 1 + 1?"]})
    plain = df.select(pac.complete("q", config=config))
    text = df.select(pac.complete("q", config=config, response_format={"type": "text"}))
    for out in (plain, text):
        assert out.schema["q"] == pl.String
        assert out["q"].to_list() == ["2"]
    struct = df.select(pac.complete("q", config=config, output="struct"))
    assert "parsed" not in struct.schema["q"].to_schema()
    # JSON mode: a String of JSON; a row without the word 'json' fails before sending
    asks = pl.DataFrame({"q": ["What is 1 + 1? Answer in JSON.", "What is 1 + 1?"]})
    emulator.reset()
    as_json = asks.select(
        pac.complete(
            "q", config=config, response_format={"type": "json_object"}, output="struct"
        )
    )
    rows = as_json["q"].to_list()
    assert json.loads(rows[0]["content"]) == {"answer": "2"}
    assert rows[1]["error"].startswith(
        "InputError: response_format json_object needs the word 'json'"
    )
    assert emulator.stats()["requests"] == 1
    planned = pac.plan(asks["q"], response_format={"type": "json_object"})
    assert planned.unsendable == 1 and planned.requests == 1


@pytest.mark.parametrize(
    ("response_format", "words"),
    [
        (int, "response_format must be a pydantic BaseModel"),
        ({"type": "object", "properties": {"m": {"type": "object"}}}, "m: an object"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "needs"),
    ],
)
def test_a_wrong_type_is_refused_before_any_request(
    emulator: Emulator, config: ChatConfig, response_format: Any, words: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=words):
        pl.col("q").chat.complete(config=config, response_format=response_format)
    with pytest.raises((TypeError, ValueError), match=words):
        pac.plan(["hi"], response_format=response_format)
    assert emulator.stats()["requests"] == 0


def test_the_request_carries_the_strict_schema(
    emulator: Emulator, config: ChatConfig
) -> None:
    with pac.Completer(config=config, response_format=Sum) as job:
        fmt = job.params["response_format"]
        assert fmt["type"] == "json_schema"
        assert fmt["json_schema"]["strict"] is True
        assert fmt["json_schema"]["name"] == "Sum"
        assert fmt["json_schema"]["schema"]["additionalProperties"] is False
        assert job.output_schema is not None and job.output_schema.dtype == SUM_DTYPE
        assert job.run(["What is 5 + 5?"])[0]["total"] == 10
        # Azure counts the schema in the prompt: the emulator does too
        typed_prompt = job.summary().prompt_tokens
    with pac.Completer(config=config) as plain:
        plain.run(["What is 5 + 5?"])
        assert typed_prompt > plain.summary().prompt_tokens


# -- validation, retries, refusal, truncation -----------------------------------------


def test_an_answer_that_breaks_the_schema_is_retried_then_fails_alone(
    emulator: Emulator, config: ChatConfig
) -> None:
    df = pl.DataFrame(
        {"q": ["What is 1 + 1?", "[emu:bad_json] What is 2 + 2?", "What is 3 + 3?"]}
    )
    with pac.Completer(
        config=config, response_format=Sum, output="struct", max_attempts=3
    ) as job:
        out = df.select(job.expr("q"))
        summary = job.summary()
    rows = out["q"].to_list()
    # the row fails after exactly max_attempts requests, at once (no backoff)
    assert emulator.stats()["requests"] == 2 + 3
    assert [r["parsed"] and r["parsed"]["total"] for r in rows] == [2, None, 6]
    bad = rows[1]
    assert bad["attempts"] == 3
    assert bad["error"].startswith(
        "SchemaValidationError: the answer does not match the schema 'Sum': total: "
        "Field required"
    )
    assert bad["content"] is None
    assert [r["error"] for r in (rows[0], rows[2])] == [None, None]
    assert summary.failed == 1 and summary.answered == 2
    assert summary.failed_attempts == {"SchemaValidationError": 3}
    assert summary.requests == 5
    err = job.last_error
    assert err is None  # on_error="null": the run raised nothing


class Named(BaseModel):
    full_name: str = Field(serialization_alias="fullName")


class Inner(BaseModel):
    city: str = Field(validation_alias="town")


class Outer(BaseModel):
    places: list[Inner]


class Login(BaseModel):
    user: str
    password: SecretStr | None


class Hashed(BaseModel):
    total: int

    @field_serializer("total")
    def tag(self, value: int) -> str:
        return f"#{value}"


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (Named, "Named.full_name is asked for as 'full_name' but dumped as 'fullName'"),
        (Outer, "Inner.city is asked for as 'town' but dumped as 'city'"),
        (Login, "Login.password is a SecretStr, which dumps masked.*use str"),
    ],
)
def test_a_field_named_two_ways_is_refused_before_any_request(
    emulator: Emulator, config: ChatConfig, model: type[BaseModel], words: str
) -> None:
    # the column would have lost the value (null, no error): refused instead
    with pytest.raises(TypeError, match=words):
        pl.col("q").chat.complete(config=config, response_format=model)
    assert emulator.stats()["requests"] == 0


@pytest.mark.parametrize("repair", ["resend", "teach"])
def test_a_dump_that_does_not_fit_the_column_fails_once_not_retried(
    emulator: Emulator, config: ChatConfig, repair: Literal["resend", "teach"]
) -> None:
    # the answer is valid; the model's serializer turns the int into a string
    df = pl.DataFrame({"q": ["What is 6 x 7?", "What is 1 + 1?"]})
    with pac.Completer(
        config=config, response_format=Hashed, output="struct", repair=repair
    ) as job:
        rows = df.select(job.expr("q"))["q"].to_list()
        summary = job.summary()
    assert emulator.stats()["requests"] == 2  # one each: a resend dumps the same way
    for row in rows:
        assert row["attempts"] == 1 and row["parsed"] is None
        assert row["error"].startswith(
            "AnswerConversionError: the answer validated against 'Hashed', but the "
            "model's dump does not fit the column"
        )
    assert summary.failed_attempts == {"AnswerConversionError": 2}
    assert summary.retries == 0


def test_a_validation_retry_can_succeed(emulator: Emulator, config: ChatConfig) -> None:
    seen: list[int] = []

    class Flaky(BaseModel):
        total: int

        @field_validator("total")
        @classmethod
        def second_time_lucky(cls, v: int) -> int:
            seen.append(v)
            if len(seen) == 1:
                msg = "not this time"
                raise ValueError(msg)
            return v

    with pac.Completer(
        config=config, response_format=Flaky, output="struct", max_attempts=3
    ) as job:
        rows = job.run(["What is 20 + 1?"])
        summary = job.summary()
    assert rows[0] is not None
    assert rows[0]["parsed"] == {"total": 21}
    assert rows[0]["attempts"] == 2
    assert rows[0]["error"] is None
    assert emulator.stats()["requests"] == 2
    assert summary.retries == 1
    assert summary.failed_attempts == {"SchemaValidationError": 1}


def test_the_error_names_the_problem_not_the_answer(
    emulator: Emulator, config: ChatConfig
) -> None:
    class Strict(BaseModel):
        title: str

        @field_validator("title")
        @classmethod
        def never(cls, v: str) -> str:
            msg = "titles are refused here"
            raise ValueError(msg)

    secret = "my-private-prompt-text-4711"
    with pac.Completer(
        config=config, response_format=Strict, output="struct", max_attempts=2
    ) as job:
        rows = job.run([f"Summarise {secret}"])
    error = rows[0]["error"]
    assert error.startswith(
        "SchemaValidationError: the answer does not match the schema 'Strict': "
        "title: Value error, titles are refused here (got a string of "
    )
    assert secret not in error
    assert emulator.stats()["requests"] == 2


def test_on_error_raise_names_the_invalid_rows(
    emulator: Emulator, config: ChatConfig
) -> None:
    df = pl.DataFrame({"q": ["What is 1 + 1?", "[emu:bad_json] x"]})
    with pytest.raises(pac.CompletionFailed) as info:
        df.select(
            pac.complete(
                "q",
                config=config,
                response_format=Sum,
                on_error="raise",
                max_attempts=2,
            )
        )
    assert info.value.row_indices == [1]
    assert "SchemaValidationError" in str(info.value)


def test_a_refusal_is_an_error_that_says_so_and_is_not_retried(
    emulator: Emulator, config: ChatConfig
) -> None:
    with pac.Completer(config=config, response_format=Sum, output="struct") as job:
        rows = job.run(["[emu:refuse] What is 1 + 1?", "What is 2 + 2?"])
    refused = rows[0]
    assert refused is not None
    assert refused["error"].startswith("RefusalError: the model refused to answer")
    assert refused["parsed"] is None and refused["content"] is None
    assert refused["attempts"] == 1
    assert refused["request_id"] is not None  # the refusal's provenance is kept
    assert rows[1] is not None and rows[1]["parsed"]["total"] == 4
    assert emulator.stats()["requests"] == 2


@pytest.mark.parametrize("on_truncated", ["keep", "error"])
def test_a_truncated_typed_answer_is_always_an_error(
    emulator: Emulator, config: ChatConfig, tmp_path: Path, on_truncated: str
) -> None:
    cache = tmp_path / "c.sqlite"
    kw: dict[str, Any] = {
        "config": config,
        "response_format": Everything,
        "output": "struct",
        "max_tokens": 5,
        "on_truncated": on_truncated,
        "cache": cache,
    }
    for _ in range(2):  # never cached: the rerun sends it again
        with pac.Completer(**kw) as job:
            rows = job.run(["What is 1 + 1?"])
        row = rows[0]
        assert row is not None
        assert row["error"].startswith(
            "TruncatedError: the typed answer was cut at max_tokens=5"
        )
        assert row["finish_reason"] == "length"
        assert row["attempts"] == 1  # not retried: the same max_tokens cuts it again
    assert emulator.stats()["requests"] == 2


def test_a_filtered_answer_names_its_categories(
    emulator: Emulator, config: ChatConfig
) -> None:
    with pac.Completer(config=config, response_format=Sum, output="struct") as job:
        rows = job.run(["[emu:filter_output] What is 1 + 1?"])
    row = rows[0]
    assert row is not None
    assert row["error"].startswith("ContentFilterError")
    assert row["content_filter"] == ["violence"]


# -- provenance ---------------------------------------------------------------------


def test_struct_output_carries_provenance(
    emulator: Emulator, config: ChatConfig
) -> None:
    df = pl.DataFrame({"q": ["What is 1 + 1?", "What is 2 + 2?", None]})
    out = df.select(pac.complete("q", config=config, output="struct")).unnest("q")
    assert out.schema["latency_ms"] == pl.Float64
    assert out.schema["content_filter"] == pl.List(pl.String)
    answered = out.head(2)
    ids = answered["request_id"].to_list()
    assert all(i is not None and i.startswith("emu-") for i in ids)
    assert len(set(ids)) == 2
    assert answered["model"].to_list() == ["gpt-4o-mini"] * 2
    assert answered["system_fingerprint"].to_list() == ["fp_emulator"] * 2
    assert answered["deployment"].to_list() == ["gpt-4o-mini"] * 2
    assert all(ms > 0 for ms in answered["latency_ms"])
    assert answered["content_filter"].to_list() == [[], []]
    assert out.row(2, named=True) == dict.fromkeys(out.columns)  # null row: null struct


def test_provenance_names_the_deployment_of_a_pool_that_answered(
    emulator: Emulator, config: ChatConfig
) -> None:
    emulator.take_down("ptu")
    pool = [pac.Deployment(name="ptu"), pac.Deployment(name="paygo", priority=1)]
    with pac.Completer(
        config=config, deployments=pool, output="struct", response_format=Sum
    ) as job:
        rows = job.run([f"What is {i} + 1?" for i in range(4)])
    assert all(r is not None for r in rows)
    assert [r["deployment"] for r in rows] == ["paygo"] * 4
    assert [r["parsed"]["total"] for r in rows] == [1, 2, 3, 4]


def test_provenance_through_the_sdk_client(emulator: Emulator) -> None:
    import openai

    client = openai.AzureOpenAI(
        azure_endpoint=emulator.url, api_key=emulator.api_key, api_version="2024-10-21"
    )
    with pac.Completer(
        client=client,
        deployment="gpt-4o-mini",
        output="struct",
        response_format=Sum,
    ) as job:
        rows = job.run(["What is 9 + 9?"])
    row = rows[0]
    assert row is not None
    assert row["parsed"]["total"] == 18
    assert row["request_id"] == "emu-1"
    assert row["system_fingerprint"] == "fp_emulator"
    assert row["deployment"] == "gpt-4o-mini"
    assert row["latency_ms"] > 0


# -- prompts built in Polars, eager / lazy / streaming --------------------------------


@pytest.mark.parametrize("how", HOW)
def test_messages_with_expressions_feed_typed_answers(
    emulator: Emulator, config: ChatConfig, how: str
) -> None:
    frame = pl.DataFrame(
        {
            "a": [1, 2, None, 40, 7],
            "b": [2, 3, 4, 2, 8],
            "tone": ["x", "y", "z", "w", "v"],
        }
    )
    prompt = pac.messages(
        system=pl.format("Tone: {}", pl.col("tone")),
        examples=[("What is 1 + 1?", '{"total": 2, "label": "small"}')],
        user=pl.format("What is {} + {}?", pl.col("a"), pl.col("b")),
    )
    expr = prompt.chat.complete(config=config, response_format=Sum).alias("answer")
    out = collect(frame, expr, how)
    assert out.schema["answer"] == SUM_DTYPE
    totals = out.unnest("answer")["total"].to_list()
    assert totals == [3, 5, None, 42, 15]  # the null row stays null, rows aligned
    assert emulator.stats()["requests"] == 4


@pytest.mark.parametrize("how", HOW)
def test_failing_rows_keep_the_column_aligned(
    emulator: Emulator, config: ChatConfig, how: str
) -> None:
    prompts = [
        f"[emu:bad_json] What is {i} + 0?" if i % 3 == 1 else f"What is {i} + 0?"
        for i in range(30)
    ]
    frame = pl.DataFrame({"q": prompts})
    expr = pl.col("q").chat.complete(
        config=config, response_format=Sum, output="struct", max_attempts=2
    )
    out = collect(frame, expr, how).unnest("q")
    totals = out["parsed"].struct.field("total").to_list()
    assert totals == [None if i % 3 == 1 else i for i in range(30)]
    failed = out["error"].is_not_null().to_list()
    assert failed == [i % 3 == 1 for i in range(30)]
    assert emulator.stats()["requests"] == 20 + 10 * 2


def test_complete_many_and_namespace_agree(
    emulator: Emulator, config: ChatConfig
) -> None:
    prompts = ["What is 4 + 4?", None, "What is 6 + 6?"]
    many = pac.complete_many(prompts, config=config, response_format=Sum)
    assert [m and m["total"] for m in many] == [8, None, 12]  # type: ignore[index,comparison-overlap]
    col = pl.DataFrame({"q": prompts}).select(
        pl.col("q").chat.complete(config=config, response_format=Sum)
    )
    assert col["q"].to_list() == many


# -- cache ----------------------------------------------------------------------------


def test_a_cache_hit_returns_the_typed_answer(
    emulator: Emulator, config: ChatConfig, tmp_path: Path
) -> None:
    cache = tmp_path / "answers.sqlite"
    df = pl.DataFrame({"q": ["What is 1 + 2?", "[emu:bad_json] What is 5 + 5?"]})

    def run(**kw: Any) -> pl.DataFrame:
        expr = pl.col("q").chat.complete(
            config=config, cache=cache, max_attempts=1, output="struct", **kw
        )
        return df.select(expr).unnest("q")

    first = run(response_format=Sum)
    assert emulator.stats()["requests"] == 2
    again = run(response_format=Sum)
    # the answered row from the cache, the failed one (never cached) sent again
    assert emulator.stats()["requests"] == 3
    assert again["parsed"].to_list() == first["parsed"].to_list()
    assert again["parsed"][0] == {"total": 3, "label": again["parsed"][0]["label"]}
    assert again["attempts"].to_list() == [0, 1]
    assert again["error"][1].startswith("SchemaValidationError")
    # the schema is part of the key: another schema (or none) is another request
    run(response_format=pl.Struct({"total": pl.Int64}))
    assert emulator.stats()["requests"] == 5
    run()
    assert emulator.stats()["requests"] == 7


def test_a_cached_answer_the_validators_now_refuse_is_sent_again(
    emulator: Emulator, config: ChatConfig, tmp_path: Path
) -> None:
    cache = tmp_path / "answers.sqlite"
    refuse = {"on": False}

    class Total(BaseModel):
        total: int

        @field_validator("total")
        @classmethod
        def maybe(cls, v: int) -> int:
            if refuse["on"]:
                msg = "refused now"
                raise ValueError(msg)
            return v

    kw: dict[str, Any] = {
        "config": config,
        "cache": cache,
        "response_format": Total,
        "max_attempts": 1,
    }
    assert pac.complete_many(["What is 2 + 2?"], **kw) == [{"total": 4}]
    assert pac.complete_many(["What is 2 + 2?"], **kw) == [{"total": 4}]
    assert emulator.stats()["requests"] == 1
    refuse["on"] = True
    assert pac.complete_many(["What is 2 + 2?"], **kw) == [None]
    assert emulator.stats()["requests"] == 2


# -- plan -----------------------------------------------------------------------------


def test_plan_counts_the_schema_tokens(emulator: Emulator) -> None:
    rows = ["What is 1 + 1?", "What is 2 + 2?"]
    plain = pac.plan(rows, max_tokens=50)
    typed = pac.plan(rows, max_tokens=50, response_format=Everything)
    extra = pac.OutputSchema.from_user(Everything).schema_tokens()
    assert extra > 50
    assert typed.prompt_tokens == plain.prompt_tokens + 2 * extra
    assert typed.request_tokens == plain.request_tokens + 2 * extra
    assert emulator.stats()["requests"] == 0


def test_invalid_attempts_are_logged_at_debug_only(
    emulator: Emulator, config: ChatConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="polars_azurechat")
    secret = "very-private-words-0815"
    pac.complete_many(
        [f"[emu:bad_json] {secret}"], config=config, response_format=Sum, max_attempts=2
    )
    invalid = [r for r in caplog.records if "invalid typed answer" in r.getMessage()]
    assert [r.levelno for r in invalid] == [logging.DEBUG] * 2
    assert secret not in caplog.text


def test_the_engine_key_is_the_cache_key(config: ChatConfig) -> None:
    from polars_azurechat._types import ChatRequest
    from polars_azurechat.engine.frontdoor import RequestShape
    from polars_azurechat.store.sqlite import request_key

    with pac.Completer(config=config, response_format=Sum, max_tokens=9) as job:
        shape = job.engine.shape
        for text in ["é ü", 'quote " and \\ backslash', "What is 1 + 1?"]:
            messages = [{"role": "user", "content": text}]
            assert shape.key(ChatRequest(messages)) == request_key(
                host=shape.host,
                deployment=shape.deployment,
                messages=messages,
                params=job.params,
            )
        x = ChatRequest([{"role": "user", "content": "x"}])
        other = RequestShape(
            {**job.params, "max_tokens": 10},
            host=shape.host,
            deployment=shape.deployment,
        )
        assert other.key(x) != shape.key(x)  # parameters changed: the key follows
