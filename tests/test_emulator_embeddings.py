"""The emulator's embeddings routes, over real HTTP with the openai SDK (urllib for raw bodies).

Classic ``/openai/deployments/{d}/embeddings`` and v1 ``/openai/v1/embeddings``: the
answer's shape, vectors (deterministic, unit, cut by ``dimensions``, base64 the same
floats, nearer for shared words), Azure's 400s, the quota's 429, the wrong-operation
400s, the chat machinery's faults and latency, counters, and batch lines.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from polars_azurechat.emulator import Emulator, EmulatorSettings
from polars_azurechat.emulator._chat import Chat

from .fakes import FakeClock

SMALL = "text-embedding-3-small"
LARGE = "text-embedding-3-large"
ADA = "text-embedding-ada-002"
#: an embedding deployment by ``per_deployment``, with a small per-request cap
PER = {"capped": {"model": SMALL, "embedding_request_tokens": 10}}


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(per_deployment=PER) as emulator:
        yield emulator


@pytest.fixture
def fresh(emu: Emulator) -> Emulator:
    emu.reset()
    return emu


#: the clients a test made, closed after it (an open socket fails the run)
_CLIENTS: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def _azure(emu: Emulator, **auth: Any) -> openai.AzureOpenAI:
    auth = auth or {"api_key": emu.api_key}
    client = openai.AzureOpenAI(
        azure_endpoint=emu.url, api_version="2024-10-21", max_retries=0, **auth
    )
    _CLIENTS.append(client)
    return client


def _v1(emu: Emulator) -> openai.OpenAI:
    client = openai.OpenAI(base_url=emu.base_url, api_key=emu.api_key, max_retries=0)
    _CLIENTS.append(client)
    return client


def _post(
    emu: Emulator, path: str, body: Any
) -> tuple[int, dict[str, str], dict[str, Any]]:
    req = urllib.request.Request(
        emu.url + path,
        data=json.dumps(body).encode(),
        headers={"api-key": emu.api_key, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def _classic_path(deployment: str) -> str:
    return f"/openai/deployments/{deployment}/embeddings?api-version=2024-10-21"


def _vectors(emu: Emulator, texts: list[str], **kw: Any) -> list[list[float]]:
    kw.setdefault("model", SMALL)
    answer = _azure(emu).embeddings.create(input=texts, encoding_format="float", **kw)
    return [d.embedding for d in answer.data]


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _cos(u: list[float], v: list[float]) -> float:
    return sum(x * y for x, y in zip(u, v, strict=True)) / (_norm(u) * _norm(v))


def test_classic_route_answers_azures_shape(fresh: Emulator) -> None:
    texts = ["hello world", "a second, longer input text", "x"]
    status, _, body = _post(fresh, _classic_path(SMALL), {"input": texts})
    assert status == 200
    assert body["object"] == "list" and body["model"] == SMALL
    assert [d["object"] for d in body["data"]] == ["embedding"] * 3
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    for d in body["data"]:
        assert len(d["embedding"]) == 1536
        assert _norm(d["embedding"]) == pytest.approx(1.0, abs=1e-5)
    tokens = sum(math.ceil(len(t) / 4) for t in texts)  # the emulator's estimate
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_the_sdk_on_both_routes(fresh: Emulator) -> None:
    classic = _azure(fresh).embeddings.create(model=SMALL, input="one text")
    v1 = _v1(fresh).embeddings.create(model=LARGE, input=["one text", "two"])
    assert len(classic.data) == 1 and len(classic.data[0].embedding) == 1536
    assert [len(d.embedding) for d in v1.data] == [3072, 3072]
    assert v1.model == LARGE and v1.usage.prompt_tokens == 2 + 1
    assert fresh.stats()["embeddings"]["routes"] == {"classic": 1, "v1": 1}


def test_vectors_are_deterministic_per_text_and_model(fresh: Emulator) -> None:
    first = _vectors(fresh, ["the same text", "another"])
    again = _vectors(fresh, ["the same text"])
    assert first[0] == again[0]
    assert first[0] != first[1]
    ada = _vectors(fresh, ["the same text"], model=ADA)[0]
    assert len(ada) == 1536 and ada != first[0]  # each model has its own space


def test_dimensions_cut_the_native_vector_and_renormalize(fresh: Emulator) -> None:
    text = "dimensions shorten the vector as text-embedding-3 does"
    full = _vectors(fresh, [text])[0]
    for d in (1, 8, 256, 1536):
        short = _vectors(fresh, [text], dimensions=d)[0]
        assert len(short) == d
        assert _norm(short) == pytest.approx(1.0, abs=1e-5)
        head = full[:d]
        assert short == pytest.approx([x / _norm(head) for x in head], abs=1e-6)
    large = _vectors(fresh, [text], model=LARGE, dimensions=3072)[0]
    assert len(large) == 3072


def test_base64_is_the_same_float32_values(fresh: Emulator) -> None:
    texts = ["encode me", "and me too"]
    floats = _vectors(fresh, texts, dimensions=64)
    answer = _azure(fresh).embeddings.create(
        model=SMALL, input=texts, dimensions=64, encoding_format="base64"
    )
    for d, expected in zip(answer.data, floats, strict=True):
        assert isinstance(d.embedding, str)  # the SDK passes an asked base64 through
        raw = base64.b64decode(d.embedding)
        assert len(raw) == 64 * 4
        assert list(struct.unpack("<64f", raw)) == expected
    # without encoding_format the SDK asks for base64 and decodes it
    decoded = _azure(fresh).embeddings.create(model=SMALL, input=texts, dimensions=64)
    assert [d.embedding for d in decoded.data] == floats


def test_texts_sharing_words_are_nearest(fresh: Emulator) -> None:
    corpus = [
        "the cat sat on the mat",
        "stock prices fell sharply on monday",
        "a recipe for apple pie with cinnamon",
        "the weather tomorrow will be rainy",
    ]
    queries = {
        "where did the cat sit": 0,
        "why did stock prices fall": 1,
        "apple pie recipe": 2,
        "rainy weather": 3,
    }
    docs = _vectors(fresh, corpus)
    found = _vectors(fresh, list(queries))
    for (query, expected), q in zip(queries.items(), found, strict=True):
        scores = [_cos(q, d) for d in docs]
        best = max(range(len(docs)), key=scores.__getitem__)
        assert best == expected, (query, scores)
        others = [s for i, s in enumerate(scores) if i != expected]
        assert scores[expected] > 0.2 > max(abs(s) for s in others)


@pytest.mark.parametrize(
    ("deployment", "body", "code", "param", "message"),
    [
        (SMALL, {"input": ["a"] * 2049}, None, None, "Too many inputs"),
        (SMALL, {"input": "x" * (8192 * 4 + 1)}, None, None, "8192 tokens"),
        (SMALL, {"input": ""}, None, None, "'$.input' is invalid"),
        (SMALL, {"input": ["fine", ""]}, None, None, "'$.input' is invalid"),
        ("capped", {"input": ["x" * 40, "y"]}, "max_tokens_per_request", None, "11"),
        (ADA, {"input": "a", "dimensions": 8}, "unsupported_parameter", "dimensions", ""),
        (SMALL, {"input": "a", "dimensions": 0}, "integer_below_min_value", "dimensions", ""),
        (SMALL, {"input": "a", "dimensions": 1537}, "integer_above_max_value", "dimensions", "1536"),
        (LARGE, {"input": "a", "dimensions": 3073}, "integer_above_max_value", "dimensions", "3072"),
        (SMALL, {"input": "a", "encoding_format": "hex"}, "invalid_value", "encoding_format", ""),
        (SMALL, {"input": [[1, 2, 3]]}, "invalid_type", "input[0]", ""),
        (SMALL, {"input": []}, "invalid_value", "input", ""),
        (SMALL, {}, "missing_required_parameter", "input", ""),
    ],
)  # fmt: skip
def test_bad_bodies_get_azures_400(
    fresh: Emulator,
    deployment: str,
    body: dict[str, Any],
    code: str | None,
    param: str | None,
    message: str,
) -> None:
    status, _, answer = _post(fresh, _classic_path(deployment), body)
    assert status == 400, answer
    error = answer["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert message in error["message"]
    stats = fresh.stats()
    assert stats["statuses"] == {"400": 1}
    assert stats["embeddings"]["inputs"] == 0  # nothing was embedded


def test_the_request_cap_is_a_setting_and_its_edge_passes(fresh: Emulator) -> None:
    status, _, body = _post(fresh, _classic_path("capped"), {"input": ["x" * 40]})
    assert status == 200 and body["usage"]["total_tokens"] == 10
    with pytest.raises(ValueError, match="embedding_request_tokens"):
        EmulatorSettings(embedding_request_tokens=0)


def test_the_quota_counts_the_inputs_tokens_and_answers_429() -> None:
    clock = FakeClock()
    # 600 tokens a minute: 100 per 10-s window
    with Emulator(clock=clock, tokens_per_minute=600, limit_headers=True) as emu:
        text = "y" * 320  # 80 tokens
        status, headers, body = _post(emu, _classic_path(SMALL), {"input": text})
        assert status == 200 and body["usage"]["total_tokens"] == 80
        # charged the inputs' tokens only: no completion part as a chat request's
        assert headers["x-ratelimit-remaining-tokens"] == "20"
        assert headers["x-ratelimit-limit-tokens"] == "100"
        status, headers, body = _post(emu, _classic_path(SMALL), {"input": text})
        assert status == 429
        assert "Embeddings_Create" in body["error"]["message"]
        assert "token rate limit" in body["error"]["message"]
        assert int(headers["retry-after-ms"]) == 10_000
        clock.advance(10)
        status, _, _ = _post(emu, _classic_path(SMALL), {"input": text})
        assert status == 200
        assert emu.stats()["statuses"] == {"200": 2, "429": 1}


def test_a_chat_deployment_refuses_embeddings_and_back(fresh: Emulator) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _azure(fresh).embeddings.create(model="gpt-4o-mini", input="x")
    assert caught.value.code == "OperationNotSupported"
    assert "The embeddings operation does not work" in caught.value.message
    with pytest.raises(openai.BadRequestError, match="embeddings operation"):
        _v1(fresh).embeddings.create(model="gpt-4o-mini", input="x")
    with pytest.raises(openai.BadRequestError) as caught:
        _azure(fresh).chat.completions.create(
            model=SMALL, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "OperationNotSupported"
    assert "The chatCompletion operation does not work" in caught.value.message
    assert SMALL in caught.value.message
    with pytest.raises(openai.BadRequestError, match="responses operation"):
        _v1(fresh).responses.create(model="capped", input="hi")
    stats = fresh.stats()
    assert stats["statuses"] == {"400": 4}
    assert stats["embeddings"]["routes"] == {"classic": 1, "v1": 1}


def test_named_embedding_deployments_are_a_setting() -> None:
    settings = EmulatorSettings(embedding_deployments=f"emb={LARGE}, {ADA}")
    assert settings.embedding_models() == {"emb": LARGE, ADA: ADA}
    with Emulator(settings) as emu:
        assert len(_vectors(emu, ["hi"], model="emb")[0]) == 3072
        # the default names are no longer embedding deployments: they chat
        with pytest.raises(openai.BadRequestError, match="embeddings operation"):
            _vectors(emu, ["hi"], model=SMALL)
    with pytest.raises(ValueError, match="not an embedding model"):
        EmulatorSettings(embedding_deployments="emb=gpt-4o-mini")


def test_counters(fresh: Emulator) -> None:
    _azure(fresh).embeddings.create(model=SMALL, input=["one", "two", "three"])
    _v1(fresh).embeddings.create(model=SMALL, input="four")
    stats = fresh.stats()
    assert stats["embeddings"] == {
        "routes": {"classic": 1, "v1": 1},
        "inputs": 4,
        "tokens": 1 + 1 + 2 + 1,
    }
    assert stats["requests"] == 2 and stats["statuses"] == {"200": 2}
    assert stats["routes"] == {"classic": 0, "v1": 0, "responses": 0}
    assert stats["prompt_tokens"] == 0  # the chat totals stay the chat's
    assert stats["deployments"][SMALL] == {"requests": 2, "statuses": {"200": 2}}


def test_scripted_faults_and_delay_as_the_chat_route(
    fresh: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = ["[emu:500*1] the fault is scripted", "plain"]
    status, _, _ = _post(fresh, _classic_path(SMALL), {"input": texts})
    assert status == 500
    status, _, body = _post(fresh, _classic_path(SMALL), {"input": texts})
    assert status == 200
    assert fresh.stats()["faults"] == {"500": 1}
    # the directive is not embedded
    assert body["data"][0]["embedding"] == _vectors(fresh, ["the fault is scripted"])[0]
    waited: list[float] = []

    async def record(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(Chat, "sleep", staticmethod(record))
    _vectors(fresh, ["[emu:delay=50] slow"])
    assert waited == [pytest.approx(0.05)]


def test_entra_tokens_and_bad_keys(fresh: Emulator) -> None:
    client = _azure(fresh, azure_ad_token=fresh.issue_token())
    assert len(client.embeddings.create(model=SMALL, input="hi").data) == 1
    with pytest.raises(openai.AuthenticationError):
        _azure(fresh, api_key="wrong").embeddings.create(model=SMALL, input="hi")
    assert fresh.stats()["auth"] == {"key": 0, "bearer": 1}


def test_batch_lines_to_v1_embeddings() -> None:
    clock = FakeClock(5000.0)
    with Emulator(clock=clock) as emu:
        client = _azure(emu)
        lines = [
            {
                "custom_id": f"row-{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": SMALL, "input": [f"text {i}", "shared"]},
            }
            for i in range(3)
        ]
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        file = client.files.create(file=("in.jsonl", data), purpose="batch")
        clock.advance(1)
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        for _ in range(40):
            clock.advance(1)
            batch = client.batches.retrieve(batch.id)
            if batch.status == "completed":
                break
        assert batch.status == "completed", batch.errors
        assert batch.output_file_id is not None
        text = client.files.content(batch.output_file_id).text
        output = {x["custom_id"]: x for x in map(json.loads, text.splitlines())}
        online = _vectors(emu, ["text 1", "shared"])
        stats = emu.stats()
    answer = output["row-1"]["response"]
    assert answer["status_code"] == 200
    assert [d["embedding"] for d in answer["body"]["data"]] == online
    assert stats["batch"]["lines_answered"] == 3
    assert stats["embeddings"]["inputs"] == 3 * 2 + 2
