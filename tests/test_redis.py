"""State shared through a real redis-server: the answer cache (and, later, the limiter)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from polars_azurechat._auth import KeyAuth
from polars_azurechat._engine import ChatEngine
from polars_azurechat._redis import RedisCache, shown_url
from polars_azurechat._transport import Transport
from polars_azurechat._types import ChatRequest, ChatResult
from polars_azurechat.cache import request_key
from polars_azurechat.emulator import Emulator
from polars_azurechat.errors import CacheError, ServerError

from ._redis import redis_server


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def _engine(emu: Emulator, cache: RedisCache) -> ChatEngine:
    transport = Transport(
        endpoint=emu.url,
        deployment="gpt-4o-mini",
        api_version="2024-10-21",
        auth=KeyAuth({"api-key": emu.api_key}),
        timeout_s=5,
    )
    return ChatEngine(transport, cache=cache, params={"max_tokens": 10})


def test_answers_round_trip(redis_url: str) -> None:
    cache = RedisCache(redis_url)
    key = request_key(
        host="h",
        deployment="d",
        api_version="v",
        messages=[{"role": "user", "content": "x"}],
        params={},
    )
    cache.put(
        key,
        ChatResult(
            content="héllo", finish_reason="stop", prompt_tokens=3, completion_tokens=1
        ),
    )
    cache.put("failed", ChatResult(exception=ServerError("no")))  # never cached
    assert cache.get_many([key]) == {}  # queued, not written yet
    cache.flush()
    hits = cache.get_many([key, "failed", "missing"])
    assert list(hits) == [key]
    hit = hits[key]
    assert (
        hit.content,
        hit.finish_reason,
        hit.prompt_tokens,
        hit.completion_tokens,
    ) == (
        "héllo",
        "stop",
        3,
        1,
    )
    assert hit.cached and hit.attempts == 0
    cache.close()
    cache.close()  # idempotent


def test_two_workers_share_answers(redis_url: str) -> None:
    rows = [
        ChatRequest([{"role": "user", "content": f"What is {i} + 9?"}])
        for i in range(30)
    ]
    with Emulator() as emu:
        first = _engine(emu, RedisCache(redis_url))
        answered = first.run(rows)
        assert [r.content if r else None for r in answered] == [
            str(i + 9) for i in range(30)
        ]
        first.close()
        assert emu.stats()["requests"] == 30
        second = _engine(emu, RedisCache(redis_url))  # another worker, same server
        results = second.run(rows)
        second.close()
        assert emu.stats()["requests"] == 30  # nothing sent again
    assert [r.content if r else None for r in results] == [
        str(i + 9) for i in range(30)
    ]
    assert all(r is not None and r.cached for r in results)


def test_an_unreachable_server_is_refused_before_any_request() -> None:
    with pytest.raises(CacheError) as info:
        RedisCache("redis://:s3cret-pass@127.0.0.1:9/0")
    message = str(info.value)
    assert "cache redis://127.0.0.1:9/0: cannot reach Redis" in message
    assert "s3cret" not in message


def test_a_server_lost_mid_run_breaks_the_cache_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with redis_server() as url:
        cache = RedisCache(url)
    # the server is gone now
    cache.put("k", ChatResult(content="a", finish_reason="stop"))
    with caplog.at_level(logging.WARNING, logger="polars_azurechat"):
        cache.flush()
        assert cache.get_many(["k"]) == {}
    assert cache.broken is not None and "cannot save answers" in cache.broken
    assert caplog.text.count("the run goes on without the cache") == 1
    cache.close()


def test_the_password_never_shows() -> None:
    assert shown_url("rediss://u:p4ss@h:1/3") == "rediss://u@h:1/3"


def test_the_job_and_the_cli_take_a_redis_cache(redis_url: str, tmp_path: Any) -> None:
    import polars as pl
    from typer.testing import CliRunner

    import polars_azurechat as pac
    from polars_azurechat.cli import app

    prompts = [f"What is {i} + 11?" for i in range(8)]
    src, dst = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pl.DataFrame({"q": prompts}).write_parquet(src)
    with Emulator() as emu:
        config = pac.ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key)
        with pac.Completer(config=config, deployment="d", cache=redis_url) as job:
            assert job.run(prompts) == [str(i + 11) for i in range(8)]
            assert "redis://" in repr(job.engine.cache)
        assert emu.stats()["requests"] == 8
        # another job (the CLI) on the same deployment: every answer from Redis
        result = CliRunner(env=emu.env(deployment="d")).invoke(
            app,
            [
                "run",
                str(src),
                str(dst),
                "--column",
                "q",
                "--cache",
                redis_url,
                "--no-progress",
            ],
        )
        assert emu.stats()["requests"] == 8
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(dst)["answer"].to_list() == [str(i + 11) for i in range(8)]
    assert "8 from cache" in result.output
