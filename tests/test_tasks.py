"""Tasks end to end: classify, filter, extract, sentiment, summarize, translate.

Every test runs against the real emulator over HTTP (it picks the label a text names,
decides a condition quoted in the system message by the words the text shares with
it, and writes its own log-probabilities); request counts are the emulator's.
"""

from __future__ import annotations

import contextlib
import enum
import math
from pathlib import Path
from typing import Any

import openai
import polars as pl
import pytest
from pydantic import BaseModel

import polars_azurechat as pac
from polars_azurechat import tasks
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator

from ._redis import redis_server
from .test_images import png

TICKETS = [
    "My billing address is wrong on the invoice",
    "The parcel was lost in shipping",
    None,
    "Please refund the double charge",
    "The app crashes at login",
]
LABELS = ["billing", "shipping", "login"]


class Topic(enum.Enum):
    billing = "billing"
    shipping = "shipping"


class Order(BaseModel):
    total: int
    rush: bool


def _frame() -> pl.LazyFrame:
    return pl.LazyFrame({"ticket": TICKETS})


def test_every_task_s_dtype_is_known_before_any_request(
    emulator: Emulator, config: ChatConfig
) -> None:
    col = pl.col("ticket")
    q = _frame().select(
        topic=col.chat.classify(LABELS, config=config),
        sure=col.chat.classify(LABELS, confidence=True, config=config),
        refund=col.chat.filter("asks for a refund", config=config),
        refund_sure=col.chat.filter("refund", confidence=True, config=config),
        mood=col.chat.sentiment(config=config),
        order=col.chat.extract(Order, config=config),
        short=col.chat.summarize(max_words=10, config=config),
        french=col.chat.translate("French", config=config),
        enum_topic=tasks.classify(col, Topic, config=config),
    )
    schema = q.collect_schema()
    expected: dict[str, Any] = {
        "topic": pl.Enum(LABELS),
        "sure": pl.Struct({"label": pl.Enum(LABELS), "confidence": pl.Float64}),
        "refund": pl.Boolean,
        "refund_sure": pl.Struct({"match": pl.Boolean, "confidence": pl.Float64}),
        "mood": pl.Enum(["positive", "neutral", "negative"]),
        "order": pl.Struct({"total": pl.Int64, "rush": pl.Boolean}),
        "short": pl.String,
        "french": pl.String,
        "enum_topic": pl.Enum(["billing", "shipping"]),
    }
    assert schema == pl.Schema(expected)
    assert emulator.stats()["requests"] == 0


def test_classify_gives_each_row_its_label(
    emulator: Emulator, config: ChatConfig
) -> None:
    out = _frame().with_columns(
        topic=tasks.classify("ticket", LABELS, config=config, max_tokens=20)
    )
    df = out.collect()
    assert df["topic"].dtype == pl.Enum(LABELS)
    # the emulator answers the label a text names, else one by a hash: never outside
    assert df["topic"].to_list()[:3] == ["billing", "shipping", None]
    assert df["topic"][4] == "login"
    assert df["topic"][3] in LABELS
    assert emulator.stats()["requests"] == 4  # the null row sends nothing


def test_labels_as_an_enum_a_pl_enum_or_described(
    emulator: Emulator, config: ChatConfig
) -> None:
    df = pl.DataFrame({"t": ["shipping was slow", "billing twice"]})
    a = df.select(tasks.classify("t", Topic, config=config))["t"]
    b = df.select(tasks.classify("t", pl.Enum(["billing", "shipping"]), config=config))
    described = {"billing": "invoices, charges", "shipping": "parcels, delivery"}
    c = df.select(tasks.classify("t", described, config=config))["t"]
    assert a.to_list() == b["t"].to_list() == c.to_list() == ["shipping", "billing"]
    prompt = tasks.explain_prompt("classify", labels=described)
    assert "- billing: invoices, charges\n- shipping: parcels, delivery" in prompt


