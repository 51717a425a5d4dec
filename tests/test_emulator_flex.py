"""The flex tier against the emulator over HTTP: a refusal for capacity is not a quota.

``[emu:flex_busy*N]`` makes the emulator refuse a flex request's first N attempts with
the flex tier's 429 (``resource_unavailable``); the emulator waits 1 ms as it says
(``retry_after_ms=1``), so no test waits on a clock.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import polars_azurechat as pac
from polars_azurechat.emulator import Emulator


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(retry_after_ms=1) as emulator:
        yield emulator


def _job(emu: Emulator, **kw: object) -> pac.Completer:
    config = pac.ChatConfig(
        azure_endpoint=emu.url, api_key=emu.api_key, deployment="gpt-4o-mini"
    )
    return pac.Completer(
        config=config,
        service_tier="flex",
        max_tokens=10,
        output="struct",
        progress=False,
        **kw,  # type: ignore[arg-type]
    )


PROMPTS = [f"[emu:flex_busy*1] What is {i} + 1?" for i in range(6)]


def test_a_busy_flex_tier_is_tried_again_on_flex_and_pauses_nothing(
    emu: Emulator,
) -> None:
    with _job(emu) as job:
        rows = job.run(PROMPTS)
        summary = job.summary()
    assert [r["content"] for r in rows] == [str(i + 1) for i in range(6)]
    assert {r["service_tier"] for r in rows} == {"flex"}
    stats = emu.stats()
    assert stats["statuses"] == {"429": 6, "200": 6}  # one refusal each, then flex
    assert summary.capacity_refused == 6
    assert summary.flex_fallbacks == 0
    assert summary.rate_limited == 0  # not counted as the quota's 429s
    assert summary.tiers == {"flex": 6}
    assert "flex busy 6 times, 0 sent on default instead" in str(summary)


def test_flex_fallback_sends_a_refused_request_on_the_default_tier(
    emu: Emulator,
) -> None:
    with _job(emu, flex_fallback=True) as job:
        rows = job.run(PROMPTS)
        summary = job.summary()
    assert [r["content"] for r in rows] == [str(i + 1) for i in range(6)]
    assert {r["service_tier"] for r in rows} == {"default"}
    assert emu.stats()["statuses"] == {"429": 6, "200": 6}
    assert summary.flex_fallbacks == 6
    assert summary.tiers == {"default": 6}
    with _job(emu) as job:  # the same rows again: flex has room for them now
        again = job.run(PROMPTS)
        on_flex = job.summary()
    assert {r["service_tier"] for r in again} == {"flex"}
    assert on_flex.prompt_tokens == summary.prompt_tokens
    # each answer priced at the tier that gave it: default twice flex
    assert summary.estimated_cost_usd == pytest.approx(
        2 * on_flex.estimated_cost_usd  # type: ignore[operator]
    )


def test_a_default_tier_request_is_never_refused_for_flex_capacity(
    emu: Emulator,
) -> None:
    config = pac.ChatConfig(
        azure_endpoint=emu.url, api_key=emu.api_key, deployment="gpt-4o-mini"
    )
    with pac.Completer(config=config, max_tokens=10, progress=False) as job:
        assert job.run(PROMPTS[:2]) == ["1", "2"]
    assert emu.stats()["statuses"] == {"200": 2}
