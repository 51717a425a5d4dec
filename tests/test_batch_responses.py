"""Batch mode with ``api="responses"``, end to end against the emulator over HTTP.

The job's ``BatchRunner`` and the emulator share one fake clock that moves only when
the runner sleeps (as in tests/test_batch_mode.py). What the emulator received (the
input files, the batches' endpoint) is read back through its files and batches API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import polars as pl
import pytest

import polars_azurechat as pac
from polars_azurechat.batch.runner import BatchRunner
from polars_azurechat.batch.state import BatchStateStore
from polars_azurechat.emulator import Emulator
from polars_azurechat.errors import ConfigurationError
from polars_azurechat.summary import PRICES, price_for

from .fakes import FakeClock

DEPLOYMENT = "gpt-4o-mini-batch"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(10_000.0)


@pytest.fixture
def emu(clock: FakeClock) -> Iterator[Emulator]:
    with Emulator(clock=clock) as emulator:
        yield emulator


def _job(
    emu: Emulator, cache: Path, clock: FakeClock, *, v1: bool = False, **kw: Any
) -> pac.Completer:
    config = (
        pac.ChatConfig(base_url=emu.base_url, api_key=emu.api_key)
        if v1
        else pac.ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key)
    )
    options: dict[str, Any] = {
        "max_tokens": 20,
        "progress": False,
        "batch_poll_s": 1.0,
        "mode": "batch",
        "api": "responses",
        "deployment": DEPLOYMENT,
        **kw,
    }
    job = pac.Completer(config=config, cache=str(cache), **options)
    assert job._batch is not None
    job._batch.settings.update(sleep=clock.blocking_sleep, clock=clock)
    return job


def _v1_client(emu: Emulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=emu.base_url, api_key=emu.api_key, max_retries=0)


def _received(emu: Emulator) -> tuple[list[Any], list[dict[str, Any]]]:
    """The batches the emulator took, and every line of them it accepted (the job
    deletes the input files once its answers are in: the emulator kept the lines)."""
    batches = emu.batches.held()
    lines = [
        {"custom_id": line.custom_id, "body": line.body}
        for b in batches
        for line in b.lines
    ]
    assert all(not b.problems for b in batches)  # a line of another url: url_mismatch
    return batches, lines


def _arith(n: int) -> list[str]:
    return [f"What is {i} + 1000?" for i in range(n)]


@pytest.mark.parametrize("v1", [False, True], ids=["classic-config", "v1-config"])
def test_a_responses_batch_answers_every_row_in_order_at_the_batch_price(
    emu: Emulator, clock: FakeClock, tmp_path: Path, v1: bool
) -> None:
    rows: list[Any] = [*_arith(12), None, "[emu:jailbreak_detected] Say hi"]
    with _job(emu, tmp_path / "b.sqlite", clock, v1=v1, output="struct") as job:
        out = job.run(rows)
        summary = job.summary()
    stats = emu.stats()
    assert stats["requests"] == 0  # nothing online: every row through the batch
    assert (stats["batch"]["files_uploaded"], stats["batch"]["batches_created"]) == (
        1,
        1,
    )
    assert stats["batch"]["lines_answered"] == 13
    assert [r["content"] for r in out[:12]] == [str(i + 1000) for i in range(12)]
    assert out[12] is None
    # read by the online parser: Azure's content_filters reach the struct
    assert out[13]["content"] == "Echo: Say hi"
    assert out[13]["prompt_filter"] == ["jailbreak:detected"]
    assert out[0]["prompt_filter"] == [] and out[0]["deployment"] == DEPLOYMENT
    assert all(r["response_id"].startswith("resp_") for r in out if r is not None)
    # the batch price: half the online price of what was charged
    price = price_for(DEPLOYMENT, PRICES)
    assert price is not None and summary.mode == "batch"
    cost = (
        summary.prompt_tokens * price[0] + summary.completion_tokens * price[1]
    ) / 1e6
    assert summary.estimated_cost_usd == pytest.approx(cost / 2)


def test_the_uploaded_lines_are_v1_responses_lines(
    emu: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    prompts = _arith(3)
    with _job(emu, tmp_path / "b.sqlite", clock, temperature=0.5) as job:
        job.run(prompts)
    [batch], lines = _received(emu)
    assert batch.endpoint == "/v1/responses"
    assert len(lines) == 3
    for line in lines:
        body = line["body"]
        assert "messages" not in body and "max_tokens" not in body
        assert body["model"] == DEPLOYMENT
        assert body["max_output_tokens"] == 20 and body["store"] is False
        assert body["temperature"] == 0.5
    asked = sorted(line["body"]["input"][0]["content"] for line in lines)
    assert asked == sorted(prompts)


def test_typed_answers_through_a_responses_batch(
    emu: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    typed: dict[str, Any] = {
        "response_format": pl.Struct({"total": pl.Int64}),
        "max_tokens": 50,
    }
    rows = ["What is 53 + 53?", "What is 6 * 7?", "[emu:bad_json] What is 1 + 1?"]
    with _job(emu, tmp_path / "b.sqlite", clock, **typed) as job:
        out = job.run(rows)
        failed = job.summary().failed
    assert out[:2] == [{"total": 106}, {"total": 42}]
    assert out[2] is None and failed == 1  # a SchemaValidationError, as online
    _, lines = _received(emu)
    formats = [line["body"]["text"]["format"] for line in lines]
    assert all(f["type"] == "json_schema" and f["strict"] for f in formats)
    assert all("response_format" not in line["body"] for line in lines)


def test_a_rerun_answers_from_the_cache_and_uploads_nothing(
    emu: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    cache = tmp_path / "c.sqlite"
    with _job(emu, cache, clock) as job:
        first = job.run(_arith(6))
    before = emu.stats()["batch"]
    with _job(emu, cache, clock) as job:
        again = job.run(_arith(6))
        cached = job.summary().cached
    assert again == first == [str(i + 1000) for i in range(6)]
    assert cached == 6
    after = emu.stats()
    assert after["batch"] == before and after["batch"]["files_uploaded"] == 1
    assert after["requests"] == 0


def test_a_classic_client_is_refused_before_any_request(
    emu: Emulator, tmp_path: Path
) -> None:
    classic = openai.AzureOpenAI(
        azure_endpoint=emu.url, api_key=emu.api_key, api_version="2024-10-21"
    )
    with pytest.raises(
        TypeError, match=r"needs an openai\.OpenAI client on the v1 API"
    ):
        pac.Completer(
            client=classic,
            mode="batch",
            api="responses",
            deployment=DEPLOYMENT,
            cache=str(tmp_path / "c.sqlite"),
            max_tokens=20,
        )
    state = BatchStateStore(tmp_path / "s.sqlite")
    try:
        with pytest.raises(ConfigurationError, match=r"needs the v1 API.*/openai/v1/"):
            BatchRunner(classic, deployment=DEPLOYMENT, state=state, api="responses")
    finally:
        state.close()
    stats = emu.stats()
    assert stats["requests"] == 0 and stats["batch"]["files_uploaded"] == 0


def test_the_emulator_takes_responses_batches_on_the_v1_api_only(
    emu: Emulator, clock: FakeClock
) -> None:
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": DEPLOYMENT, "input": "What is 2 + 2?"},
    }
    data = (json.dumps(line) + "\n").encode()
    classic = openai.AzureOpenAI(
        azure_endpoint=emu.url,
        api_key=emu.api_key,
        api_version="2024-10-21",
        max_retries=0,
    )
    file = classic.files.create(file=("in.jsonl", data), purpose="batch")
    clock.advance(1)
    endpoint: Any = "/v1/responses"
    with pytest.raises(openai.BadRequestError, match="v1 API only"):
        classic.batches.create(
            input_file_id=file.id, endpoint=endpoint, completion_window="24h"
        )
    v1 = _v1_client(emu)
    batch = v1.batches.create(
        input_file_id=file.id, endpoint=endpoint, completion_window="24h"
    )
    clock.advance(3600)
    batch = v1.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id
    [out] = [
        json.loads(x) for x in v1.files.content(batch.output_file_id).text.splitlines()
    ]
    body = out["response"]["body"]
    assert body["object"] == "response" and body["status"] == "completed"
    assert body["output"][0]["content"][0]["text"] == "4"
    assert emu.stats()["requests"] == 0  # not counted as online requests
