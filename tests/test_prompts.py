from __future__ import annotations

import re
from typing import Any

import polars as pl
import pytest

from polars_azurechat.config import ChatConfig
from polars_azurechat.engine.convert import check_dtype, series_to_requests
from polars_azurechat.prompts import MESSAGES_DTYPE, messages

FRAME = pl.DataFrame(
    {
        "text": ["6 x 7", None, "1 + 1", "2 - 5"],
        "persona": ["Be brief.", "Be kind.", None, "Be exact."],
        "shot_in": ["1 + 2", "x", "3 + 4", None],
        "shot_out": ["3", "y", None, "z"],
        "n": [1, 2, 3, 4],
    }
)


def run(frame: pl.DataFrame, expr: pl.Expr, how: str) -> pl.Series:
    if how == "eager":
        return frame.select(expr).to_series()
    lazy = frame.lazy().select(expr)
    if how == "lazy":
        return lazy.collect().to_series()
    return lazy.collect(engine="streaming").to_series()


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


HOW = ["eager", "lazy", "streaming"]


@pytest.mark.parametrize("how", HOW)
def test_system_examples_user_in_order(how: str) -> None:
    expr = messages(
        system="You do arithmetic.",
        examples=[("What is 1 + 1?", "2"), ("What is 2 x 3?", "6")],
        user=pl.format("What is {}?", pl.col("text")),
    )
    out = run(FRAME, expr, how)
    assert out.name == "messages"
    assert out.dtype == MESSAGES_DTYPE
    assert out.to_list() == [
        [
            msg("system", "You do arithmetic."),
            msg("user", "What is 1 + 1?"),
            msg("assistant", "2"),
            msg("user", "What is 2 x 3?"),
            msg("assistant", "6"),
            msg("user", f"What is {text}?"),
        ]
        if text is not None
        else None
        for text in FRAME["text"]
    ]


@pytest.mark.parametrize("how", HOW)
def test_expressions_everywhere_and_nulls(how: str) -> None:
    expr = messages(
        system=pl.col("persona"),
        examples=[(pl.col("shot_in"), pl.col("shot_out")), ("fixed in", "fixed out")],
        user=pl.col("text"),
        assistant=pl.lit("Answer:"),
    )
    out = run(FRAME, expr, how).to_list()
    assert out[0] == [
        msg("system", "Be brief."),
        msg("user", "1 + 2"),
        msg("assistant", "3"),
        msg("user", "fixed in"),
        msg("assistant", "fixed out"),
        msg("user", "6 x 7"),
        msg("assistant", "Answer:"),
    ]
    # user null: no list at all (the engine sends nothing for the row)
    assert out[1] is None
    # system null: left out; an example with a null part: both of its messages out
    assert out[2] == [
        msg("user", "fixed in"),
        msg("assistant", "fixed out"),
        msg("user", "1 + 1"),
        msg("assistant", "Answer:"),
    ]
    assert out[3] == [
        msg("system", "Be exact."),
        msg("user", "fixed in"),
        msg("assistant", "fixed out"),
        msg("user", "2 - 5"),
        msg("assistant", "Answer:"),
    ]


@pytest.mark.parametrize("how", HOW)
def test_only_literals_broadcast(how: str) -> None:
    expr = messages(system="s", user="u")
    frame = FRAME.select("n")
    if how == "eager":
        out = frame.with_columns(expr)["messages"]
    else:
        lazy = frame.lazy().with_columns(expr)
        out = (lazy.collect() if how == "lazy" else lazy.collect(engine="streaming"))[
            "messages"
        ]
    assert out.dtype == MESSAGES_DTYPE
    assert out.to_list() == [[msg("system", "s"), msg("user", "u")]] * 4


def test_literal_user_with_expression_system() -> None:
    out = FRAME.select(messages(system=pl.col("persona"), user="Hello")).to_series()
    assert out.to_list()[2] == [msg("user", "Hello")]
    assert out.null_count() == 0