def test_filter_keeps_the_rows_that_meet_the_condition(
    emulator: Emulator, config: ChatConfig
) -> None:
    kept = (
        _frame()
        .filter(pl.col("ticket").chat.filter("asks for a refund", config=config))
        .collect()
    )
    assert kept["ticket"].to_list() == ["Please refund the double charge"]
    flags = (
        _frame()
        .select(pl.col("ticket").chat.filter("lost parcels", config=config))
        .collect()["ticket"]
    )
    assert flags.to_list() == [False, True, None, False, False]


@pytest.mark.parametrize("engine", ["in-memory", "streaming"])
def test_filter_after_a_cheap_filter_is_sent_only_the_rows_it_kept(
    emulator: Emulator, config: ChatConfig, engine: Any
) -> None:
    # Polars merges elementwise predicates into one (every row evaluated): filter()
    # is not elementwise, so the cheap filter runs first
    lf = pl.LazyFrame({"id": range(200), "text": [f"refund {i}" for i in range(200)]})
    llm = pl.col("text").chat.filter("asks for a refund", config=config)
    out = lf.filter(pl.col("id") < 10).filter(llm).collect(engine=engine)
    assert out["id"].to_list() == list(range(10))
    assert emulator.stats()["requests"] == 10
    # classify stays elementwise: a filter written after it is applied before it
    emulator.reset()
    topic = pl.col("text").chat.classify(["billing", "refund"], config=config)
    out = lf.with_columns(t=topic).filter(pl.col("id") < 5).collect(engine=engine)
    assert out.height == 5 and emulator.stats()["requests"] == 5


def test_a_prompt_is_readable_and_can_be_replaced(
    emulator: Emulator, config: ChatConfig
) -> None:
    default = tasks.explain_prompt("filter", condition="asks for a refund")
    assert default.startswith(
        'Decide whether the text the user sends meets this condition: "asks for a '
        'refund"'
    )
    told = tasks.explain_prompt(
        "filter", condition="asks for a refund", instructions="Be strict."
    )
    assert "\nBe strict.\n" in told
    assert tasks.PROMPTS["filter"] == tasks.FILTER_PROMPT
    # the system message sent is the prompt given: the emulator decides by the words
    # quoted in it, here not the condition's
    mine = 'Answer true when the text is about "crashes" ({condition} is wrong).'
    out = _frame().select(
        pl.col("ticket").chat.filter("asks for a refund", prompt=mine, config=config)
    )
    assert out.collect()["ticket"].to_list() == [False, False, None, False, True]
    # instructions given to a prompt without {instructions} end it, on a line; a
    # prompt without the task's own argument is refused (it would not be sent)
    assert tasks.explain_prompt(
        "filter", condition="x", prompt=mine, instructions="Be strict."
    ) == ('Answer true when the text is about "crashes" (x is wrong).\nBe strict.')
    with pytest.raises(ValueError, match=r"prompt= has no \{condition\}"):
        tasks.explain_prompt("filter", condition="x", prompt="Is it a crash?")
    with pytest.raises(ValueError, match=r"prompt= has no \{labels\}"):
        pl.col("t").chat.classify(["a", "b"], prompt="Pick one.", config=config)
    assert emulator.stats()["requests"] == 4  # the run above (its null row not sent)


def test_sentiment_summarize_translate_extract(
    emulator: Emulator, config: ChatConfig
) -> None:
    df = pl.DataFrame(
        {"text": ["A positive surprise", "negative, sadly", "What is 6 x 7?", None]}
    )
    out = df.select(
        mood=tasks.sentiment("text", config=config),
        short=tasks.summarize("text", max_words=3, config=config),
        french=tasks.translate("text", to="French", config=config),
        order=tasks.extract("text", Order, config=config),
    )
    assert out["mood"].to_list()[:2] == ["positive", "negative"]
    assert out["mood"].dtype == pl.Enum(["positive", "neutral", "negative"])
    # the emulator's strings are the text's first words
    assert out["short"].to_list() == [*df["text"].to_list()[:3], None]
    assert out["french"].dtype == pl.String and out["french"][3] is None
    assert out["order"][2]["total"] == 42
    assert out["order"][3] is None


