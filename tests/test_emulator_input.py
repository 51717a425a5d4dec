"""The emulator against bad input and strangers: a 400 for a bad body, never a 500.

Bodies are posted over real HTTP (urllib) to an emulator on 127.0.0.1, and checked
against what Azure answers: a 400 ``invalid_request_error`` naming the parameter. A
caller without the key cannot make it keep state per deployment name it invents, and
an emulator that other machines can reach with its well-known key says so.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from polars_azurechat.emulator import Emulator

from .fakes import FakeClock

HI = [{"role": "user", "content": "hi"}]
#: Azure's endpoint for batches (the SDK's type names OpenAI's ``/v1/...`` ones)
ENDPOINT: Any = "/chat/completions"
CHAT = "/openai/deployments/{name}/chat/completions?api-version=2024-10-21"


def _post(
    emu: Emulator,
    data: bytes,
    *,
    key: str | None = None,
    deployment: str = "gpt-4o-mini",
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["api-key"] = key
    req = urllib.request.Request(
        emu.url + CHAT.format(name=deployment), data=data, headers=headers
    )
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _json(body: object) -> bytes:
    return json.dumps(body).encode()


DEEP = b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + (
    b"[" * 100_000 + b"]" * 100_000 + b"}"
)
DEEP_SCHEMA = (
    b'{"messages": [{"role": "user", "content": "hi"}], "response_format": '
    b'{"type": "json_schema", "json_schema": {"name": "a", "schema": '
    + b'{"type": "object", "properties": {"a": ' * 3000
    + b'{"type": "string"}'
    + b"}}" * 3000
    + b"}}}"
)

#: (body, the parameter named, the code); each was a 500 before (a TypeError,
#: ValueError or RecursionError inside the server) or a 200 Azure would not give
BAD_BODIES: dict[str, tuple[bytes, str | None, str | None]] = {
    "max_tokens a string": (
        _json({"messages": HI, "max_tokens": "abc"}),
        "max_tokens",
        "invalid_type",
    ),
    "max_tokens a list": (
        _json({"messages": HI, "max_tokens": [1]}),
        "max_tokens",
        "invalid_type",
    ),
    "max_tokens true": (
        _json({"messages": HI, "max_tokens": True}),
        "max_tokens",
        "invalid_type",
    ),
    "max_tokens below 1": (
        _json({"messages": HI, "max_tokens": -5}),
        "max_tokens",
        "integer_below_min_value",
    ),
    "max_tokens NaN": (
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": NaN}',
        None,
        None,
    ),
    "max_completion_tokens a string": (
        _json({"messages": HI, "max_completion_tokens": "x"}),
        "max_completion_tokens",
        "invalid_type",
    ),
    "temperature a string": (
        _json({"messages": HI, "temperature": "hot"}),
        "temperature",
        "invalid_type",
    ),
    "temperature above 2": (
        _json({"messages": HI, "temperature": 3}),
        "temperature",
        "decimal_above_max_value",
    ),
    "stream a string": (_json({"messages": HI, "stream": "yes"}), "stream", None),
    "a role that is a number": (
        _json({"messages": [{"role": 1, "content": "hi"}]}),
        "messages[0].role",
        "invalid_type",
    ),
    "content an object": (
        _json({"messages": [{"role": "user", "content": {"a": 1}}]}),
        "messages[0].content",
        "invalid_type",
    ),
    "a body that is a list": (_json([1, 2]), None, "invalid_type"),
    "nested 100,000 deep": (DEEP, None, None),
    "a schema nested 3,000 deep": (DEEP_SCHEMA, None, None),
    "not UTF-8": (b'{"messages": [{"role": "user", "content": "\xff"}]}', None, None),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_values_in_a_body_get_azures_400_never_a_500(name: str) -> None:
    data, param, code = BAD_BODIES[name]
    with Emulator() as emu:
        status, body = _post(emu, data, key=emu.api_key)
        stats = emu.stats()
    assert status == 400, body
    error = body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert stats["statuses"] == {"400": 1}
    # nothing answered: no tokens counted, the deployment's quota untouched
    assert stats["prompt_tokens"] == stats["completion_tokens"] == 0


def test_the_sdk_sees_a_bad_request_not_a_server_error() -> None:
    with Emulator() as emu:
        client = openai.AzureOpenAI(
            azure_endpoint=emu.url,
            api_key=emu.api_key,
            api_version="2024-10-21",
            max_retries=3,
        )
        bad: Any = {"max_tokens": "abc"}  # what an untyped caller may send
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], **bad
            )
        stats = emu.stats()
    # a 500 would have been retried three times by the SDK: a 400 is not
    assert stats["requests"] == 1 and stats["statuses"] == {"400": 1}


def test_good_bodies_still_get_answers() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    with Emulator() as emu:
        for body in (
            {"messages": HI, "max_tokens": 5, "temperature": 0, "top_p": 1.0},
            {"messages": parts, "n": 1, "seed": 7, "stream": False},
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "assistant", "content": None},
                    *HI,
                ],
                "max_completion_tokens": 10,
            },
        ):
            status, answer = _post(emu, _json(body), key=emu.api_key)
            assert status == 200, answer
        assert emu.stats()["statuses"] == {"200": 3}


def test_a_batch_line_with_a_bad_value_is_an_error_line_not_a_stuck_batch() -> None:
    clock = FakeClock(5000.0)
    with Emulator(clock=clock) as emu:
        client = openai.AzureOpenAI(
            azure_endpoint=emu.url,
            api_key=emu.api_key,
            api_version="2024-10-21",
            max_retries=0,
        )
        extras: list[dict[str, Any]] = [{"max_tokens": 5}, {"max_tokens": "abc"}]
        lines = [
            {
                "custom_id": f"row-{i}",
                "method": "POST",
                "url": "/chat/completions",
                "body": {"model": "gpt-4o-mini-batch", "messages": HI, **extra},
            }
            for i, extra in enumerate(extras)
        ]
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        file = client.files.create(file=("in.jsonl", data), purpose="batch")
        clock.advance(1)
        batch = client.batches.create(
            input_file_id=file.id,
            endpoint=ENDPOINT,
            completion_window="24h",
        )
        for _ in range(20):
            clock.advance(1)
            batch = client.batches.retrieve(batch.id)
        assert batch.status == "completed"
        assert batch.error_file_id is not None
        errors = [
            json.loads(line)
            for line in client.files.content(batch.error_file_id).text.splitlines()
        ]
        stats = emu.stats()["batch"]
    assert [e["custom_id"] for e in errors] == ["row-1"]
    response = errors[0]["response"]
    assert response["status_code"] == 400
    assert response["body"]["error"]["code"] == "invalid_type"
    assert (stats["lines_answered"], stats["lines_failed"]) == (2, 1)


def test_a_batch_file_nested_too_deep_fails_validation_not_the_server() -> None:
    clock = FakeClock(5000.0)
    with Emulator(clock=clock) as emu:
        client = openai.AzureOpenAI(
            azure_endpoint=emu.url,
            api_key=emu.api_key,
            api_version="2024-10-21",
            max_retries=0,
        )
        line = b'{"custom_id": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
        file = client.files.create(file=("in.jsonl", line), purpose="batch")
        clock.advance(1)
        batch = client.batches.create(
            input_file_id=file.id,
            endpoint=ENDPOINT,
            completion_window="24h",
        )
        for _ in range(5):
            clock.advance(1)
            batch = client.batches.retrieve(batch.id)
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    assert [e.code for e in batch.errors.data] == ["invalid_json_line"]


def test_callers_without_the_key_leave_no_state_per_deployment_name() -> None:
    with Emulator() as emu:
        for i in range(50):
            key = None if i % 2 else "wrong"
            status, _ = _post(emu, _json({"messages": HI}), key=key, deployment=f"x{i}")
            assert status == 401
        before = emu.stats()
        status, _ = _post(emu, _json({"messages": HI}), key=emu.api_key)
        after = emu.stats()
    assert before["requests"] == 50 and before["statuses"] == {"401": 50}
    assert before["deployments"] == {}  # was one lane (quota windows) per name
    assert status == 200
    assert after["deployments"] == {
        "gpt-4o-mini": {"requests": 1, "statuses": {"200": 1}}
    }


def test_a_deployment_not_in_the_list_leaves_no_state() -> None:
    with Emulator(deployments=frozenset({"gpt-4o-mini"})) as emu:
        status, body = _post(
            emu, _json({"messages": HI}), key=emu.api_key, deployment="invented"
        )
        stats = emu.stats()
    assert status == 404 and body["error"]["code"] == "DeploymentNotFound"
    assert stats["deployments"] == {}


def test_listening_beyond_loopback_with_the_default_key_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = "polars_azurechat.emulator._server"
    with caplog.at_level(logging.WARNING, logger=logger):
        with Emulator():
            pass
        with Emulator(host="0.0.0.0", api_key="a-key-of-my-own"):  # noqa: S104
            pass
        assert caplog.records == []
        with Emulator(host="0.0.0.0") as emu:  # noqa: S104
            status, _ = _post(emu, _json({"messages": HI}), key=emu.api_key)
    assert status == 200
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "0.0.0.0" in message and "'emulator-key'" in message  # noqa: S104
    assert "listen on 127.0.0.1" in message


@pytest.mark.slow
def test_the_emulator_command_says_when_others_can_reach_it() -> None:
    args = [sys.executable, "-m", "polars_azurechat", "emulator"]
    child = subprocess.Popen(
        [*args, "--host", "0.0.0.0", "--port", "0"],  # noqa: S104
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stderr is not None
        lines = []
        for line in child.stderr:
            lines.append(line)
            if "well-known default key" in line:
                break
    finally:
        child.terminate()
        child.communicate(timeout=30)  # and closes the pipe
    said = "".join(lines)
    assert "warning: the emulator listens on 0.0.0.0" in said, said
    assert "--api-key" in said