def test_non_string_expressions_are_cast() -> None:
    out = FRAME.select(messages(user=pl.col("n") * 10)).to_series()
    assert out.to_list()[0] == [msg("user", "10")]


def test_examples_accept_a_generator() -> None:
    pairs = ((a, b) for a, b in [["a", "b"]])
    out = FRAME.head(1).select(messages(examples=pairs, user="c")).to_series()
    assert out.to_list() == [
        [msg("user", "a"), msg("assistant", "b"), msg("user", "c")]
    ]


def test_the_engine_takes_the_column() -> None:
    out = FRAME.select(messages(system="s", user=pl.col("text"))).to_series()
    check_dtype(out.dtype)
    requests = series_to_requests(out)
    assert requests[1] is None
    first = requests[0]
    assert first is not None
    assert first.error is None
    assert first.messages == [msg("system", "s"), msg("user", "6 x 7")]


def test_complete_answers_the_rows(config: ChatConfig) -> None:
    frame = FRAME.select("text")
    out = frame.with_columns(
        answer=messages(
            system="Answer with a number.",
            user=pl.format("What is {}?", pl.col("text")),
        ).chat.complete(config=config, max_tokens=20)
    )
    assert out["answer"].to_list() == ["42", None, "2", "-3"]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"user": 3}, "user must be a str or a pl.Expr, not int"),
        ({"user": None}, "user must be a str or a pl.Expr, not NoneType"),
        ({"user": pl.Series(["a"])}, "user must be a str or a pl.Expr, not Series"),
        ({"user": "u", "system": 1.5}, "system must be a str, a pl.Expr or None"),
        (
            {"user": "u", "assistant": b"x"},
            "assistant must be a str, a pl.Expr or None",
        ),
        ({"user": "u", "examples": "ab"}, "examples must be an iterable"),
        ({"user": "u", "examples": 5}, "examples must be an iterable"),
        ({"user": "u", "examples": [("a",)]}, "examples[0] must be an (input, output)"),
        ({"user": "u", "examples": ["ab"]}, "examples[0] must be an (input, output)"),
        ({"user": "u", "examples": [("a", "b"), ("c", 1)]}, "examples[1][1] must be"),
    ],
)
def test_wrong_arguments_are_named(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(TypeError) as info:
        messages(**kwargs)
    assert words in str(info.value)


def test_user_is_keyword_only_and_required() -> None:
    with pytest.raises(TypeError):
        messages("hello")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        messages()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("column", "values", "words"),
    [
        ("tags", [["a", "b"]], "user must give text (String, or a number, a date"),
        ("meta", [{"x": 1}], "not Struct({'x': Int64})"),
    ],
)
def test_a_nested_column_is_refused_naming_the_argument_and_its_dtype(
    column: str, values: list[Any], words: str
) -> None:
    # a Struct would otherwise be sent as the text "{1}", a List fail Polars' cast
    df = pl.DataFrame({column: values, "q": ["hi"]})
    with pytest.raises(TypeError, match=re.escape(words)):
        df.select(messages(user=pl.col(column)))
    with pytest.raises(TypeError, match="messages\\(\\): system must give text"):
        df.lazy().select(messages(system=pl.col(column), user=pl.col("q"))).collect(
            engine="streaming"
        )
    if column == "tags":  # the hint: join a row's texts first
        with pytest.raises(TypeError, match=re.escape(".list.join")):
            df.select(messages(user="u", examples=[(pl.col(column), "a")]))


def test_numbers_and_categories_are_sent_as_their_text() -> None:
    df = pl.DataFrame(
        {"n": [3], "c": ["red"]}, schema={"n": pl.Int8, "c": pl.Categorical}
    )
    out = df.select(messages(system=pl.col("c"), user=pl.col("n")))
    assert out["messages"].to_list() == [
        [{"role": "system", "content": "red"}, {"role": "user", "content": "3"}]
    ]