def test_bad_arguments_are_refused_before_any_request(
    emulator: Emulator, config: ChatConfig
) -> None:
    with pytest.raises(ValueError, match="at least 2 distinct labels"):
        tasks.classify("t", ["only"], config=config)
    with pytest.raises(TypeError, match="labels must be a list of strings"):
        tasks.classify("t", "billing,shipping", config=config)
    with pytest.raises(TypeError, match="condition must be a non-empty str"):
        tasks.filter("t", "  ", config=config)
    with pytest.raises(TypeError, match="takes no response_format="):
        tasks.classify("t", LABELS, config=config, response_format={"type": "text"})
    with pytest.raises(TypeError, match="use instructions= or prompt="):
        tasks.filter("t", "x", config=config, system="be nice")
    with pytest.raises(ValueError, match="output must be 'content' or 'struct'"):
        tasks.sentiment("t", config=config, output="columns")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="drop output='struct'"):
        tasks.filter("t", "x", config=config, output="struct", confidence=True)
    struct = pac.ChatOptions(output="struct")
    with pytest.raises(ValueError, match="drop output='struct'"):
        tasks.classify("t", LABELS, config=config, options=struct, confidence=True)
    with pytest.raises(ValueError, match="max_words must be an integer >= 1"):
        tasks.summarize("t", max_words=0, config=config)
    with pytest.raises(ValueError, match="'a' is given twice"):
        tasks.classify("t", ["a", "b", "a"], config=config)
    with pytest.raises(TypeError, match="options= sets one"):
        tasks.classify("t", LABELS, options=pac.ChatOptions(system="x"))
    with pytest.raises(TypeError, match="did you mean 'instructions'"):
        tasks.classify("t", LABELS, instruction="be brief")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="did you mean 'max_words'"):
        tasks.summarize("t", max_word=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="the tasks that see images are classify"):
        pl.col("t").chat.sentiment(images=pl.col("photo"))
    with pytest.raises(ValueError, match="drop logprobs=False"):
        tasks.filter("t", "x", confidence=True, logprobs=False)
    with pytest.raises(TypeError, match=r"classify\(\) needs labels="):
        tasks.explain_prompt("classify")
    with pytest.raises(TypeError, match=r"translate\(\) needs to="):
        tasks.plan("translate", ["hello"])
    with pytest.raises(TypeError, match="takes a column of texts"):
        tasks.plan("classify", [[{"role": "user", "content": "x"}]], labels=LABELS)
    with pytest.raises(ValueError, match="reasoning models refuse"):
        tasks.classify(
            "t", LABELS, confidence=True, config=config, reasoning_effort="low"
        )
    with pytest.raises(ValueError, match="no task 'sort'"):
        tasks.explain_prompt("sort")
    with pytest.raises(TypeError, match="takes no argument 'label'"):
        tasks.explain_prompt("classify", label=["a", "b"])
    with pytest.raises(TypeError, match="takes a column of texts"):
        pl.DataFrame({"m": [[{"role": "user", "content": "hi"}]]}).select(
            tasks.classify("m", LABELS, config=config)
        )
    assert emulator.stats()["requests"] == 0


