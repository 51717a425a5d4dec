"""State shared through a real redis-server: the answer cache and the limiter."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from polars_azurechat._types import ChatRequest, ChatResult
from polars_azurechat.emulator import Emulator
from polars_azurechat.engine.core import ChatEngine
from polars_azurechat.errors import CacheError, ServerError
from polars_azurechat.store.redis import RedisCache, shown_url
from polars_azurechat.store.sqlite import request_key
from polars_azurechat.transport.auth import KeyAuth
from polars_azurechat.transport.http import Transport

from ._redis import redis_server
from .fakes import FakeClock, NetworkClock


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


@pytest.mark.slow
def test_answers_round_trip(redis_url: str) -> None:
    cache = RedisCache(redis_url)
    key = request_key(
        host="h",
        deployment="d",
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# -- the shared limiter --------------------------------------------------------------


def _limited_engine(
    emu: Emulator, url: str, clock: Any, scope: str, **limits: Any
) -> ChatEngine:
    limits.setdefault("window_s", 10.0)
    from polars_azurechat.transport.redis_limiter import RedisLimiter

    transport = Transport(
        endpoint=emu.url,
        deployment="gpt-4o-mini",
        api_version="2024-10-21",
        auth=KeyAuth({"api-key": emu.api_key}),
        timeout_s=5,
    )
    limiter = RedisLimiter(
        url,
        scope=scope,
        shared_clock=clock,
        clock=clock,
        sleep=clock.sleep,
        **limits,
    )
    engine = ChatEngine(
        transport,
        limiter=limiter,
        sleep=clock.sleep,
        clock=clock,
        params={"max_tokens": 10},
    )
    clock.watch(engine)
    return engine


def _questions(n: int, start: int = 0) -> list[ChatRequest | None]:
    return [
        ChatRequest([{"role": "user", "content": f"What is {i} + 12?"}])
        for i in range(start, start + n)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False], ids=["redis", "each-alone"])
def test_two_jobs_at_once_share_one_quota(redis_url: str, shared: bool) -> None:
    import threading

    from polars_azurechat.transport.ratelimit import RateLimiter

    clock = NetworkClock(together=True)
    scope = f"shared-quota-test-{shared}"
    with Emulator(clock=clock, requests_per_minute=600, request_window_s=10.0) as emu:
        jobs = [
            _limited_engine(emu, redis_url, clock, scope, requests_per_minute=600)
            for _ in range(2)
        ]
        clock.watch(*jobs)
        if not shared:  # the contrast: each job believes it owns the quota
            for job in jobs:
                job.pool.primary.limiter = job.limiter = RateLimiter(
                    requests_per_minute=600,
                    window_s=10.0,
                    clock=clock,
                    sleep=clock.sleep,
                )
        out: list[Any] = [None, None]
        start = threading.Barrier(2)

        def work(k: int) -> None:
            start.wait(timeout=30)  # both jobs begin together
            out[k] = jobs[k].run(_questions(100, start=100 * k))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = emu.stats()
    answers = [r.content if r else None for r in out[0] + out[1]]
    assert answers == [str(i + 12) for i in range(200)]
    n429 = stats["statuses"].get("429", 0)
    if shared:  # 200 rows at 100 per 10 s: one window turn, almost no 429
        assert n429 <= 4, stats
        assert clock.now - 1000 >= 10.0
    else:  # both burst into the same window: a job that reads the other's use in
        # the headers paces itself (crowd mode). Before it, 97-98 429s in most runs;
        # now 2-13 in 15-23 s (Redis: one window turn)
        assert any(job.limiter.crowd is not None for job in jobs)
        assert n429 <= 20, stats


def _two_limiters(url: str, scope: str, clock: FakeClock, **limits: Any) -> list[Any]:
    """Two processes' limiters on one deployment, on one fake clock."""
    from polars_azurechat.transport.redis_limiter import RedisLimiter

    return [
        RedisLimiter(
            url,
            scope=scope,
            shared_clock=clock,
            clock=clock,
            sleep=clock.sleep,
            **limits,
        )
        for _ in range(2)
    ]


@pytest.mark.slow
def test_a_429_pauses_every_job(redis_url: str) -> None:
    clock = FakeClock()
    a, b = _two_limiters(redis_url, "cooldown-test", clock)
    a.ramp.end()  # past slow start: only the shared gate matters
    b.ramp.end()
    ticket = asyncio.run(a.acquire())
    a.on_rate_limited(3.0, ticket, "requests")
    assert b.try_acquire() is None  # paused by a's 429
    clock.now += 3.01
    assert b.try_acquire() is not None


@pytest.mark.slow
def test_a_pause_reaches_a_process_on_the_fast_path_before_the_window_is_known(
    redis_url: str,
) -> None:
    # far from its budget, a process admits a few on counts a moment old without asking
    # Redis (nor seeing another's 429 pause). With the window not known yet, "far" and
    # "a few" follow the shortest window's budget (6000 per minute: 100 per 1 s), not
    # the 60-s window's: 300 unchecked admissions poured into what is a 1-s window
    clock = FakeClock()
    a, b = _two_limiters(redis_url, "fast-path-test", clock, requests_per_minute=6000)
    a.ramp.end()
    b.ramp.end()

    async def go() -> list[float]:
        await a.acquire()  # through the script: the fast path opens
        refused = await b.acquire()
        b.on_rate_limited(3.0, refused, "requests")  # every process pauses 3 s
        start, sent = clock.now, []
        for _ in range(40):
            await a.acquire()
            sent.append(clock.now - start)
        return sent

    sent = asyncio.run(go())
    assert not a.resources["requests"].known
    during = [t for t in sent if t < 3.0]
    assert len(during) <= 5, sent  # 5% of the 1-s budget at most
    assert len(sent) - len(during) >= 35


