"""The emulator's files and batches endpoints, over HTTP with the openai SDK, on a fake clock."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from polars_azurechat.emulator import Emulator
from polars_azurechat.emulator._batch import BatchService

from .fakes import FakeClock

#: Azure's endpoint for batches (the SDK's type names OpenAI's ``/v1/...`` ones)
CHAT: Any = "/chat/completions"
ONE_HOUR: Any = "1h"


def _line(
    custom_id: str,
    prompt: str,
    *,
    model: str = "gpt-4o-mini-batch",
    url: str = "/chat/completions",
    **body: Any,
) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": url,
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            **body,
        },
    }


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _client(emu: Emulator, key: str | None = None) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=emu.url,
        api_key=key or emu.api_key,
        api_version="2024-10-21",
        max_retries=0,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(5000.0)


@pytest.fixture
def emu(clock: FakeClock) -> Iterator[Emulator]:
    with Emulator(clock=clock) as emulator:
        yield emulator


def _submit(
    client: openai.AzureOpenAI, clock: FakeClock, lines: list[dict[str, Any]]
) -> str:
    """Upload ``lines``, wait until processed, create the batch; its id."""
    file = client.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
    clock.advance(1)
    batch = client.batches.create(
        input_file_id=file.id, endpoint=CHAT, completion_window="24h"
    )
    return batch.id


def _lines_of(client: openai.AzureOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines()]


def test_a_batch_goes_through_its_statuses_and_answers_every_line(
    emu: Emulator, clock: FakeClock
) -> None:
    client = _client(emu)
    lines = [_line(f"row-{i}", f"What is {i} + 100?") for i in range(20)]
    file = client.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
    assert (file.status, file.purpose, file.bytes) == (
        "pending",
        "batch",
        len(_jsonl(lines)),
    )
    with pytest.raises(openai.BadRequestError, match="not processed yet"):
        client.batches.create(
            input_file_id=file.id,
            endpoint=CHAT,
            completion_window="24h",
        )
    clock.advance(0.5)
    assert client.files.retrieve(file.id).status == "processed"
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint=CHAT,
        completion_window="24h",
        metadata={"job": "one"},
    )
    assert batch.status == "validating" and batch.metadata == {"job": "one"}
    seen: list[str] = [batch.status]
    for _ in range(40):
        clock.advance(0.25)
        batch = client.batches.retrieve(batch.id)
        if batch.status != seen[-1]:
            seen.append(batch.status)
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (20, 20)
    assert batch.completed_at is not None and batch.in_progress_at is not None
    assert batch.created_at <= batch.in_progress_at <= batch.completed_at
    output = _lines_of(client, batch.output_file_id)
    ids = [line["custom_id"] for line in output]
    assert sorted(ids) == sorted(f"row-{i}" for i in range(20))
    assert ids != [f"row-{i}" for i in range(20)]  # not in the input's order
    for line in output:
        i = int(line["custom_id"].split("-")[1])
        response = line["response"]
        assert line["error"] is None and response["status_code"] == 200
        assert response["request_id"].startswith("emu-batch-")
        assert response["body"]["choices"][0]["message"]["content"] == str(i + 100)
    # Azure may leave an empty error file even when nothing failed
    assert batch.error_file_id is not None
    assert client.files.content(batch.error_file_id).content == b""
    stats = emu.stats()
    assert stats["requests"] == 0  # nothing went through the chat endpoint
    assert stats["batch"] == {
        "files_uploaded": 1,
        "files_deleted": 0,
        "batches_created": 1,
        "cancels": 0,
        "lines_answered": 20,
        "lines_failed": 0,
        "batches": {"completed": 1},
    }


def test_the_output_order_is_a_deterministic_shuffle(clock: FakeClock) -> None:
    orders = []
    for _ in range(2):
        with Emulator(clock=clock) as emu:
            client = _client(emu)
            batch_id = _submit(
                client, clock, [_line(f"r{i}", f"say {i}") for i in range(10)]
            )
            clock.advance(5)
            batch = client.batches.retrieve(batch_id)
            orders.append(
                [x["custom_id"] for x in _lines_of(client, batch.output_file_id)]
            )
    assert orders[0] == orders[1]
    assert orders[0] != [f"r{i}" for i in range(10)]


def test_failed_lines_go_to_the_error_file(emu: Emulator, clock: FakeClock) -> None:
    client = _client(emu)
    lines = [
        _line("ok", "What is 1 + 1?"),
        _line("filtered", "[emu:filter] something"),
        _line("server", "[emu:500*1] once"),
        _line("no-messages", "x"),
    ]
    lines[3]["body"]["messages"] = []
    batch_id = _submit(client, clock, lines)
    clock.advance(5)
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 3)
    errors = {x["custom_id"]: x for x in _lines_of(client, batch.error_file_id)}
    assert set(errors) == {"filtered", "server", "no-messages"}
    filtered = errors["filtered"]["response"]
    assert filtered["status_code"] == 400
    assert filtered["body"]["error"]["code"] == "content_filter"
    assert errors["server"]["response"]["status_code"] == 500
    assert errors["no-messages"]["response"]["body"]["error"]["param"] == "messages"
    assert [x["custom_id"] for x in _lines_of(client, batch.output_file_id)] == ["ok"]
    assert emu.stats()["batch"]["lines_failed"] == 3


def test_no_empty_error_file_when_told(clock: FakeClock) -> None:
    with Emulator(clock=clock, batches=BatchService(empty_error_file=False)) as emu:
        client = _client(emu)
        batch_id = _submit(client, clock, [_line("a", "hi")])
        clock.advance(5)
        batch = client.batches.retrieve(batch_id)
    assert batch.status == "completed" and batch.error_file_id is None


@pytest.mark.parametrize(
    ("case", "code", "line"),
    [
        ("model", "model_mismatch", 2),
        ("url", "url_mismatch", 2),
        ("unknown_url", "invalid_url", 2),
        ("json", "invalid_json_line", 2),
        ("duplicate", "duplicate_custom_id", 2),
        ("method", "invalid_request", 2),
        ("lines", "too_many_tasks", None),
        ("bytes", "file_too_large", None),
        ("empty", "empty_batch", None),
        ("deployment", "model_not_found", None),
    ],
)
def test_validation_failures_name_the_reason(
    clock: FakeClock, case: str, code: str, line: int | None
) -> None:
    lines = [_line("a", "hi"), _line("b", "ho"), _line("c", "hu")]
    data = b""
    if case == "model":
        lines[1]["body"]["model"] = "gpt-4o-batch"
    elif case == "url":  # a known endpoint, not the batch's
        lines[1]["url"] = "/v1/responses"
    elif case == "unknown_url":
        lines[1]["url"] = "/v1/completions"
    elif case == "duplicate":
        lines[1]["custom_id"] = "a"
    elif case == "method":
        lines[1]["method"] = "GET"
    data = _jsonl(lines)
    if case == "json":
        first, _, rest = data.partition(b"\n")
        data = first + b"\n{not json\n" + rest
    elif case == "empty":
        data = b"\n"
    service = BatchService(
        max_lines=2 if case == "lines" else 100_000,
        max_bytes=100 if case == "bytes" else 200 * 1024 * 1024,
    )
    deployments = frozenset({"other"}) if case == "deployment" else None
    with Emulator(clock=clock, batches=service, deployments=deployments) as emu:
        client = _client(emu)
        file = client.files.create(file=("in.jsonl", data), purpose="batch")
        clock.advance(1)
        batch = client.batches.create(
            input_file_id=file.id,
            endpoint=CHAT,
            completion_window="24h",
        )
        clock.advance(0.5)
        assert client.batches.retrieve(batch.id).status == "validating"
        clock.advance(0.5)
        batch = client.batches.retrieve(batch.id)
        stats = emu.stats()["batch"]
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data
    assert [e.code for e in batch.errors.data] == [code]
    assert batch.errors.data[0].line == line
    assert batch.errors.data[0].message
    assert batch.output_file_id is None and stats["lines_answered"] == 0


def test_create_and_upload_refuse_bad_arguments(
    emu: Emulator, clock: FakeClock
) -> None:
    client = _client(emu)
    with pytest.raises(openai.BadRequestError, match=r"\*\.jsonl"):
        client.files.create(file=("in.txt", b"{}\n"), purpose="batch")
    tuning = client.files.create(file=("t.jsonl", b"{}\n"), purpose="fine-tune")
    good = client.files.create(
        file=("in.jsonl", _jsonl([_line("a", "hi")])), purpose="batch"
    )
    clock.advance(1)
    with pytest.raises(openai.BadRequestError, match="not uploaded for 'batch'"):
        client.batches.create(
            input_file_id=tuning.id,
            endpoint=CHAT,
            completion_window="24h",
        )
    with pytest.raises(openai.BadRequestError, match="does not exist"):
        client.batches.create(
            input_file_id="file-nope",
            endpoint=CHAT,
            completion_window="24h",
        )
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(
            input_file_id=good.id,
            endpoint="/v1/completions",  # /v1/embeddings is taken (its own test)
            completion_window="24h",
        )
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        client.batches.create(
            input_file_id=good.id,
            endpoint=CHAT,
            completion_window=ONE_HOUR,
        )
    with pytest.raises(openai.BadRequestError, match="metadata"):
        client.batches.create(
            input_file_id=good.id,
            endpoint=CHAT,
            completion_window="24h",
            metadata={"k" * 65: "v"},
        )
    assert emu.stats()["batch"]["batches_created"] == 0


def test_the_enqueued_token_quota_fails_a_batch_that_would_pass_it(
    clock: FakeClock,
) -> None:
    # "q 0" is 8 prompt tokens by the emulator's estimate: 10 lines are 80
    service = BatchService(enqueued_tokens_limit=100, line_s=1.0)
    with Emulator(clock=clock, batches=service) as emu:
        client = _client(emu)
        first = _submit(client, clock, [_line(f"a{i}", f"q {i}") for i in range(10)])
        clock.advance(1.5)
        assert client.batches.retrieve(first).status == "in_progress"
        second = _submit(client, clock, [_line(f"b{i}", f"q {i}") for i in range(10)])
        clock.advance(1)
        refused = client.batches.retrieve(second)
        assert refused.status == "failed" and refused.errors is not None
        assert refused.errors.data is not None
        error = refused.errors.data[0]
        assert error.code == "token_limit_exceeded" and error.line is None
        assert "limit of 100" in (error.message or "")
        # another deployment has its own quota
        other = _submit(
            client,
            clock,
            [_line(f"c{i}", f"q {i}", model="other-batch") for i in range(10)],
        )
        clock.advance(1)
        assert client.batches.retrieve(other).status == "in_progress"
        clock.advance(20)
        assert client.batches.retrieve(first).status == "completed"
        third = _submit(client, clock, [_line(f"b{i}", f"q {i}") for i in range(10)])
        clock.advance(1)
        assert client.batches.retrieve(third).status == "in_progress"


def test_an_expire_directive_leaves_the_batch_to_expire(clock: FakeClock) -> None:
    service = BatchService(completion_window_s=600)
    with Emulator(clock=clock, batches=service) as emu:
        client = _client(emu)
        lines = [_line(f"r{i}", f"What is {i} + 1?") for i in range(4)]
        lines.append(_line("stuck", "[emu:batch_expire] never"))
        batch_id = _submit(client, clock, lines)
        clock.advance(300)
        batch = client.batches.retrieve(batch_id)
        assert batch.status == "in_progress"
        assert batch.request_counts is not None
        assert batch.request_counts.completed == 4
        clock.advance(300)
        batch = client.batches.retrieve(batch_id)
        assert batch.status == "expired" and batch.expired_at is not None
        assert batch.expires_at == batch.expired_at
        answered = {x["custom_id"] for x in _lines_of(client, batch.output_file_id)}
        errors = _lines_of(client, batch.error_file_id)
    assert answered == {f"r{i}" for i in range(4)}
    assert [(x["custom_id"], x["response"], x["error"]["code"]) for x in errors] == [
        ("stuck", None, "batch_expired")
    ]


def test_a_slow_line_holds_the_batch_and_cancel_keeps_what_was_answered(
    emu: Emulator, clock: FakeClock
) -> None:
    client = _client(emu)
    lines = [_line(f"r{i}", f"[emu:batch_slow=10] What is {i} + 1?") for i in range(6)]
    batch_id = _submit(client, clock, lines)
    clock.advance(1 + 25)  # validation, then two lines of ~10 s
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "in_progress" and batch.request_counts is not None
    assert batch.request_counts.completed == 2
    cancelling = client.batches.cancel(batch_id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    clock.advance(30)  # no line is answered while cancelling
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 4)
    assert len(_lines_of(client, batch.output_file_id)) == 2
    errors = _lines_of(client, batch.error_file_id)
    assert {x["error"]["code"] for x in errors} == {"batch_cancelled"}
    assert len(errors) == 4
    with pytest.raises(openai.ConflictError, match="cancelled"):
        client.batches.cancel(batch_id)
    assert emu.stats()["batch"]["cancels"] == 1
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")


def test_lists_page_and_files_can_be_deleted(emu: Emulator, clock: FakeClock) -> None:
    client = _client(emu)
    ids = [_submit(client, clock, [_line(f"{n}", f"q{n}")]) for n in range(3)]
    assert [b.id for b in client.batches.list(limit=1)] == ids[::-1]  # newest first
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[:0:-1] and page.has_more
    names = [f.filename for f in client.files.list(purpose="batch", limit=1)]
    assert names == ["in.jsonl"] * 3
    clock.advance(5)
    outputs = list(client.files.list(purpose="batch_output"))
    assert len(outputs) == 6  # an output and an (empty) error file per batch
    victim = client.files.list(purpose="batch").data[0].id
    deleted = client.files.delete(victim)
    assert deleted.deleted and deleted.id == victim
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(victim)
    assert emu.stats()["batch"]["files_deleted"] == 1


def test_the_endpoints_need_the_key_and_an_api_version(emu: Emulator) -> None:
    with pytest.raises(openai.AuthenticationError):
        _client(emu, key="wrong").files.list()
    token = emu.issue_token()
    entra = openai.AzureOpenAI(
        azure_endpoint=emu.url,
        azure_ad_token=token,
        api_version="2024-10-21",
        max_retries=0,
    )
    assert list(entra.batches.list()) == []
    request = urllib.request.Request(
        emu.url + "/openai/batches", headers={"api-key": emu.api_key}
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request)
    assert info.value.code == 404
    info.value.close()


def test_stats_over_http_and_reset(emu: Emulator, clock: FakeClock) -> None:
    client = _client(emu)
    _submit(client, clock, [_line("a", "hi")])
    with urllib.request.urlopen(emu.url + "/stats") as resp:
        stats = json.loads(resp.read())
    assert stats["batch"]["files_uploaded"] == 1
    assert stats["batch"]["batches_created"] == 1
    req = urllib.request.Request(emu.url + "/stats/reset", method="POST")
    urllib.request.urlopen(req).close()
    after = emu.stats()["batch"]
    assert after["files_uploaded"] == after["batches_created"] == 0
    assert sum(after["batches"].values()) == 1  # the batch itself stays


def test_batches_progress_in_the_background_on_the_real_clock() -> None:
    service = BatchService(
        validating_s=0.02,
        finalizing_s=0.02,
        file_processing_s=0,
        line_s=0.001,
        tick_s=0.01,
    )
    with Emulator(batches=service) as emu:
        client = _client(emu)
        file = client.files.create(
            file=("in.jsonl", _jsonl([_line("a", "What is 2 + 2?")])), purpose="batch"
        )
        client.batches.create(
            input_file_id=file.id,
            endpoint=CHAT,
            completion_window="24h",
        )
        # only the background task moves it: stats() reads without advancing. The
        # deadline is a generous bound on a wait for real progress (about 0.05 s), not
        # a timing assertion: this test is about the real clock
        deadline = time.monotonic() + 5
        while emu.stats()["batch"]["batches"] != {"completed": 1}:
            assert time.monotonic() < deadline, emu.stats()["batch"]
            time.sleep(0.01)
        assert emu.stats()["batch"]["lines_answered"] == 1


def test_batch_lines_skip_the_online_quota_and_latency(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the online latency is a real asyncio.sleep in the emulator: count those sleeps
    latency_waits: list[float] = []
    real_sleep = asyncio.sleep

    async def counting_sleep(delay: float, result: Any = None) -> Any:
        if delay >= 5:  # the latency below (the batch service ticks every few ms)
            latency_waits.append(delay)
        return await real_sleep(delay, result)

    monkeypatch.setattr(asyncio, "sleep", counting_sleep)
    with Emulator(clock=clock, requests_per_minute=1, latency_ms=5000) as emu:
        client = _client(emu)
        batch_id = _submit(client, clock, [_line(f"r{i}", f"q{i}") for i in range(5)])
        clock.advance(5)
        batch = client.batches.retrieve(batch_id)
        stats = emu.stats()
    assert batch.status == "completed" and batch.request_counts is not None
    # five lines under a quota of one request a minute: none was refused
    assert batch.request_counts.completed == 5
    assert stats["statuses"] == {} and stats["requests"] == 0
    assert latency_waits == []  # and none waited the online latency