def test_a_wrong_argument_is_named_for_the_task_given_before_any_request(
    emulator: Emulator, config: ChatConfig
) -> None:
    # found by a user probe: each of these said something about another thing
    photos = pl.DataFrame({"photo": [b"x", b"\x89PNG\r\n\x1a\n"]})
    # image bytes as the texts: cast ("x") or "invalid utf8"
    for task in (
        tasks.classify("photo", LABELS, config=config),
        tasks.sentiment("photo", config=config),
    ):
        with pytest.raises(TypeError, match="not Binary: give the text column"):
            photos.select(task)
    with pytest.raises(TypeError, match="not Binary"):
        tasks.plan("summarize", photos["photo"])
    # another task's argument: "unknown keyword ...; custom body fields go in extra_body"
    with pytest.raises(
        TypeError,
        match=r"summarize\(\) takes no confidence=: classify, filter, sentiment take it",
    ):
        tasks.summarize("t", confidence=True, config=config)  # type: ignore[call-arg]
    with pytest.raises(
        TypeError, match=r"translate\(\) takes no labels=: classify, sentiment"
    ):
        tasks.translate("t", to="French", labels=LABELS)  # type: ignore[call-arg]
    # sentiment's labels are named sentiment's (they said classify)
    with pytest.raises(
        ValueError, match=r"^sentiment needs at least 2 distinct labels"
    ):
        tasks.sentiment("t", labels=["good"], config=config)
    # labels the prompt would show alike, or as more labels
    with pytest.raises(
        ValueError, match="'billing' and 'billing ' differ only in spaces"
    ):
        tasks.classify("t", ["billing", "billing "], config=config)
    with pytest.raises(ValueError, match="a label is one line"):
        tasks.classify("t", ["a\n- c", "b"], config=config)
    # plan's own keywords misspelt: the hint was 'mode' (batch or online)
    with pytest.raises(TypeError, match="did you mean 'model'"):
        pac.plan(pl.Series(["hi"]), modle="gpt-4o")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="did you mean 'model'"):
        tasks.plan("summarize", ["hi"], modle="gpt-4o")
    with pytest.raises(TypeError, match="did you mean 'latency_s'"):
        pac.plan(pl.Series(["hi"]), latancy_s=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"not a pl\.Expr: select them first"):
        pac.plan(pl.col("x"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"images must be a pl\.Series"):
        tasks.plan("classify", ["a shoe"], images=pl.col("photo"), labels=LABELS)  # type: ignore[arg-type]
    listed = tasks.plan(
        "classify", ["a shoe"], images=["https://x/y.png"], labels=LABELS
    )
    assert listed.requests == 1
    # a placeholder in double braces is its name, as in str.format (it was filled)
    braces = tasks.explain_prompt(
        "classify", labels=LABELS, prompt="Use {{labels}}: {labels} {{x}}"
    )
    assert braces.startswith("Use {labels}: - ") and braces.endswith("{x}")
    with pytest.raises(ValueError, match=r"prompt= has no \{labels\}"):
        tasks.explain_prompt("classify", labels=LABELS, prompt="Use {{labels}}.")
    # a placeholder the task does not fill was sent as it is ({text}: a typo, or
    # another tool's habit); write it in double braces for the braces themselves
    with pytest.raises(ValueError, match=r"prompt= has \{text\}, which this task"):
        tasks.classify("t", LABELS, prompt="Pick one of {labels} for {text}")
    # one task named takes "takes"; an argument named as the user gave it
    with pytest.raises(TypeError, match=r"summarize takes it$"):
        tasks.classify("t", LABELS, max_words=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="extract's schema must be"):
        tasks.extract("t", "name")
    with pytest.raises(TypeError, match=r"^classify\(\): images must be a pl\.Expr"):
        tasks.classify("t", LABELS, images="http://x/y.png")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_words must be an integer"):
        tasks.summarize("t", max_words="10")  # type: ignore[arg-type]
    # explain_prompt: a hint for a typo, and a task call's job keywords pass
    with pytest.raises(TypeError, match="did you mean 'temperature'"):
        tasks.explain_prompt("summarize", temprature=0)
    with pytest.raises(TypeError, match="did you mean 'instructions'"):
        tasks.explain_prompt("classify", labels=LABELS, instrutions="x")
    assert tasks.explain_prompt(
        "classify", labels=LABELS, max_tokens=5
    ) == tasks.explain_prompt("classify", labels=LABELS)
    assert emulator.stats()["requests"] == 0


def test_the_cache_answers_a_second_run_and_plan_estimates_it(
    emulator: Emulator, config: ChatConfig, tmp_path: Path
) -> None:
    cache = tmp_path / "answers.sqlite"
    texts = pl.Series("ticket", TICKETS)
    p = tasks.plan("classify", texts, labels=LABELS, max_tokens=20)
    assert p.requests == 4 and p.rows["prompt_tokens"].null_count() == 1
    plain = pac.plan(texts, max_tokens=20)
    # the task's prompt and schema are part of every request
    assert p.prompt_tokens > plain.prompt_tokens + 4 * 40
    # a task that sees no images refuses them in plan as it does when it runs
    photos = pl.Series([png(8, 8)] * len(TICKETS))
    with pytest.raises(TypeError, match="sentiment\\(\\) takes no images="):
        tasks.plan("sentiment", texts, images=photos, max_tokens=20)
    first = _frame().select(
        tasks.classify("ticket", LABELS, cache=cache, config=config, max_tokens=20)
    )
    a = first.collect()
    assert emulator.stats()["requests"] == 4
    emulator.reset()
    b = first.collect()
    assert emulator.stats()["requests"] == 0
    assert a.equals(b)


def test_confidence_is_the_label_s_probability(
    emulator: Emulator, config: ChatConfig
) -> None:
    out = (
        _frame()
        .select(
            tasks.classify("ticket", LABELS, confidence=True, config=config),
            refund=tasks.filter(
                "ticket", "asks for a refund", confidence=True, config=config
            ),
        )
        .collect()
    )
    rows = out["ticket"].to_list()
    assert rows[2] is None
    named = [rows[i]["confidence"] for i in (0, 1, 4)]  # the text names the label
    assert all(0.9 <= c <= 0.99 for c in named), named
    # an independent reading: the emulator's own log-probability of the label token
    client = openai.AzureOpenAI(
        azure_endpoint=emulator.url, api_key=emulator.api_key, api_version="2024-10-21"
    )
    system = tasks.explain_prompt("classify", labels=LABELS)
    reply = client.chat.completions.create(  # type: ignore[call-overload]
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": system},
            {"role": "user", "content": TICKETS[3]},
        ],
        response_format=_classify_format(),
        logprobs=True,
    )
    assert reply.choices[0].logprobs is not None
    content = reply.choices[0].logprobs.content or []
    label = rows[3]["label"]
    lp = [t.logprob for t in content if t.token == label]
    assert len(lp) == 1
    assert rows[3]["confidence"] == pytest.approx(math.exp(lp[0]))
    assert 0.4 <= rows[3]["confidence"] <= 0.85  # a label the text does not name
    refund = out["refund"].to_list()
    assert [r and r["match"] for r in refund] == [False, False, None, True, False]
    assert all(r is None or 0 < r["confidence"] <= 1 for r in refund)


