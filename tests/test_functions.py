"""complete() end to end against the emulator, over real HTTP."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal, assert_series_equal

import polars_azurechat as pac
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator
from polars_azurechat.namespace import ChatNamespace

SYSTEM = "You are a calculator."


def _messages(prompts: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "messages": [
                None
                if p is None
                else [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": p},
                ]
                for p in prompts
            ]
        }
    )


def test_namespace_signature_matches_function() -> None:
    fn = inspect.signature(pac.complete)
    ns = inspect.signature(ChatNamespace.complete)
    assert list(fn.parameters)[1:] == list(ns.parameters)[1:]
    for name in list(fn.parameters)[1:]:
        assert fn.parameters[name].default == ns.parameters[name].default, name
        assert fn.parameters[name].kind == ns.parameters[name].kind, name
        assert fn.parameters[name].annotation == ns.parameters[name].annotation, name
    assert fn.return_annotation == ns.return_annotation


def test_message_lists_answered_in_row_order(emulator: Emulator) -> None:
    df = _messages(["What is 53 + 53?", "What is 1 + 1?", None, "What is 100 + 100?"])
    out = df.with_columns(answer=pl.col("messages").chat.complete(max_tokens=20))
    assert out["answer"].to_list() == ["106", "2", None, "200"]
    assert emulator.stats()["requests"] == 3  # the null row sent nothing


def test_string_prompts_with_system_message(emulator: Emulator) -> None:
    df = pl.DataFrame({"q": ["What is 2 * 21?", "hello there"]})
    out = df.select(pac.complete("q", system=SYSTEM, max_tokens=20))
    assert_frame_equal(out, pl.DataFrame({"q": ["42", "Echo: hello there"]}))


def test_extra_struct_fields_are_ignored(emulator: Emulator) -> None:
    df = pl.DataFrame(
        {"m": [[{"role": "user", "content": "What is 3 + 4?", "name": "x", "n": 1}]]}
    )
    assert df.select(pl.col("m").chat.complete())["m"].to_list() == ["7"]


@pytest.mark.parametrize(
    "collect",
    [
        pytest.param(lambda lf: lf.collect(), id="collect"),
        pytest.param(lambda lf: lf.collect(engine="streaming"), id="streaming"),
        pytest.param(lambda lf: lf.collect(engine="in-memory"), id="in-memory"),
    ],
)
def test_same_answers_in_every_engine(emulator: Emulator, collect: object) -> None:
    n = 300
    prompts = [f"What is {i} + 1?" for i in range(n)]
    lf = pl.LazyFrame({"i": range(n), "q": prompts})
    out = collect(lf.with_columns(a=pl.col("q").chat.complete(max_tokens=5)))  # type: ignore[operator]
    expected = pl.Series("a", [str(i + 1) for i in range(n)])
    assert_series_equal(out["a"], expected)
    assert emulator.stats()["requests"] == n


def test_sink_parquet_streams_every_row(emulator: Emulator, tmp_path: Path) -> None:
    src, dst = tmp_path / "in.parquet", tmp_path / "out.parquet"
    n = 400
    pl.DataFrame(
        {"i": range(n), "q": [f"What is {i} * 2?" for i in range(n)]}
    ).write_parquet(src, row_group_size=50)
    pl.scan_parquet(src).with_columns(
        a=pl.col("q").chat.complete(max_tokens=5)
    ).sink_parquet(dst)
    out = pl.read_parquet(dst).sort("i")
    assert out["a"].to_list() == [str(2 * i) for i in range(n)]


def test_concurrency_bound_holds_across_concurrent_chunks(
    emulator: Emulator, tmp_path: Path
) -> None:
    emulator.settings.latency_ms = 5
    src = tmp_path / "in.parquet"
    n = 600
    pl.DataFrame({"q": [f"What is {i} + 0?" for i in range(n)]}).write_parquet(
        src, row_group_size=40
    )
    calls: list[int] = []

    def count_chunks(s: pl.Series) -> pl.Series:
        calls.append(len(s))
        return s

    expr = pl.col("q").chat.complete(max_concurrency=6, max_tokens=5)
    out = (
        pl.scan_parquet(src)
        .with_columns(
            a=expr,
            n=pl.col("q").map_batches(
                count_chunks, return_dtype=pl.String, is_elementwise=True
            ),
        )
        .collect(engine="streaming")
    )
    assert out["a"].to_list() == [str(i) for i in range(n)]
    assert len(calls) > 1  # Polars really did split the column
    stats = emulator.stats()
    assert stats["requests"] == n
    assert stats["peak_in_flight"] <= 6
    assert stats["peak_in_flight"] >= 2  # and it did run in parallel


def test_select_beside_other_expressions_and_over(emulator: Emulator) -> None:
    df = pl.DataFrame({"g": [1, 1, 2], "q": ["What is 1 + 1?", "What is 2 + 2?", "x"]})
    out = df.select(
        pl.col("g"),
        pl.col("q").str.len_chars().alias("len"),
        pl.col("q").chat.complete(max_tokens=20).alias("a"),
    )
    assert out["a"].to_list() == ["2", "4", "Echo: x"]
    over = df.select(pl.col("q").chat.complete(max_tokens=20).over("g"))
    assert over["q"].to_list() == ["2", "4", "Echo: x"]
    grouped = df.group_by("g", maintain_order=True).agg(
        pl.col("q").chat.complete(max_tokens=20)
    )
    assert grouped["q"].to_list() == [["2", "4"], ["Echo: x"]]


def test_collect_schema_sends_nothing(emulator: Emulator) -> None:
    lf = pl.LazyFrame({"q": ["What is 1 + 1?"]}).with_columns(
        a=pl.col("q").chat.complete(), s=pl.col("q").chat.complete(output="struct")
    )
    schema = lf.collect_schema()
    assert schema["a"] == pl.String
    fields = schema["s"].to_schema()
    assert dict(list(fields.items())[:6]) == {
        "content": pl.String,
        "finish_reason": pl.String,
        "prompt_tokens": pl.Int64,
        "completion_tokens": pl.Int64,
        "attempts": pl.Int32,
        "error": pl.String,
    }
    # then provenance: which request, model and deployment answered, how fast
    assert list(fields)[6:] == [
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
    ]
    lf.explain()
    assert emulator.stats()["requests"] == 0


def test_struct_output_carries_usage_and_attempts(emulator: Emulator) -> None:
    df = pl.DataFrame(
        {"q": ["What is 5 + 5?", "[emu:500*1] What is 1 + 2?", "Tell me more"]}
    )
    out = df.select(pac.complete("q", output="struct", max_tokens=2).struct.unnest())
    assert out["content"].to_list() == ["10", "3", "Echo: Te"]
    assert out["finish_reason"].to_list() == ["stop", "stop", "length"]
    assert out["attempts"].to_list() == [1, 2, 1]
    assert out["error"].to_list() == [None, None, None]
    assert all(t > 0 for t in out["prompt_tokens"]) and all(
        t > 0 for t in out["completion_tokens"]
    )
    assert emulator.stats()["statuses"] == {"200": 3, "500": 1}


def test_system_on_a_column_of_messages_is_said_to_be_unsent(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    # system= is for String prompts: a messages column carries its own (it was
    # dropped without a word)
    df = pl.DataFrame(
        {"m": [[{"role": "user", "content": "What is 1 + 1?"}]] * 2},
        schema={"m": pl.List(pl.Struct({"role": pl.String, "content": pl.String}))},
    )
    job = pac.Completer(system="Answer in French.", progress=False)
    for _ in range(2):
        out = df.select(job.expr("m"))
    assert out["m"].to_list() == ["2", "2"]
    said = [r.message for r in caplog.records if "system=" in r.message]
    assert said == [
        "system= is for String prompts; column 'm' holds message lists, which carry "
        "their own system message: system= is not sent"
    ]  # once a job
    caplog.clear()
    pl.DataFrame({"q": ["What is 1 + 1?"]}).select(job.expr("q"))
    assert not [r for r in caplog.records if "system=" in r.message]
    # the other ways in (run, complete_many, requests, the CLI's batches) say it too
    other = pac.Completer(system="Answer in French.", progress=False)
    assert other.run([[{"role": "user", "content": "What is 1 + 1?"}]]) == ["2"]
    said = [r.message for r in caplog.records if "system=" in r.message]
    assert said == [
        "system= is for String prompts; these rows hold message lists, which carry "
        "their own system message: system= is not sent"
    ]


def test_rows_repeated_across_chunks_in_another_order_are_sent_once(
    emulator: Emulator,
) -> None:
    # each chunk is a batch; a batch takes its rows before another batch's answers
    # arrive, and its workers reached them after: they were sent again (found by a
    # user probe: 396 requests for 200 texts)
    texts = [f"[emu:delay=2] What is {i} + 1?" for i in range(120)]
    df = pl.concat(
        [pl.DataFrame({"q": texts}), pl.DataFrame({"q": texts[::-1]})], rechunk=False
    )
    job = pac.Completer(max_tokens=20, max_concurrency=4, progress=False)
    out = df.select(job.expr("q"))
    sums = [str(i + 1) for i in range(120)]
    assert out["q"].to_list() == sums + sums[::-1]
    assert emulator.stats()["requests"] == 120
    assert job.summary().deduplicated == 120


def test_lazy_collects_of_one_run_share_answers_and_a_new_run_sends_again(
    emulator: Emulator,
) -> None:
    # collects of a lazy query less than 0.2 s apart are one run (Polars' threads hand
    # the chunks over in waves): a later one takes the run's answers; summary() ends
    # the run, and the next collect sends again (sampling again at temperature=1)
    lf = pl.LazyFrame({"q": ["Write a haiku about rain", "Name a colour"]})
    job = pac.Completer(max_tokens=20, temperature=1.0, progress=False)
    lf.select(job.expr("q")).collect()
    lf.select(job.expr("q")).collect()
    assert emulator.stats()["requests"] == 2
    job.summary()
    lf.select(job.expr("q")).collect()
    assert emulator.stats()["requests"] == 4


def test_a_failure_is_not_handed_to_a_repeat_in_another_chunk(
    emulator: Emulator,
) -> None:
    # the emulator fails the first request for "hello" alone; a repeat in another
    # chunk waiting for it got its 500 too, whichever chunk Polars' timing made wait
    df = pl.concat(
        [pl.DataFrame({"q": ["[emu:500*1] hello", f"filler {k}"]}) for k in range(8)],
        rechunk=False,
    )
    job = pac.Completer(max_tokens=20, max_attempts=1, on_error="null", progress=False)
    out = df.select(job.expr("q"))["q"].to_list()
    hello = out[::2]
    assert hello.count(None) == 1, hello  # the one row whose request failed
    assert all(a is not None for a in out[1::2])
    assert emulator.stats()["statuses"].get("500") == 1


def test_empty_empty_list_and_nulls(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    df = pl.DataFrame(
        {"m": [[], None, [{"role": "user", "content": "What is 1 + 1?"}]]},
        schema={"m": pl.List(pl.Struct({"role": pl.String, "content": pl.String}))},
    )
    out = df.select(pl.col("m").chat.complete(output="struct"))
    assert re.search("1 of 3 rows failed.*empty message list", caplog.text)
    rows = out["m"].to_list()
    assert rows[0]["error"] == "InputError: empty message list"
    assert rows[1] is None
    assert rows[2]["content"] == "2"
    assert emulator.stats()["requests"] == 1
    assert (
        pl.DataFrame({"m": []}, schema={"m": pl.String})
        .select(pl.col("m").chat.complete())
        .height
        == 0
    )


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ([{"role": "wizard", "content": "hi"}], "role 'wizard'"),
        ([{"role": "user", "content": None}], "content is null"),
        ([None], "message 0 is null"),
    ],
)
def test_bad_messages_fail_their_row_only(
    emulator: Emulator, row: list[object], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    df = pl.DataFrame(
        {"m": [row, [{"role": "user", "content": "What is 2 + 2?"}]]},
        schema={"m": pl.List(pl.Struct({"role": pl.String, "content": pl.String}))},
    )
    out = df.select(pl.col("m").chat.complete())
    assert re.search(reason, caplog.text)
    assert out["m"].to_list() == [None, "4"]
    assert emulator.stats()["requests"] == 1


@pytest.mark.parametrize(
    ("series", "match"),
    [
        (pl.Series("m", [1, 2]), "not Int64"),
        (pl.Series("m", [[{"role": "user"}]]), "lacks field.*content"),
        (pl.Series("m", [["a"]]), r"not List\(String\)"),
    ],
)
def test_wrong_dtype_is_a_type_error_naming_it(
    emulator: Emulator, series: pl.Series, match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        series.to_frame().select(pl.col("m").chat.complete())
    assert emulator.stats()["requests"] == 0


def test_on_error_raise_runs_every_row_then_lists_failures(emulator: Emulator) -> None:
    prompts = [
        "What is 1 + 1?",
        "[emu:filter] bad",
        "What is 2 + 2?",
        "[emu:filter] worse",
    ]
    df = pl.DataFrame({"q": prompts})
    with pytest.raises(pac.CompletionFailed) as info:
        df.select(pl.col("q").chat.complete(on_error="raise"))
    assert info.value.row_indices == [1, 3]
    assert "2 of 4 rows failed (rows 1, 3)" in str(info.value)
    assert isinstance(info.value.exceptions[0].__cause__, pac.ContentFilterError)
    assert emulator.stats()["statuses"] == {
        "200": 2,
        "400": 2,
    }  # all rows ran, no retry


def test_on_error_null_logs_once_per_run_with_the_runs_counts(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    df = pl.DataFrame({"q": ["[emu:filter] no", "What is 3 + 3?", "[emu:filter] no 2"]})
    expr = pl.col("q").chat.complete(output="struct")
    # four chunks in a streaming query, answered from Polars' threads in waves: one run
    frame = pl.concat([df, df, df, df], rechunk=False).lazy().select(expr)
    frame.collect(engine="streaming")
    # an eager select hands the whole column over on this thread: a run of its own,
    # which ends the one before (that one would otherwise end 0.2 s after its last wave)
    out = df.select(expr)
    failures = [r.getMessage() for r in caplog.records if "rows failed" in r.message]
    assert failures[0].startswith("chat.complete: 8 of 12 rows failed"), caplog.text
    assert failures[1].startswith("chat.complete: 2 of 3 rows failed"), caplog.text
    assert len(failures) == 2
    assert all(r.levelname == "WARNING" for r in caplog.records)
    caplog.clear()
    df.select(expr)  # the same again: said again (no warning filter hides it)
    assert "2 of 3 rows failed" in caplog.text
    errors = out["q"].struct.field("error").to_list()
    assert (
        errors[0] is not None and "content filter (categories: violence)" in errors[0]
    )
    assert out["q"].struct.field("content").to_list() == [None, "6", None]


def test_wrong_key_stops_the_run_at_once(emulator: Emulator) -> None:
    cfg = ChatConfig(
        azure_endpoint=emulator.url, api_key="wrong-key-123", deployment="d"
    )
    df = pl.DataFrame({"q": [f"What is {i} + 1?" for i in range(2000)]})
    with pytest.raises(pac.AuthenticationError) as info:
        df.select(pl.col("q").chat.complete(config=cfg, max_concurrency=4))
    assert "wrong-key-123" not in str(info.value)
    assert "check AZURE_OPENAI_API_KEY" in str(info.value)
    stats = emulator.stats()
    assert stats["statuses"] == {"401": stats["requests"]}
    assert stats["requests"] <= 4  # at most the requests already in flight


def test_unknown_deployment_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    with Emulator(deployments=frozenset({"gpt-4o-mini"})) as emu:
        cfg = ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key, deployment="nope")
        df = pl.DataFrame({"q": ["a"] * 50})
        with pytest.raises(pac.NotFoundError, match="deployment 'nope'"):
            df.select(pl.col("q").chat.complete(config=cfg, max_concurrency=2))
        assert emu.stats()["requests"] <= 2


def test_bad_arguments_fail_before_any_request(emulator: Emulator) -> None:
    with pytest.raises(ValueError, match="output must be"):
        pac.complete("q", output="text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_error must be"):
        pac.complete("q", on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_concurrency must be an integer >= 1"):
        pac.complete("q", max_concurrency=0)
    with pytest.raises(ValueError, match="temperature=nan"):
        pac.complete("q", temperature=float("nan"))
    with pytest.raises(ValueError, match="messages cannot be passed"):
        pac.complete("q", messages=[])  # type: ignore[call-arg]
    assert emulator.stats()["requests"] == 0


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(
        st.one_of(
            st.none(),
            st.tuples(st.integers(-999, 999), st.integers(0, 999), st.integers(0, 8)),
        ),
        max_size=60,
    )
)
def test_rows_keep_order_when_answers_finish_out_of_order(
    emulator: Emulator, rows: list[tuple[int, int, int] | None]
) -> None:
    prompts = [
        None if r is None else f"[emu:delay={r[2]}] What is {r[0]} + {r[1]}?"
        for r in rows
    ]
    df = pl.DataFrame({"q": prompts}, schema={"q": pl.String})
    out = df.select(pl.col("q").chat.complete(max_concurrency=16))
    expected = [None if r is None else str(r[0] + r[1]) for r in rows]
    assert out["q"].to_list() == expected


def test_complete_many_keeps_order_and_nulls(emulator: Emulator) -> None:
    rows: list[str | list[dict[str, str]] | None] = [
        [{"role": "user", "content": "What is 53 + 53?"}],
        None,
        "What is 100 + 100?",
    ]
    assert pac.complete_many(rows) == ["106", None, "200"]
    structs = pac.complete_many(rows, output="struct")
    assert structs[0] is not None and structs[0]["attempts"] == 1


def test_own_sdk_client_is_used_without_its_own_retries(emulator: Emulator) -> None:
    import openai

    client = openai.AzureOpenAI(
        azure_endpoint=emulator.url, api_key=emulator.api_key, api_version="2024-10-21"
    )  # max_retries=2 by default: the engine must turn them off
    df = pl.DataFrame({"q": ["What is 53 + 53?", "[emu:500*1] What is 1 + 1?", None]})
    out = df.select(
        pac.complete("q", client=client, deployment="gpt-4o-mini", output="struct")
    )
    rows = out["q"].to_list()
    assert [r and r["content"] for r in rows] == ["106", "2", None]
    assert rows[1]["attempts"] == 2
    assert emulator.stats()["statuses"] == {"200": 2, "500": 1}


def test_own_sdk_client_errors_are_ours(emulator: Emulator) -> None:
    import openai

    client = openai.AzureOpenAI(
        azure_endpoint=emulator.url, api_key="bad-key", api_version="2024-10-21"
    )
    df = pl.DataFrame({"q": ["x"] * 10})
    with pytest.raises(pac.AuthenticationError, match="check AZURE_OPENAI_API_KEY"):
        df.select(pac.complete("q", client=client, deployment="d", max_concurrency=2))
    assert emulator.stats()["requests"] <= 2
    with pytest.raises(TypeError, match=r"openai\.AzureOpenAI"):
        pac.complete("q", client=object(), deployment="d")  # type: ignore[arg-type]


def _sdk_error(kind: type[Exception], **attrs: Any) -> Exception:
    """One of the SDK's exceptions, without its HTTP library's request and response."""
    error = kind.__new__(kind)
    error.__dict__.update(attrs)
    return error


def test_the_sdks_errors_map_to_ours_for_both_users_of_a_client() -> None:
    """``sdk_errors`` serves ``client=`` online (a timeout names the time bound) and
    batch mode (no time bound)."""
    import openai

    from polars_azurechat.transport.status import sdk_errors

    response = SimpleNamespace(
        status_code=429,
        headers={"retry-after": "3"},
        content=b'{"error": {"code": "429", "message": "slow down"}}',
    )
    cases: list[tuple[Exception, float | None, type[Exception], str]] = [
        (
            _sdk_error(openai.RateLimitError, response=response),
            None,
            pac.RateLimitError,
            "429 rate limited on deployment 'd' at res.example: slow down",
        ),
        (
            _sdk_error(openai.APITimeoutError),
            7.5,
            pac.APITimeoutError,
            "no answer within 7.5 s",
        ),
        (
            _sdk_error(openai.APITimeoutError),
            None,
            pac.APITimeoutError,
            "no answer from res.example in time",
        ),
        (
            _sdk_error(openai.APIConnectionError),
            None,
            pac.APIConnectionError,
            "connection to res.example failed: APIConnectionError",
        ),
    ]
    mapped = []
    for error, timeout_s, ours, message in cases:
        with (
            pytest.raises(ours, match=f"^{re.escape(message)}$") as info,
            sdk_errors("d", "res.example", timeout_s=timeout_s),
        ):
            raise error
        assert info.value.__cause__ is error
        mapped.append(info.value)
    assert isinstance(mapped[0], pac.RateLimitError)
    assert (mapped[0].status_code, mapped[0].retry_after_s) == (429, 3.0)
    with pytest.raises(KeyError), sdk_errors("d", "res.example"):
        raise KeyError("not the SDK's")


def test_large_chunks_convert_through_arrow_to_the_same_requests() -> None:
    from polars_azurechat.engine.convert import (
        ARROW_MIN_ROWS,
        rows_to_requests,
        series_to_requests,
    )

    n = ARROW_MIN_ROWS + 10
    s = _messages([None if i % 97 == 0 else f"What is {i} + 1?" for i in range(n)])[
        "messages"
    ]
    assert series_to_requests(s) == rows_to_requests(s.to_list())