def test_an_unreachable_limiter_stops_the_job_before_any_request(
    emulator: Emulator, config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import polars_azurechat as pac

    with pytest.raises(
        pac.LimiterError, match=r"limiter redis://127.0.0.1:9/0: cannot reach"
    ):
        pac.Completer(config=config, limiter="redis://:pw@127.0.0.1:9/0")
    with caplog.at_level(logging.WARNING, logger="polars_azurechat"):
        job = pac.Completer(
            config=config, limiter="redis://127.0.0.1:9/0?fallback=local"
        )
    assert "fallback=local" in caplog.text
    assert job.run(["What is 1 + 12?"]) == ["13"]
    job.close()
    assert emulator.stats()["requests"] == 1
    with pytest.raises(ValueError, match="redis:// URL"):
        pac.Completer(config=config, limiter="localhost:6379")


@pytest.mark.slow
def test_a_job_joining_mid_run_shares_what_is_left(redis_url: str) -> None:
    import threading

    clock = NetworkClock()
    scope = "joining-test"
    with Emulator(clock=clock, requests_per_minute=600, request_window_s=10.0) as emu:
        jobs = [
            _limited_engine(emu, redis_url, clock, scope, requests_per_minute=600)
            for _ in range(2)
        ]
        clock.watch(*jobs)
        out: list[Any] = [None, None]
        joined = threading.Event()

        times: dict[str, float] = {}

        def first() -> None:
            out[0] = jobs[0].run(_questions(250))
            times["first_done"] = clock.now

        def second() -> None:
            while clock.now < 1005.0:  # joins once the first is well under way
                threading.Event().wait(0.001)
            joined.set()
            times["second_start"] = clock.now
            out[1] = jobs[1].run(_questions(100, start=250))

        threads = [threading.Thread(target=f) for f in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = emu.stats()
    assert joined.is_set()
    assert times["second_start"] < times["first_done"]  # it joined mid-run
    answers = [r.content if r else None for r in out[0] + out[1]]
    assert answers == [str(i + 12) for i in range(350)]
    # 350 rows at 100 per 10 s: 4 windows; the joiner took its share, no storm
    assert stats["statuses"].get("429", 0) <= 4, stats
    assert clock.now - 1000 >= 30.0


@pytest.mark.slow
def test_a_job_after_another_starts_from_the_window_it_learned(redis_url: str) -> None:
    # a Spark or Ray task, or the next job of a pipeline: a new limiter on a deployment
    # in use. It assumed a 60-s window and learned it again from a ledger full of the
    # first job's admissions: a 10-s quota's next job took 6x its schedule, its window
    # flipping between candidates (and 429s on a 1-s quota)
    clock = NetworkClock()
    scope = "next-job-test"
    with Emulator(clock=clock, requests_per_minute=600, request_window_s=10.0) as emu:
        first = _limited_engine(
            emu, redis_url, clock, scope, requests_per_minute=600, window_s=None
        )
        clock.watch(first)
        assert first.limiter is not None
        assert not first.limiter.resources["requests"].known
        out = first.run(_questions(250))
        assert first.limiter.resources["requests"].window == 10.0
        before, began = emu.stats()["statuses"].get("429", 0), clock.now
        second = _limited_engine(
            emu, redis_url, clock, scope, requests_per_minute=600, window_s=None
        )
        clock.watch(second)
        assert second.limiter is not None
        res = second.limiter.resources["requests"]
        assert (res.known, res.window) == (True, 10.0)  # before its first request
        out += second.run(_questions(300, start=250))
        took = clock.now - began
        stats = emu.stats()
    answers = [r.content if r else None for r in out]
    assert answers == [str(i + 12) for i in range(550)]
    assert stats["statuses"].get("429", 0) - before <= 2, stats
    # 300 rows at 100 per 10 s, after a job that filled its windows: 3 window turns
    assert took <= 40.0, took


def test_a_process_joining_a_busy_deployment_keeps_the_deployments_budget(
    redis_url: str,
) -> None:
    # another process took 97 of the window's 100: the joiner's ramp takes the last 3
    # and the server says none remain. Its own ramp (3 taken + 0 left) is not the
    # deployment's budget (read so, it held a job to 3 requests per window)
    clock = FakeClock()
    other, joiner = _two_limiters(
        redis_url, "joining-ramp-test", clock, requests_per_minute=600, window_s=10.0
    )
    other.ramp.end()

    async def go() -> None:
        for _ in range(97):
            await other.acquire()
        tickets = [await joiner.acquire() for _ in range(3)]
        assert joiner.try_acquire() is None  # the shared window is full
        for ticket in tickets:
            joiner.on_success(ticket, remaining_requests=0, remaining_tokens=None)

    asyncio.run(go())
    # learned from the shared ledger's counts: what every process had admitted
    # (98 to 100 when each answer went, as the burst may reach the server reordered)
    assert joiner.resources["requests"].budget() == pytest.approx(100, abs=2)