def _classify_format() -> dict[str, object]:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "classify",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"label": {"type": "string", "enum": LABELS}},
                "required": ["label"],
                "additionalProperties": False,
            },
        },
    }


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_confidence_comes_from_the_cache_too(
    emulator: Emulator, config: ChatConfig, tmp_path: Path, store: str
) -> None:
    # the cache keeps an answer's log-probabilities (a file of the first version,
    # without them, is migrated: tests/test_cache.py)
    with contextlib.ExitStack() as stack:
        cache = (
            str(tmp_path / "c.sqlite")
            if store == "sqlite"
            else stack.enter_context(redis_server())
        )
        _confidence_twice(emulator, config, cache)


def _confidence_twice(emulator: Emulator, config: ChatConfig, cache: str) -> None:
    q = _frame().select(
        tasks.classify("ticket", LABELS, confidence=True, cache=cache, config=config)
    )
    first = q.collect()["ticket"].to_list()
    assert emulator.stats()["requests"] == 4
    again = q.collect()["ticket"].to_list()
    assert emulator.stats()["requests"] == 4  # all from the cache
    assert again == first
    assert all(r is None or r["confidence"] is not None for r in again)
    # the plain job (no logprobs asked) is another request: its own cache entries
    plain = _frame().select(
        tasks.classify("ticket", LABELS, cache=cache, config=config)
    )
    assert plain.collect()["ticket"].to_list() == [r and r["label"] for r in first]
    assert emulator.stats()["requests"] == 8


