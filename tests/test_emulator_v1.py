"""The emulator's v1 API (``/openai/v1/...``): chat, models, files and batches.

Over real HTTP, with the openai SDK's plain ``OpenAI`` client pointed at
``emu.base_url`` as Azure's v1 documentation does, and with urllib for what the SDK
does not send (an ``api-version``, an ``api-key`` header).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from polars_azurechat.emulator import Emulator

from .fakes import FakeClock

HI: Any = [{"role": "user", "content": "What is 53 + 53?"}]


def _client(emu: Emulator, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=emu.base_url, api_key=key or emu.api_key, max_retries=0
    )


def _request(
    emu: Emulator,
    path: str,
    body: object | None = None,
    *,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        emu.url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method=method,
    )
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_sdks_openai_client_speaks_to_the_v1_chat_route() -> None:
    with Emulator() as emu:
        reply = _client(emu).chat.completions.create(model="gpt-4o-mini", messages=HI)
        stats = emu.stats()
    assert reply.choices[0].message.content == "106"
    assert reply.model == "gpt-4o-mini"
    assert stats["routes"] == {"classic": 0, "v1": 1, "responses": 0}
    # the plain client sends the key as a bearer
    assert stats["auth"] == {"key": 1, "bearer": 0}
    assert stats["deployments"]["gpt-4o-mini"]["requests"] == 1


def test_v1_takes_an_api_key_header_a_bearer_key_and_an_entra_token() -> None:
    with Emulator() as emu:
        body = {"model": "d", "messages": HI}
        path = "/openai/v1/chat/completions"
        by_header, _ = _request(emu, path, body, headers={"api-key": emu.api_key})
        by_bearer, _ = _request(
            emu, path, body, headers={"Authorization": f"Bearer {emu.api_key}"}
        )
        token = emu.issue_token()
        by_token = _client(emu, key=token).chat.completions.create(
            model="d",
            messages=HI,
        )
        wrong, error = _request(emu, path, body, headers={"api-key": "nope"})
        stats = emu.stats()
    assert (by_header, by_bearer, wrong) == (200, 200, 401)
    assert by_token.choices[0].message.content == "106"
    assert "Access denied" in error["error"]["message"]
    assert stats["auth"] == {"key": 2, "bearer": 1}
    assert stats["routes"]["v1"] == 4


@pytest.mark.parametrize("version", [None, "preview", "latest", "v1"])
def test_v1_needs_no_api_version_and_takes_preview(version: str | None) -> None:
    query = "" if version is None else f"?api-version={version}"
    with Emulator() as emu:
        status, body = _request(
            emu,
            "/openai/v1/chat/completions" + query,
            {"model": "d", "messages": HI},
            headers={"api-key": emu.api_key},
        )
    assert status == 200 and body["choices"][0]["message"]["content"] == "106"


def test_v1_refuses_a_dated_api_version() -> None:
    with Emulator() as emu:
        status, body = _request(
            emu,
            "/openai/v1/chat/completions?api-version=2024-10-21",
            {"model": "d", "messages": HI},
            headers={"api-key": emu.api_key},
        )
        # the classic route still needs one
        classic, _ = _request(
            emu,
            "/openai/deployments/d/chat/completions",
            {"messages": HI},
            headers={"api-key": emu.api_key},
        )
    assert status == 400
    assert body["error"] == {
        "code": "BadRequest",
        "message": "API version not supported",
    }
    assert classic == 404


def test_v1_needs_a_model_and_a_deployment_that_exists() -> None:
    with Emulator(deployments=frozenset({"gpt-4o-mini"})) as emu:
        key = {"api-key": emu.api_key}
        path = "/openai/v1/chat/completions"
        missing, missing_body = _request(emu, path, {"messages": HI}, headers=key)
        unknown, unknown_body = _request(
            emu, path, {"model": "nope", "messages": HI}, headers=key
        )
        with pytest.raises(openai.NotFoundError):
            _client(emu).chat.completions.create(model="nope", messages=HI)
        stats = emu.stats()
    assert missing == 400 and missing_body["error"]["param"] == "model"
    assert missing_body["error"]["code"] == "missing_required_parameter"
    assert unknown == 404 and unknown_body["error"]["code"] == "DeploymentNotFound"
    assert stats["deployments"] == {}  # no lane for a name that does not exist


def test_one_deployment_by_either_route_is_one_quota_and_one_set_of_counters() -> None:
    clock = FakeClock()
    with Emulator(clock=clock, requests_per_minute=12, window_s=10) as emu:  # 2/10 s
        classic = openai.AzureOpenAI(
            azure_endpoint=emu.url,
            api_key=emu.api_key,
            api_version="2024-10-21",
            max_retries=0,
        )
        v1 = _client(emu)
        classic.chat.completions.create(model="shared", messages=HI)
        v1.chat.completions.create(model="shared", messages=HI)
        with pytest.raises(
            openai.RateLimitError
        ):  # the window is full, whichever route
            v1.chat.completions.create(model="shared", messages=HI)
        with pytest.raises(openai.RateLimitError):
            classic.chat.completions.create(model="shared", messages=HI)
        clock.advance(10)
        v1.chat.completions.create(model="shared", messages=HI)
        stats = emu.stats()
    assert stats["deployments"] == {
        "shared": {"requests": 5, "statuses": {"200": 3, "429": 2}}
    }
    assert stats["routes"] == {"classic": 2, "v1": 3, "responses": 0}


def test_scripted_faults_count_across_routes() -> None:
    with Emulator() as emu:
        prompt: Any = [{"role": "user", "content": "[emu:500*1] hi"}]
        with pytest.raises(openai.InternalServerError):
            _client(emu).chat.completions.create(model="d", messages=prompt)
        status, _ = _request(
            emu,
            "/openai/deployments/d/chat/completions?api-version=2024-10-21",
            {"messages": prompt},
            headers={"api-key": emu.api_key},
        )
    assert status == 200  # the second request with the prompt, by the other route


def test_models_lists_the_models_of_the_deployments() -> None:
    with Emulator(per_deployment={"reasoner": {"model": "o4-mini"}}) as emu:
        ids = [m.id for m in _client(emu).models.list()]
        status, _ = _request(emu, "/openai/v1/models", method="GET")
    assert ids == ["gpt-4o-mini", "o4-mini"]
    assert status == 401


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def test_files_and_batches_on_the_v1_routes_with_v1_urls() -> None:
    clock = FakeClock(5000.0)
    with Emulator(clock=clock) as emu:
        client = _client(emu)
        lines = [
            {
                "custom_id": f"row-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini-batch",
                    "messages": [{"role": "user", "content": f"What is {i} + 1?"}],
                },
            }
            for i in range(3)
        ]
        file = client.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
        clock.advance(1)
        batch = client.batches.create(
            input_file_id=file.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        for _ in range(20):
            clock.advance(0.5)
            batch = client.batches.retrieve(batch.id)
        assert batch.status == "completed"
        assert [b.id for b in client.batches.list()] == [batch.id]
        assert batch.output_file_id is not None
        output = [
            json.loads(line)
            for line in client.files.content(batch.output_file_id).text.splitlines()
        ]
        assert client.files.delete(file.id).deleted
        assert file.id not in [f.id for f in client.files.list()]
        stats = emu.stats()
    answers = {
        line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"]
        for line in output
    }
    assert answers == {"row-0": "1", "row-1": "2", "row-2": "3"}
    assert stats["batch"]["files_uploaded"] == 1
    assert stats["batch"]["files_deleted"] == 1
    assert stats["routes"] == {"classic": 0, "v1": 0, "responses": 0}


def test_v1_files_refuse_a_dated_api_version_and_need_the_key() -> None:
    with Emulator() as emu:
        dated, body = _request(
            emu,
            "/openai/v1/files?api-version=2024-10-21",
            method="GET",
            headers={"api-key": emu.api_key},
        )
        keyless, _ = _request(emu, "/openai/v1/batches", method="GET")
        fine, listing = _request(
            emu, "/openai/v1/files", method="GET", headers={"api-key": emu.api_key}
        )
    assert dated == 400 and body["error"]["message"] == "API version not supported"
    assert keyless == 401
    assert fine == 200 and listing["object"] == "list"


def test_batch_mode_on_the_v1_api_uses_its_files_and_batches(tmp_path: Any) -> None:
    # a job configured for the v1 API sends its batches through /openai/v1/ (an
    # OpenAI client, no api-version), not the classic routes with api-version "v1"
    import polars_azurechat as pac
    from polars_azurechat._cli_emulator import EMULATOR_BATCH_PACE
    from polars_azurechat.batch.mode import batch_client
    from polars_azurechat.emulator._batch import BatchService

    with Emulator(batches=BatchService(**EMULATOR_BATCH_PACE)) as emu:
        config = pac.ChatConfig(
            base_url=emu.base_url, api_key=emu.api_key, deployment="gpt-4o-mini"
        )
        client = batch_client(config)
        assert isinstance(client, openai.OpenAI)
        assert not isinstance(client, openai.AzureOpenAI)
        assert str(client.base_url) == f"{emu.url}/openai/v1/"
        client.close()
        with pac.Completer(
            config=config,
            mode="batch",
            cache=str(tmp_path / "answers.sqlite"),
            max_tokens=10,
            progress=False,
            batch_poll_s=0.05,
        ) as job:
            assert job.run(["What is 1 + 2?", "What is 2 + 5?"]) == ["3", "7"]
        stats = emu.stats()["batch"]
    assert stats["batches_created"] == 1
    assert stats["lines_answered"] == 2
