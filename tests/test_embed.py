"""Embeddings through the engine, against the emulator over HTTP.

The column's dtype before any request, the vectors the emulator sends in row order,
identical texts sent once, packing by inputs and by tokens, nulls, empty and
over-long texts, a pack Azure refuses split down to the refused row, the cache, lazy
and streaming queries, a 429 waited out, the summary, and the plain-Python forms.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

import polars_azurechat as pac
from polars_azurechat._types import ChatRequest
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator
from polars_azurechat.emulator._vectors import embed as emulator_vector
from polars_azurechat.engine.embed import EmbeddingShape
from polars_azurechat.engine.frontdoor import RequestShape
from polars_azurechat.engine.texts import EmbeddingSpec, TextsRequest
from polars_azurechat.errors import (
    BadRequestError,
    CompletionFailed,
    InputError,
    RowError,
)
from polars_azurechat.transport.tokens import text_tokens

SMALL = "text-embedding-3-small"
LARGE = "text-embedding-3-large"


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    # a scripted 429 asks for a 1-ms wait: no test waits on a clock
    with Emulator(retry_after_ms=1) as emulator:
        yield emulator


@pytest.fixture
def cfg(emu: Emulator) -> ChatConfig:
    emu.reset()
    return ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key)


def _embeddings(emu: Emulator) -> dict[str, int]:
    e = emu.stats()["embeddings"]
    return {"requests": sum(e["routes"].values()), "inputs": e["inputs"]}


def _expected(
    text: str, dims: int, model: str = SMALL, native: int = 1536
) -> list[float]:
    return emulator_vector(text, model, native, dims)


def test_dtype_known_before_any_request(emu: Emulator, cfg: ChatConfig) -> None:
    lf = pl.LazyFrame({"text": ["red apples"]})
    q = lf.select(
        small=pac.embed("text", deployment=SMALL, dimensions=256, config=cfg),
        large=pl.col("text").chat.embed(deployment=LARGE, config=cfg),
    )
    schema = q.collect_schema()
    assert schema["small"] == pl.Array(pl.Float32, 256)
    assert schema["large"] == pl.Array(pl.Float32, 3072)  # the model's native size
    assert _embeddings(emu) == {"requests": 0, "inputs": 0}
    assert emu.stats()["requests"] == 0
    # a size that cannot be known is refused before any request
    with pytest.raises(ValueError, match="give dimensions=, or model="):
        pac.embed("text", deployment="my-embedder", config=cfg)
    with pytest.raises(ValueError, match="ada-002 takes no dimensions"):
        pac.embed("text", deployment="text-embedding-ada-002", dimensions=8, config=cfg)
    with pytest.raises(TypeError, match="embeddings take no 'max_tokens'"):
        pac.Embedder(deployment=SMALL, config=cfg, max_tokens=5)  # type: ignore[call-arg]


def test_vectors_are_the_emulators_in_row_order(emu: Emulator, cfg: ChatConfig) -> None:
    texts = [
        f"text number {i} about {'apples' if i % 2 else 'markets'}" for i in range(50)
    ]
    with pac.Embedder(
        deployment=SMALL, dimensions=16, inputs_per_request=7, config=cfg
    ) as job:
        out = pl.DataFrame({"t": texts}).select(job.expr("t"))["t"]
        s = job.summary()
    assert out.dtype == pl.Array(pl.Float32, 16)
    assert out.to_list() == [_expected(t, 16) for t in texts]
    assert _embeddings(emu) == {"requests": math.ceil(50 / 7), "inputs": 50}
    assert (s.requests, s.inputs, s.answered) == (8, 50, 50)
    assert s.prompt_tokens == emu.stats()["embeddings"]["tokens"]
    assert s.estimated_cost_usd == pytest.approx(s.prompt_tokens * 0.02 / 1e6)


def test_native_size_without_dimensions(emu: Emulator, cfg: ChatConfig) -> None:
    out = pac.embed_many(["red apples"], deployment=LARGE, config=cfg)
    assert out == [_expected("red apples", 3072, LARGE, 3072)]
    # a deployment named otherwise: model= gives the size, nothing is sent as dimensions
    job = pac.Embedder(deployment=SMALL, model=SMALL, config=cfg)
    assert job.dtype == pl.Array(pl.Float32, 1536)
    job.close()


def test_identical_texts_are_sent_once(emu: Emulator, cfg: ChatConfig) -> None:
    texts = ["a red apple", "a green pear", "a red apple", None, "a red apple"]
    with pac.Embedder(deployment=SMALL, dimensions=8, config=cfg) as job:
        out = job.run(texts).to_list()
        s = job.summary()
    assert out[0] == out[2] == out[4] == _expected("a red apple", 8)
    assert out[3] is None
    assert _embeddings(emu) == {"requests": 1, "inputs": 2}
    assert (s.deduplicated, s.null_rows, s.inputs) == (2, 1, 2)


def test_packing_by_the_request_token_budget(emu: Emulator, cfg: ChatConfig) -> None:
    texts = [
        f"alpha beta gamma {w}" for w in ("one", "two", "six", "ten", "red", "big")
    ]
    tokens = [text_tokens(t) for t in texts]
    assert len(set(tokens)) == 1  # the same count each, so pairs fill a budget
    pac.embed_many(
        texts, deployment=SMALL, dimensions=4, request_tokens=2 * tokens[0], config=cfg
    )
    assert _embeddings(emu) == {"requests": 3, "inputs": 6}


def test_packing_by_the_input_count(emu: Emulator, cfg: ChatConfig) -> None:
    texts = [f"word{i}" for i in range(10)]
    out = pac.embed_many(
        texts, deployment=SMALL, dimensions=4, inputs_per_request=4, config=cfg
    )
    assert out == [_expected(t, 4) for t in texts]
    assert _embeddings(emu) == {"requests": 3, "inputs": 10}
    with pytest.raises(ValueError, match="inputs_per_request must be"):
        pac.Embedder(deployment=SMALL, inputs_per_request=2049, config=cfg)


def test_null_empty_and_over_long_rows(emu: Emulator, cfg: ChatConfig) -> None:
    long = "word " * 9000  # 9,001 tokens: over the 8,192 an input may have
    texts = ["fine text", None, "", long]
    with pac.Embedder(deployment=SMALL, dimensions=4, config=cfg) as job:
        out = job.run(texts).to_list()
        s = job.summary()
    assert out == [_expected("fine text", 4), None, None, None]
    assert (s.answered, s.failed, s.null_rows) == (1, 2, 1)
    assert _embeddings(emu) == {"requests": 1, "inputs": 1}
    # on_error="raise" names each failed row and why
    with pytest.raises(CompletionFailed) as caught:
        pac.embed_many(
            texts, deployment=SMALL, dimensions=4, on_error="raise", config=cfg
        )
    errors = [e for e in caught.value.exceptions if isinstance(e, RowError)]
    assert [e.row_index for e in errors] == [2, 3]
    assert "empty text" in str(errors[0]) and isinstance(
        errors[0].__cause__, InputError
    )
    assert "9,001 tokens, over the 8,192" in str(errors[1])


def test_truncate_cuts_an_over_long_text_to_fit() -> None:
    long = "word " * 9000
    cut = long[: 5 * 8192].rstrip()  # its first 8,192 tokens
    # an emulator counting as Azure does (tiktoken), not ~4 characters a token
    with Emulator(token_estimator="tiktoken") as emu:
        cfg = ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key)
        out = pac.embed_many(
            [long], deployment=SMALL, dimensions=4, truncate=True, config=cfg
        )
        assert emu.stats()["embeddings"]["tokens"] == 8192
    assert out == [_expected(cut, 4)]


def test_a_refused_input_fails_alone(emu: Emulator, cfg: ChatConfig) -> None:
    # 5,000 tokens to the client, 10,000 by the emulator's estimate: Azure's 400
    bad = "a" * 40_000
    texts = ["one apple", "two apples", bad, "three apples", "four apples"]
    with pac.Embedder(deployment=SMALL, dimensions=4, config=cfg) as job:
        out = job.run(texts).to_list()
        s = job.summary()
    assert out == [None if t == bad else _expected(t, 4) for t in texts]
    assert (s.answered, s.failed) == (4, 1)
    assert s.failed_attempts.get("BadRequestError", 0) >= 2  # the pack, then the row
    assert _embeddings(emu)["inputs"] == 4
    with pytest.raises(CompletionFailed) as caught:
        pac.embed_many(
            texts, deployment=SMALL, dimensions=4, on_error="raise", config=cfg
        )
    assert [
        e.row_index for e in caught.value.exceptions if isinstance(e, RowError)
    ] == [2]
    assert isinstance(caught.value.exceptions[0].__cause__, BadRequestError)


def test_cache_rerun_sends_only_new_texts(
    emu: Emulator, cfg: ChatConfig, tmp_path: Path
) -> None:
    cache = tmp_path / "vectors.sqlite"
    texts = ["red apples", "green apples", "stock market"]
    first = pac.embed_many(
        texts, deployment=SMALL, dimensions=8, cache=cache, config=cfg
    )
    assert _embeddings(emu) == {"requests": 1, "inputs": 3}
    with pac.Embedder(deployment=SMALL, dimensions=8, cache=cache, config=cfg) as job:
        again = job.run(texts).to_list()
        assert job.summary().cached == 3
        more = job.run([*texts, "blue apples"]).to_list()
    assert again == first and more[:3] == first
    assert _embeddings(emu) == {"requests": 2, "inputs": 4}  # only the new one
    # another size is another request: the key names dimensions
    pac.embed_many(texts[:1], deployment=SMALL, dimensions=4, cache=cache, config=cfg)
    assert _embeddings(emu)["inputs"] == 5


def test_lazy_and_streaming(emu: Emulator, cfg: ChatConfig) -> None:
    texts = [f"row {i} text" if i % 5 else None for i in range(40)]
    lf = pl.LazyFrame({"i": range(40), "t": texts})
    with pac.Embedder(deployment=SMALL, dimensions=8, config=cfg) as job:
        q = lf.with_columns(v=job.expr("t"))
        lazy = q.collect()
        streaming = q.collect(engine="streaming")
    expected = [None if t is None else _expected(t, 8) for t in texts]
    assert lazy["v"].to_list() == expected
    assert streaming.sort("i")["v"].to_list() == expected


def test_a_429_is_waited_out(emu: Emulator, cfg: ChatConfig) -> None:
    texts = ["[emu:429*1] first text", "second text"]
    with pac.Embedder(deployment=SMALL, dimensions=4, config=cfg) as job:
        out = job.run(texts).to_list()
        s = job.summary()
    assert out == [_expected("first text", 4), _expected("second text", 4)]
    assert (s.rate_limited, s.requests, s.answered) == (1, 2, 2)


def test_on_a_chat_deployment_the_run_stops(emu: Emulator, cfg: ChatConfig) -> None:
    with pytest.raises(
        pac.UnsupportedParameterError, match=r"OperationNotSupported|refuses"
    ):
        pac.embed_many(["hi"], deployment="gpt-4o-mini", dimensions=4, config=cfg)


def test_the_key_names_the_kind_and_the_size() -> None:
    req = TextsRequest([], None, ["hi"], 1)
    chat = RequestShape({}, host="h", deployment="d").key(
        ChatRequest([{"role": "user", "content": "hi"}])
    )
    keys = {
        EmbeddingShape(EmbeddingSpec(n, n), host="h", deployment="d").key(req)
        for n in (4, 8)
    }
    assert len(keys) == 2 and chat not in keys