def test_confidence_of_a_label_whose_characters_span_tokens() -> None:
    # Azure splits a CJK character or an emoji across tokens (each token's bytes
    # hold part of its UTF-8): the parts are joined back, their probabilities
    # multiplied, so the tokens spell the answer and the confidence is found
    from polars_azurechat.schema.tasks import answer_confidence
    from polars_azurechat.transport.logprobs import token_logprobs

    answer = '{"label":"日本"}'
    parts = [
        ('{"', 0.0, None),
        ("label", 0.0, None),
        ('":"', 0.0, None),
        ("bytes:\\xe6\\x97", -0.25, [0xE6, 0x97]),
        ("bytes:\\xa5", -0.25, [0xA5]),
        ("本", -0.5, list("本".encode())),
        ('"}', 0.0, None),
    ]
    tokens = token_logprobs(
        {
            "content": [
                {"token": t, "logprob": lp, **({"bytes": b} if b else {})}
                for t, lp, b in parts
            ]
        }
    )
    assert tokens is not None and "".join(t for t, _ in tokens) == answer
    assert answer_confidence(answer, list(tokens), "label") == pytest.approx(
        math.exp(-1.0)
    )


def test_a_reasoning_deployment_refuses_logprobs_clearly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Emulator(per_deployment={"o4-mini": {"model": "o4-mini"}}) as emu:
        config = ChatConfig(
            azure_endpoint=emu.url, api_key=emu.api_key, deployment="o4-mini"
        )
        df = pl.DataFrame({"t": ["billing question", "shipping question"]})
        with pytest.raises(pac.UnsupportedParameterError) as info:
            # one at a time: the second row cannot go while the first awaits its 400
            # (the ramp sends a second 3 ms after the first, however slow the answer)
            df.select(
                tasks.classify(
                    "t", LABELS, confidence=True, config=config, max_concurrency=1
                )
            )
        assert "rows failed and are null" not in caplog.text  # the run raised
        assert str(info.value).startswith(
            "confidence=True asks for log-probabilities (logprobs), which this "
            "deployment refuses"
        )
        assert info.value.param == "logprobs"
        stats = emu.stats()
        assert stats["statuses"].get("400", 0) >= 1
        assert stats["requests"] == 1  # the first 400 stops the run


def test_a_task_s_failed_rows_point_to_on_error_raise(
    emulator: Emulator, config: ChatConfig, caplog: pytest.LogCaptureFixture
) -> None:
    # without output="struct", the warning names the option that shows each row's error
    df = pl.DataFrame({"t": ["billing question", "[emu:refuse] shipping question"]})
    out = df.select(tasks.classify("t", LABELS, config=config))
    assert out["t"].to_list() == ["billing", None]
    assert "chat.classify: 1 of 2 rows failed and are null" in caplog.text
    assert "on_error='raise' names each row's error" in caplog.text
    with pytest.raises(pac.CompletionFailed, match=r"1 of 2 rows failed \(rows 1\)"):
        df.select(tasks.classify("t", LABELS, config=config, on_error="raise"))
    # output="struct": complete's struct, each row's error beside its typed value,
    # the dtype known before the run
    lazy = df.lazy().select(tasks.classify("t", LABELS, config=config, output="struct"))
    schema = lazy.collect_schema()
    rows = lazy.collect()
    assert rows.schema == schema
    assert schema["t"].to_schema()["parsed"] == pl.Struct({"label": pl.Enum(LABELS)})
    first, second = rows["t"].to_list()
    assert first["parsed"] == {"label": "billing"} and first["error"] is None
    assert second["parsed"] is None and "RefusalError" in second["error"]


