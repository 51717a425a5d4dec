"""A pool of deployments: tiers, spillover, a deployment down, all down, the TOML file.

The engine tests run against the emulator over HTTP with the emulator's quota windows
on the same fake clock as the engine (see ``NetworkClock``), so nothing waits; they
assert on what the emulator counted per deployment.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

import polars_azurechat as pac
from polars_azurechat._types import ChatRequest
from polars_azurechat.cli import app
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator
from polars_azurechat.engine.core import ChatEngine
from polars_azurechat.errors import (
    ConfigurationError,
    PoolUnavailableError,
    ServerError,
)
from polars_azurechat.transport.auth import KeyAuth
from polars_azurechat.transport.http import Transport
from polars_azurechat.transport.pool import (
    BREAKER_MAX_OPEN_S,
    BREAKER_OPEN_S,
    BREAKER_THRESHOLD,
    Breaker,
    Pool,
    Route,
)
from polars_azurechat.transport.ratelimit import RateLimiter

from .fakes import FakeClock, NetworkClock


def _engine(
    emu: Emulator,
    clock: NetworkClock,
    deployments: list[tuple[str, int, dict[str, Any]]],
    **kw: Any,
) -> ChatEngine:
    routes = []
    for name, priority, limits in deployments:
        transport = Transport(
            endpoint=emu.url,
            deployment=name,
            api_version="2024-10-21",
            auth=KeyAuth({"api-key": emu.api_key}),
            timeout_s=5,
        )
        limiter = RateLimiter(
            clock=clock, sleep=clock.sleep, **{"window_s": 10.0, **limits}
        )
        routes.append(Route(name, transport, limiter, priority=priority))
    pool = Pool(routes, clock=clock, sleep=clock.sleep)
    engine = ChatEngine(
        routes[0].transport,
        pool=pool,
        sleep=clock.sleep,
        clock=clock,
        params={"max_tokens": 10},
        **kw,
    )
    clock.watch(engine)
    return engine


def _rows(n: int, tag: str = "") -> list[ChatRequest | None]:
    return [
        ChatRequest([{"role": "user", "content": f"What is {i} + 1?{tag}"}])
        for i in range(n)
    ]


def _answers(results: list[Any]) -> list[str | None]:
    return [r.content if r is not None else None for r in results]


def test_the_first_tier_takes_what_fits_in_its_window() -> None:
    clock = NetworkClock()
    quota = {"requests_per_minute": 600, "request_window_s": 10.0}
    per = {"ptu": quota, "paygo": quota}
    with Emulator(clock=clock, per_deployment=per) as emu:
        engine = _engine(
            emu,
            clock,
            [
                ("ptu", 0, {"requests_per_minute": 600}),
                ("paygo", 1, {"requests_per_minute": 600}),
            ],
        )
        results = engine.run(_rows(90))
        stats = emu.stats()
    assert _answers(results) == [str(i + 1) for i in range(90)]
    # 90 fit in ptu's window of 100. All 90 leave at one (fake) instant and reach the
    # server in any order: their answers do not lower the budget (they are ambiguous)
    assert "paygo" not in stats["deployments"], stats
    assert stats["deployments"]["ptu"]["requests"] == 90
    assert engine.runs.stats.by_deployment["ptu"]["requests"] == 90


def test_a_full_first_tier_spills_to_the_next() -> None:
    clock = NetworkClock()
    quota = {"requests_per_minute": 600, "request_window_s": 10.0}
    per = {"ptu": quota, "paygo": quota}
    with Emulator(clock=clock, per_deployment=per) as emu:
        engine = _engine(
            emu,
            clock,
            [
                ("ptu", 0, {"requests_per_minute": 600}),
                ("paygo", 1, {"requests_per_minute": 600}),
            ],
        )
        results = engine.run(_rows(300))
        stats = emu.stats()
    assert _answers(results) == [str(i + 1) for i in range(300)]
    ptu, paygo = stats["deployments"]["ptu"], stats["deployments"]["paygo"]
    # both quotas together: 200 per 10 s; the first tier is used before the second:
    # ptu takes its window's 100 twice, paygo the 100 left over (and 5% of slack)
    assert ptu["statuses"].get("200", 0) >= 190, stats
    assert paygo["statuses"].get("200", 0) >= 95, stats
    assert stats["statuses"].get("429", 0) <= 0.02 * stats["requests"], stats
    # 300 rows at 200 per 10 s: one turn of the windows (10 s and the limiter's margin
    # of 0.2 s) at best; learning the windows may cost a little
    assert clock.now - 1000 <= 1.05 * 10.2, clock.now - 1000


def test_within_a_tier_deployments_fill_in_proportion_to_their_quotas() -> None:
    clock = NetworkClock()
    per = {
        "big": {"requests_per_minute": 1200, "request_window_s": 10.0},
        "small": {"requests_per_minute": 600, "request_window_s": 10.0},
    }
    with Emulator(clock=clock, per_deployment=per) as emu:
        engine = _engine(
            emu,
            clock,
            [
                ("big", 0, {"requests_per_minute": 1200}),
                ("small", 0, {"requests_per_minute": 600}),
            ],
        )
        engine.run(_rows(600))
        stats = emu.stats()
    big = stats["deployments"]["big"]["statuses"].get("200", 0)
    small = stats["deployments"]["small"]["statuses"].get("200", 0)
    assert big + small == 600
    assert 1.9 <= big / small <= 2.1, (big, small)  # quotas of 2 to 1, within 5%
    assert stats["statuses"].get("429", 0) <= 0.02 * stats["requests"], stats


def test_a_deployment_going_down_mid_run_loses_no_row(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = NetworkClock()
    with Emulator(
        clock=clock,
        requests_per_minute=600,
        per_deployment={"a": {"down_after_s": 5.0}},
    ) as emu:
        engine = _engine(
            emu,
            clock,
            [
                ("a", 0, {"requests_per_minute": 600}),
                ("b", 0, {"requests_per_minute": 600}),
            ],
        )
        with caplog.at_level(logging.WARNING, logger="polars_azurechat"):
            results = engine.run(_rows(400))
        stats = emu.stats()
    assert _answers(results) == [str(i + 1) for i in range(400)]
    a = stats["deployments"]["a"]["statuses"]
    assert a.get("503", 0) >= BREAKER_THRESHOLD  # it did go down
    # the requests on the wire when it went down fail, then the circuit opens and
    # a only gets a probe now and then, not its half of the 200 rows left
    assert a.get("503", 0) <= 40, stats
    assert "circuit open" in caplog.text
    by = engine.runs.stats.by_deployment
    assert by["a"]["failed_attempts"] == a.get("503", 0) + a.get("429", 0)


def test_all_deployments_down_fail_every_row_within_its_attempts() -> None:
    clock = NetworkClock()
    with Emulator(clock=clock, down_after_s=0.0) as emu:
        engine = _engine(emu, clock, [("a", 0, {}), ("b", 1, {})], max_attempts=4)
        results = engine.run(_rows(30))
        stats = emu.stats()
    assert all(r is not None and r.exception is not None for r in results)
    errors = {type(r.exception) for r in results if r is not None}
    assert errors <= {ServerError, PoolUnavailableError}
    assert PoolUnavailableError in errors
    down = next(
        r for r in results if r and isinstance(r.exception, PoolUnavailableError)
    )
    assert "all 2 deployments are failing" in str(down.exception)
    assert "a: 503" in str(down.exception) and "b: 503" in str(down.exception)
    elapsed = clock.now - 1000
    assert elapsed < 120  # nothing hung
    # each row tried at most max_attempts times; the circuits keep requests far fewer
    # (30 * 4 would be true without them): a deployment takes the failures that open
    # its circuit, what was on the wire with the last of them, then only one probe at
    # the end of each open period
    most = (
        BREAKER_THRESHOLD + engine.runs.stats.peak_in_flight - 1 + _most_probes(elapsed)
    )
    for name in ("a", "b"):
        assert stats["deployments"][name]["requests"] <= most, (stats, most)
    assert stats["requests"] <= 30 * 4


def _most_probes(elapsed: float) -> int:
    """Probes an open circuit sends in ``elapsed`` s when every probe fails.

    One at the end of each open period: 2 s, then twice as long each time, up to 30 s.
    """
    probes, t, open_s = 0, 0.0, BREAKER_OPEN_S
    while t + open_s <= elapsed:
        probes += 1
        t += open_s
        open_s = min(2 * open_s, BREAKER_MAX_OPEN_S)
    return probes


def test_the_breaker_opens_probes_and_closes(clock: FakeClock) -> None:
    breaker = Breaker(clock)
    err = ServerError("503", status_code=503)
    for _ in range(BREAKER_THRESHOLD - 1):
        assert not breaker.failure(err)
    assert breaker.failure(err)  # opened
    assert not breaker.allows() and breaker.state == "open"
    clock.now += breaker.opens_in()
    assert breaker.allows() and breaker.state == "half-open"
    breaker.admitted()
    assert not breaker.allows()  # one probe at a time
    assert breaker.failure(err)  # the probe failed: open again, twice as long
    assert breaker.opens_in() == pytest.approx(4.0)
    clock.now += 4.0
    breaker.admitted()
    breaker.success()
    assert breaker.state == "closed" and breaker.allows()
    # a 400 is the request's fault, not the deployment's
    assert not breaker.failure(pac.BadRequestError("400", status_code=400))
    assert breaker.failures == 0


def test_a_pool_answer_is_the_cache_entry_of_its_first_deployment(
    emulator: Emulator, config: ChatConfig, tmp_path: Path
) -> None:
    cache = tmp_path / "answers.sqlite"
    prompts = [f"What is {i} + 2?" for i in range(5)]
    with pac.Completer(config=config, cache=cache, deployment="ptu") as job:
        assert job.run(prompts) == [str(i + 2) for i in range(5)]
    emulator.reset()
    pool = [pac.Deployment(name="ptu"), pac.Deployment(name="paygo", priority=1)]
    with pac.Completer(config=config, cache=cache, deployments=pool) as job:
        assert job.run(prompts) == [str(i + 2) for i in range(5)]
        assert job.summary().cached == 5
    assert emulator.stats()["requests"] == 0


def test_the_summary_shows_each_deployment(
    emulator: Emulator, config: ChatConfig
) -> None:
    emulator.take_down("ptu")
    pool = [pac.Deployment(name="ptu"), pac.Deployment(name="paygo", priority=1)]
    with pac.Completer(config=config, deployments=pool, max_attempts=3) as job:
        df = pl.DataFrame({"q": [f"What is {i} + 3?" for i in range(20)]})
        out = df.select(job.expr("q"))
        summary = job.summary()
    assert out["q"].to_list() == [str(i + 3) for i in range(20)]
    assert set(summary.deployments) == {"ptu", "paygo"}
    assert summary.deployments["paygo"]["requests"] >= 20
    assert summary.deployments["ptu"]["failed_attempts"] >= 1
    assert "paygo" in str(summary) and "ptu" in str(summary)


def test_deployments_are_checked_before_any_request(config: ChatConfig) -> None:
    with pytest.raises(ValueError, match="deployment and requests_per_minute"):
        pac.ChatOptions(
            deployments=[pac.Deployment(name="a")],
            deployment="b",
            requests_per_minute=10,
        )
    with pytest.raises(TypeError, match="Deployment items"):
        pac.ChatOptions(deployments=["a"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="listed twice"):
        pac.ChatOptions(deployments=[pac.Deployment(name="a")] * 2)
    with pytest.raises(TypeError, match="priority must be an int"):
        pac.Deployment(name="a", priority="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one of api_key, credential"):
        pac.Deployment(name="a", api_key="k", azure_ad_token_provider=lambda: "t")


def test_a_deployment_keeps_its_own_secret_out_of_reprs() -> None:
    d = pac.Deployment(name="a", api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(d)
    opts = pac.ChatOptions(deployments=[d])
    assert "sk-very-secret" not in repr(opts)


def test_the_toml_file(tmp_path: Path) -> None:
    f = tmp_path / "pool.toml"
    f.write_text(
        "[[deployments]]\n"
        'name = "ptu"\n'
        'endpoint = "https://east.example.com"\n'
        'api_key_env = "EAST_KEY"\n'
        "requests_per_minute = 1200\n"
        "[[deployments]]\n"
        'name = "paygo"\n'
        "priority = 1\n"
    )
    ptu, paygo = pac.load_deployments(f, environ={"EAST_KEY": "k-east"})
    assert (ptu.name, ptu.endpoint, ptu.api_key, ptu.requests_per_minute) == (
        "ptu",
        "https://east.example.com",
        "k-east",
        1200,
    )
    assert (paygo.name, paygo.priority, paygo.has_credential) == ("paygo", 1, False)

    with pytest.raises(ConfigurationError, match=r"EAST_KEY .* is not set"):
        pac.load_deployments(f, environ={})
    f.write_text('[[deployments]]\nname = "a"\nrpm = 5\n')
    with pytest.raises(ConfigurationError, match=r"#1: unknown key\(s\) rpm"):
        pac.load_deployments(f)
    f.write_text('[[deployments]]\nname = "a"\npriority = -0.5\n')
    with pytest.raises(ConfigurationError, match="priority must be an int"):
        pac.load_deployments(f)
    f.write_text("name = 'a'\n")
    with pytest.raises(ConfigurationError, match=r"one or more \[\[deployments\]\]"):
        pac.load_deployments(f)
    f.write_text("[[deployments]\n")
    with pytest.raises(ConfigurationError, match="cannot be read as TOML"):
        pac.load_deployments(f)
    with pytest.raises(ConfigurationError, match="does not exist"):
        pac.load_deployments(tmp_path / "missing.toml")


def test_the_cli_runs_a_pool_from_a_toml_file(tmp_path: Path) -> None:
    src, dst, pool = (
        tmp_path / "in.parquet",
        tmp_path / "out.parquet",
        tmp_path / "p.toml",
    )
    pl.DataFrame({"q": [f"What is {i} + 4?" for i in range(12)]}).write_parquet(src)
    pool.write_text(
        '[[deployments]]\nname = "ptu"\n[[deployments]]\nname = "paygo"\npriority = 1\n'
    )
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(src),
            str(dst),
            "--column",
            "q",
            "--emulator",
            "--deployments",
            str(pool),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(dst)["answer"].to_list() == [str(i + 4) for i in range(12)]
    assert "ptu" in result.output  # the summary names the deployments

    pool.write_text('[[deployments]]\nnme = "x"\n')
    bad = CliRunner().invoke(
        app,
        [
            "run",
            str(src),
            str(tmp_path / "o2.parquet"),
            "--column",
            "q",
            "--deployments",
            str(pool),
        ],
    )
    assert bad.exit_code == 2
    assert "unknown key(s) nme" in " ".join(bad.output.split())


def test_the_progress_bar_shows_each_deployment(
    emulator: Emulator, config: ChatConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = [pac.Deployment(name="ptu"), pac.Deployment(name="paygo")]
    with pac.Completer(config=config, deployments=pool, progress=True) as job:
        job.run([f"What is {i} + 5?" for i in range(40)])
    err = capsys.readouterr().err.replace("\r", "\n").splitlines()
    final = [line for line in err if "40/40" in line][-1]
    # requests/429s/tokens per deployment
    assert "ptu=" in final and "paygo=" in final, final
    by = job.engine.runs.stats.by_deployment
    assert f"ptu={by['ptu']['requests']}/0/" in final


def test_plan_sums_the_quotas_of_a_pool() -> None:
    rows = pl.Series("q", [f"What is {i} + 6?" for i in range(1200)])
    pool = [
        pac.Deployment(name="a", requests_per_minute=1200),
        pac.Deployment(name="b", requests_per_minute=600, priority=1),
        pac.Deployment(name="c", requests_per_minute=600, priority=1),
    ]
    alone = pac.plan(rows, requests_per_minute=1200, latency_s=0.2, max_tokens=5)
    pooled = pac.plan(rows, deployments=pool, latency_s=0.2, max_tokens=5)
    assert pooled.estimated_wall_s < alone.estimated_wall_s
    assert pooled.estimated_wall_s == pytest.approx(20.2, abs=0.5)  # 400 per 10 s


def test_the_first_tier_is_not_passed_over_while_its_slow_start_reads_the_budget() -> (
    None
):
    # After the first answer (with rate-limit headers) the first tier waits for the
    # rest of its ramp's answers before admitting more. That is not "full": the
    # second tier must not take those requests (pool.py priority: 4-6 spilled).
    clock = FakeClock()
    ptu = RateLimiter(requests_per_minute=600, clock=clock, sleep=clock.sleep)
    paygo = RateLimiter(requests_per_minute=600, clock=clock, sleep=clock.sleep)
    pool = Pool(
        [Route("ptu", None, ptu, priority=0), Route("paygo", None, paygo, priority=1)],  # type: ignore[arg-type]
        clock=clock,
        sleep=clock.sleep,
    )
    first, _ = pool._try(10, None)
    assert first is not None and first[0].name == "ptu"
    ramp = []
    for _ in range(6):  # the ramp's next admissions, as its clock allows
        clock.advance(0.01)
        got, _ = pool._try(10, None)
        assert got is not None and got[0].name == "ptu"
        ramp.append(got[1])
    ptu.on_success(first[1], 93, None)  # the first answer: the hold begins
    clock.advance(0.001)
    pool._try(10, None)  # the hold lets one more go to find out whether it is full
    assert not ptu.ramp.starting and ptu.ramping
    got, _ = pool._try(10, None)
    assert got is None  # held: wait for the ramp's answers, do not spill
    for k, ticket in enumerate(ramp):
        ptu.on_success(ticket, 92 - k, None)
    assert not ptu.ramping
