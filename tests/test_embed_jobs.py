"""Embeddings jobs as chat jobs run: plan, quota, pool, Entra ID, Redis, cap, summary.

Each against the emulator over real HTTP on 127.0.0.1: the plan sends nothing, a
held quota costs few 429s, a pool's deployments both serve, a bearer token from a
credential authenticates, a Redis cache makes a rerun send only new texts, the
spending cap refuses rows before going over (each saying why), and the summary
counts what the emulator counted. The ``embed`` CLI killed with ``kill -9`` resumes
from its cache (slow: child processes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from azure.core.credentials import AccessToken

import polars_azurechat as pac
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator
from polars_azurechat.emulator._vectors import embed as emulator_vector
from polars_azurechat.errors import CompletionFailed, SpendingCapError
from polars_azurechat.transport.tokens import text_tokens

from ._redis import redis_server

SMALL = "text-embedding-3-small"
DIMS = 8


def _texts(n: int, tag: str = "") -> list[str]:
    return [f"text number {i}{tag}" for i in range(n)]


def _expected(texts: list[str]) -> list[list[float]]:
    return [emulator_vector(t, SMALL, 1536, DIMS) for t in texts]


def _close(got: list[Any], texts: list[str]) -> bool:
    want = _expected(texts)
    return len(got) == len(want) and all(
        g is not None and all(abs(a - b) < 1e-6 for a, b in zip(g, w, strict=True))
        for g, w in zip(got, want, strict=True)
    )


def _sent(emu: Emulator) -> dict[str, int]:
    e = emu.stats()["embeddings"]
    return {"requests": sum(e["routes"].values()), "inputs": e["inputs"]}


def _config(emu: Emulator, **kw: Any) -> ChatConfig:
    return ChatConfig(
        azure_endpoint=emu.url, api_key=emu.api_key, deployment=SMALL, **kw
    )


# -- plan --------------------------------------------------------------------------


def test_plan_estimates_tokens_packs_cost_and_time_and_sends_nothing() -> None:
    texts = [*_texts(50), *_texts(10), None, ""]  # 10 repeats, a null, an empty
    with (
        Emulator() as emu,
        pac.Embedder(
            config=_config(emu),
            dimensions=DIMS,
            inputs_per_request=8,
            requests_per_minute=24,
            max_concurrency=4,
        ) as job,
    ):
        p = job.plan(texts, latency_s=0.5)
        assert emu.stats()["requests"] == 0
    tokens = sum(text_tokens(t) for t in _texts(50))
    assert p.kind == "embeddings"
    assert p.requests == 7  # 50 unique texts, 8 a request
    assert p.request_tokens == tokens  # the repeats are not sent
    assert p.prompt_tokens == tokens + sum(text_tokens(t) for t in _texts(10))
    assert p.unsendable == 1 and "empty" in (p.rows["error"][61] or "")
    assert p.rows["prompt_tokens"][60] is None
    assert p.rows["over_context"].to_list() == [False] * 60 + [None, None]
    assert p.estimated_cost_usd == pytest.approx(tokens * 0.02 / 1e6)
    # 7 requests at 24 a minute (4 a 10-s window): one window's wait, then the last
    assert (p.bound_by, p.estimated_wall_s) == ("requests_per_minute", 10.5)
    assert "input tokens only" in str(p)


def test_plan_of_a_large_model_and_a_token_bound_pool() -> None:
    with Emulator() as emu:
        pool = [
            pac.Deployment(name="text-embedding-3-large", tokens_per_minute=6_000),
            pac.Deployment(name="text-embedding-3-large-2", tokens_per_minute=6_000),
        ]
        cfg = ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key)
        with pac.Embedder(config=cfg, deployments=pool, inputs_per_request=16) as job:
            p = job.plan(_texts(2_000))
        assert emu.stats()["requests"] == 0
    tokens = sum(text_tokens(t) for t in _texts(2_000))
    assert p.estimated_cost_usd == pytest.approx(tokens * 0.13 / 1e6)
    assert p.bound_by == "tokens_per_minute"
    # 12,000 tokens a minute together: 2,000 a 10-s window
    assert p.estimated_wall_s == pytest.approx(10.0 * (-(-tokens // 2_000) - 1) + 1.0)


def test_the_embed_cli_plans_without_sending_or_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from polars_azurechat.cli import app

    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pl.DataFrame({"t": [*_texts(100), None]}).write_parquet(src)
    with Emulator() as emu:
        for key, value in emu.env(SMALL).items():
            monkeypatch.setenv(key, value)
        args = ["embed", str(src), str(out), "--column", "t", "--dimensions", "8"]
        result = CliRunner().invoke(
            app, [*args, "--inputs-per-request", "40", "--plan"]
        )
        assert emu.stats()["requests"] == 0
    assert result.exit_code == 0, result.output
    tokens = sum(text_tokens(t) for t in _texts(100))
    assert "101 (3 requests; 0 cannot be sent" in result.output
    assert f"{tokens:,} prompt" in result.output
    assert "text-embedding-3-small, input tokens only" in result.output
    assert not out.exists()


# -- quota, pool, Entra ID ---------------------------------------------------------


def test_a_held_token_quota_is_respected_with_few_429s() -> None:
    # 6,000 tokens a minute over 1-s windows: 100 a window; 50 texts of ~4 tokens (by
    # the emulator's count), 5 a request: the job must spread 10 requests over two
    # windows (sent at once, half would get a 429)
    texts = _texts(50)
    with Emulator(
        tokens_per_minute=6_000, token_window_s=1.0, retry_after_ms=50
    ) as emu:
        with pac.Embedder(
            config=_config(emu),
            dimensions=DIMS,
            inputs_per_request=5,
            tokens_per_minute=6_000,
            max_concurrency=16,
        ) as job:
            out = job.run(texts).to_list()
        stats = emu.stats()
    assert _close(out, texts)
    assert stats["embeddings"]["inputs"] >= 50
    assert stats["embeddings"]["tokens"] > 150  # more than a window's worth
    assert stats["statuses"].get("429", 0) <= 2, stats["statuses"]


def test_a_pool_of_two_embedding_deployments_both_serve_in_row_order() -> None:
    texts = _texts(400)
    pool = [
        pac.Deployment(name=SMALL, requests_per_minute=60),
        pac.Deployment(name=f"{SMALL}-eu", requests_per_minute=60),
    ]
    with Emulator(
        requests_per_minute=60,
        request_window_s=10.0,
        per_deployment={f"{SMALL}-eu": {"model": SMALL}},  # a second of the model
    ) as emu:
        cfg = ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key)
        with pac.Embedder(
            config=cfg, deployments=pool, dimensions=DIMS, inputs_per_request=25
        ) as job:
            out = job.run(texts).to_list()
            summary = job.summary()
        deployments = emu.stats()["deployments"]
    assert _close(out, texts)
    # 16 packs; each deployment takes 10 a window: both must serve
    served = {name: d["statuses"].get("200", 0) for name, d in deployments.items()}
    assert served[SMALL] >= 1 and served[f"{SMALL}-eu"] >= 1, deployments
    assert served[SMALL] + served[f"{SMALL}-eu"] == 16
    assert set(summary.deployments) == {SMALL, f"{SMALL}-eu"}


class Credential:
    """An azure-identity TokenCredential: a token the emulator issued, counted."""

    def __init__(self, emu: Emulator) -> None:
        self.emu, self.calls = emu, 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken(self.emu.issue_token(ttl_s=3600), int(time.time() + 3600))


def test_entra_id_a_bearer_token_from_a_credential() -> None:
    texts = _texts(30)
    with Emulator(key_auth=False) as emu:
        credential = Credential(emu)
        cfg = ChatConfig(
            azure_endpoint=emu.url, deployment=SMALL, credential=credential
        )
        df = pl.DataFrame({"t": texts})
        out = df.select(
            pl.col("t").chat.embed(config=cfg, dimensions=DIMS, inputs_per_request=7)
        )
        stats = emu.stats()
    assert _close(out["t"].to_list(), texts)
    assert credential.calls == 1
    assert stats["auth"] == {"key": 0, "bearer": 5}
    assert stats["statuses"] == {"200": 5}
    assert emu.api_key not in repr(cfg)


def test_a_key_on_a_resource_without_key_auth_fails_every_row_saying_why() -> None:
    with Emulator(key_auth=False) as emu:
        with pytest.raises(pac.AuthenticationError, match=r"Entra|key"):
            pac.embed_many(_texts(3), config=_config(emu), dimensions=DIMS)
        assert emu.stats()["requests"] == 1


# -- Redis cache -------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def test_a_redis_cache_makes_a_rerun_send_only_new_texts(redis_url: str) -> None:
    first, more = _texts(40, "r"), _texts(12, "new")
    cache = f"{redis_url}/0"
    with Emulator() as emu:
        kw: dict[str, Any] = {"dimensions": DIMS, "inputs_per_request": 16}
        out = pac.embed_many(first, config=_config(emu), cache=cache, **kw)
        assert _close(out, first) and _sent(emu)["inputs"] == 40
        emu.reset()
        with pac.Embedder(config=_config(emu), cache=cache, **kw) as job:
            again = job.run([*first, *more]).to_list()
            summary = job.summary()
        assert _sent(emu) == {"requests": 1, "inputs": 12}
    assert _close(again, [*first, *more])
    assert summary.cached == 40


# -- the spending cap --------------------------------------------------------------


def test_the_spending_cap_stops_before_going_over_and_each_row_says_why(
    tmp_path: Path,
) -> None:
    texts = _texts(30)
    per_text = text_tokens(texts[0]) * 0.02 / 1e6
    cap = 10.5 * per_text  # about ten texts' worth
    with Emulator() as emu:
        with pac.Embedder(
            config=_config(emu),
            dimensions=DIMS,
            inputs_per_request=1,
            max_concurrency=1,
            max_cost_usd=cap,
            on_error="raise",
            cache=tmp_path / "c.sqlite",
        ) as job:
            with pytest.raises(CompletionFailed) as info:
                job.run(texts)
            summary = job.summary()
        sent = emu.stats()["embeddings"]
        refused = info.value.row_indices
        assert 1 <= sent["inputs"] < 30
        assert refused == list(range(sent["inputs"], 30))
        for e in info.value.exceptions:
            assert isinstance(e.__cause__, SpendingCapError), e
            assert "max_cost_usd" in str(e)
        assert summary.spent_usd is not None and summary.spent_usd <= cap
        assert summary.capped == 30 - sent["inputs"]
        # a rerun with room sends only the refused texts
        emu.reset()
        with pac.Embedder(
            config=_config(emu),
            dimensions=DIMS,
            inputs_per_request=1,
            max_cost_usd=1.0,
            cache=tmp_path / "c.sqlite",
        ) as job:
            out = job.run(texts).to_list()
        assert _sent(emu)["inputs"] == len(refused)
    assert _close(out, texts)


# -- the summary -------------------------------------------------------------------


def test_the_summary_counts_requests_inputs_tokens_and_cost() -> None:
    texts = [*_texts(100), *_texts(20), None]
    with Emulator() as emu:
        with pac.Embedder(
            config=_config(emu), dimensions=DIMS, inputs_per_request=32
        ) as job:
            job.run(texts)
            s = job.summary()
        e = emu.stats()["embeddings"]
    assert (s.answered, s.deduplicated, s.null_rows) == (120, 20, 1)
    assert s.requests == sum(e["routes"].values()) == 4
    assert s.inputs == e["inputs"] == 100
    tokens = sum(text_tokens(t) for t in _texts(100))
    assert s.prompt_tokens == tokens and s.completion_tokens == 0
    assert s.estimated_cost_usd == pytest.approx(tokens * 0.02 / 1e6)
    text = str(s)
    assert "121 (120 answered, 0 failed, 1 null; 0 from cache, 20 deduplicated)" in text
    assert "requests:  4 (0 retried, 0 rate-limited; 100 inputs)" in text
    assert f"{tokens:,} prompt, 0 completion" in text
    assert "(text-embedding-3-small)" in text


# -- kill -9 and resume (the CLI) --------------------------------------------------

ROWS = 3_000
PER_REQUEST = 10
CONCURRENCY = 8


def _embed_job(
    src: Path, out: Path, cache: Path, emu: Emulator
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "polars_azurechat",
            "embed",
            str(src),
            str(out),
            "--column",
            "t",
            "--deployment",
            SMALL,
            "--dimensions",
            str(DIMS),
            "--inputs-per-request",
            str(PER_REQUEST),
            "--max-concurrency",
            str(CONCURRENCY),
            "--cache",
            str(cache),
            "--no-progress",
        ],
        env={**os.environ, **emu.env(SMALL)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_a_killed_embed_resumes_from_its_cache_without_paying_twice(
    tmp_path: Path,
) -> None:
    src, out, cache = (
        tmp_path / "in.parquet",
        tmp_path / "out.parquet",
        tmp_path / "v.sqlite",
    )
    texts = _texts(ROWS, "k")
    pl.DataFrame({"i": range(ROWS), "t": texts}).write_parquet(src, row_group_size=500)
    victim: list[subprocess.Popen[bytes]] = []

    def kill_at_150(n: int) -> None:
        if n == 150 and victim:
            os.kill(victim[0].pid, signal.SIGKILL)

    with Emulator(latency_ms=10, on_request=kill_at_150) as emu:
        victim.append(_embed_job(src, out, cache, emu))
        victim[0].communicate(timeout=120)
        assert victim[0].returncode == -signal.SIGKILL
        first = _sent(emu)
        assert not out.exists()
        rerun = _embed_job(src, out, cache, emu)
        _, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err.decode()
        total = _sent(emu)
    df = pl.read_parquet(out).sort("i")
    assert df["t"].to_list() == texts
    assert _close(df["embedding"].to_list(), texts)
    assert df["embedding_error"].null_count() == ROWS
    assert first["requests"] >= 150
    # lost to the kill: the packs in flight and those answered during the last commit
    assert total["inputs"] <= ROWS + 2 * CONCURRENCY * PER_REQUEST, (first, total)
    assert "from cache" in err.decode()
    print(f"killed after {first}; both runs sent {total} for {ROWS} rows")  # noqa: T201 - shown with -s