@pytest.mark.parametrize(
    ("repair", "requests", "answered"), [("resend", 3, False), ("teach", 2, True)]
)
def test_teaching_retries_fix_what_a_resend_cannot(
    emulator: Emulator,
    config: ChatConfig,
    repair: str,
    requests: int,
    answered: bool,
) -> None:
    # [emu:bad_json]: every answer to this prompt breaks the schema; a conversation
    # that carries the validation error is answered well (the model learns from it)
    df = pl.DataFrame({"t": ["[emu:bad_json] The parcel never came, shipping"]})
    with pac.Completer(
        config=config,
        response_format={
            "type": "object",
            "properties": {"label": {"enum": LABELS}},
            "required": ["label"],
        },
        repair=repair,  # type: ignore[arg-type]
        max_attempts=3,
        output="struct",
    ) as job:
        row = df.select(job.expr("t"))["t"][0]
        summary = job.summary()
    assert emulator.stats()["requests"] == requests
    assert row["attempts"] == requests
    if answered:
        # the answer is to the original question (its label), not to the feedback
        assert row["parsed"] == {"label": "shipping"} and row["error"] is None
        assert summary.failed_attempts == {"SchemaValidationError": 1}
    else:
        assert row["parsed"] is None
        assert row["error"].startswith("SchemaValidationError")


def test_a_task_teaches_through_its_option(
    emulator: Emulator, config: ChatConfig
) -> None:
    df = pl.DataFrame({"t": ["[emu:bad_json] billing", "shipping"]})
    out = df.select(tasks.classify("t", LABELS, repair="teach", config=config))
    assert out["t"].to_list() == ["billing", "shipping"]
    assert emulator.stats()["requests"] == 3


def _over_v1(emulator: Emulator) -> ChatConfig:
    """The emulator's gpt-4o-mini over the v1 API (the Responses API's only one)."""
    return ChatConfig(
        azure_endpoint=emulator.url,
        api_key=emulator.api_key,
        deployment="gpt-4o-mini",
        api_version="v1",
    )


def test_teaching_works_through_the_responses_api(emulator: Emulator) -> None:
    config = _over_v1(emulator)
    df = pl.DataFrame({"t": ["[emu:bad_json] billing", "shipping"]})
    out = df.select(
        tasks.classify("t", LABELS, repair="teach", api="responses", config=config)
    )
    assert out["t"].to_list() == ["billing", "shipping"]
    stats = emulator.stats()
    assert stats["requests"] == 3 and stats["routes"]["responses"] == 3


def test_classify_product_photos(emulator: Emulator, config: ChatConfig) -> None:
    photo = png(4, 4)
    df = pl.DataFrame(
        {
            "title": ["red running shoe", "leather handbag"],
            "photo": [photo, png(8, 8, 200)],
        }
    )
    q = df.lazy().select(
        pl.col("title").chat.classify(
            ["shoe", "handbag"], images=pl.col("photo"), detail="low", config=config
        )
    )
    assert q.collect_schema()["title"] == pl.Enum(["shoe", "handbag"])
    assert q.collect()["title"].to_list() == ["shoe", "handbag"]
    with_images = emulator.stats()["prompt_tokens"]
    emulator.reset()
    df.select(pl.col("title").chat.classify(["shoe", "handbag"], config=config))
    assert with_images > emulator.stats()["prompt_tokens"]  # the images were sent
    labels = ["shoe", "handbag"]
    seen = tasks.plan("classify", df["title"], images=df["photo"], labels=labels)
    blind = tasks.plan("classify", df["title"], labels=labels)
    assert seen.prompt_tokens > blind.prompt_tokens and seen.requests == 2
    low = tasks.plan(
        "classify", df["title"], images=df["photo"], detail="low", labels=labels
    )
    assert low.prompt_tokens == seen.prompt_tokens - 2 * 170  # a tile each: 255 -> 85


def test_a_cache_of_the_first_version_is_migrated_to_keep_logprobs(
    emulator: Emulator, config: ChatConfig, tmp_path: Path
) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    db.execute(
        "CREATE TABLE answers (key TEXT PRIMARY KEY, content TEXT, finish_reason "
        "TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, created_at REAL "
        "NOT NULL)"
    )
    db.execute("INSERT INTO _migrations VALUES ('m001_initial', 0)")
    db.execute("INSERT INTO answers VALUES ('k', '106', 'stop', 3, 1, 0)")
    db.commit()
    db.close()
    q = pl.DataFrame({"t": ["billing"]}).select(
        tasks.classify("t", LABELS, confidence=True, cache=path, config=config)
    )
    assert q["t"][0]["label"] == "billing"
    db = sqlite3.connect(path)
    columns = [r[1] for r in db.execute("PRAGMA table_info(answers)")]
    stored = db.execute("SELECT logprobs FROM answers WHERE key != 'k'").fetchall()
    old = db.execute("SELECT logprobs FROM answers WHERE key = 'k'").fetchone()
    db.close()
    assert columns[-1] == "logprobs" and old == (None,)
    assert len(stored) == 1 and '"billing"' in stored[0][0]


def test_a_task_runs_in_batch_mode_too(
    emulator: Emulator, config: ChatConfig, tmp_path: Path
) -> None:
    df = pl.DataFrame({"t": ["billing issue", "shipping issue", None]})
    out = df.select(
        tasks.classify(
            "t",
            LABELS,
            confidence=True,
            mode="batch",
            cache=tmp_path / "c.sqlite",
            batch_poll_s=0.2,
            config=config,
        )
    )["t"].to_list()
    assert [r and r["label"] for r in out] == ["billing", "shipping", None]
    assert all(0.9 <= r["confidence"] <= 0.99 for r in out[:2])
    stats = emulator.stats()
    assert stats["batch"]["lines_answered"] == 2 and stats["requests"] == 0


def test_confidence_through_the_responses_api_is_chats(emulator: Emulator) -> None:
    # include=["message.output_text.logprobs"] and top_logprobs on the wire; each
    # output_text part's logprobs read back as chat's logprobs.content
    config = _over_v1(emulator)
    df = pl.DataFrame({"t": ["my invoice is wrong", "where is my parcel", "日本"]})
    got = {
        api: df.select(
            tasks.classify("t", LABELS, confidence=True, api=api, config=config)
        )
        .to_series()
        .to_list()
        for api in ("chat", "responses")
    }
    assert got["responses"] == got["chat"]
    assert all(0 < row["confidence"] <= 1 for row in got["chat"])
    stats = emulator.stats()
    assert stats["routes"]["responses"] == 3 and stats["routes"]["v1"] == 3
    # the emulator's Responses answer carries them only when include asks
    base = {"model": "gpt-4o-mini", "input": "Say hi", "max_output_tokens": 16}
    for include, expected in (([], False), (["message.output_text.logprobs"], True)):
        raw = openai.OpenAI(base_url=emulator.base_url, api_key=emulator.api_key)
        answer = raw.responses.create(**base, include=include, top_logprobs=2)  # type: ignore[call-overload]
        [part] = answer.output[0].content
        assert bool(part.logprobs) is expected
        if expected:
            assert "".join(t.token for t in part.logprobs) == part.text
            assert all(len(t.top_logprobs) == 2 for t in part.logprobs)


def test_confidence_to_a_reasoning_deployment_over_responses_stops_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Emulator(per_deployment={"o4-mini": {"model": "o4-mini"}}) as emu:
        config = ChatConfig(base_url=emu.base_url, api_key=emu.api_key)
        df = pl.DataFrame({"t": ["billing question", "shipping question"]})
        with pytest.raises(pac.UnsupportedParameterError) as info:
            df.select(
                tasks.classify(
                    "t",
                    LABELS,
                    confidence=True,
                    api="responses",
                    deployment="o4-mini",
                    config=config,
                    max_concurrency=1,
                )
            )
        assert str(info.value).startswith(
            "confidence=True asks for log-probabilities (logprobs), which this "
            "deployment refuses"
        )
        assert "'include'" in str(info.value)  # the Responses API's field
        assert emu.stats()["requests"] == 1
