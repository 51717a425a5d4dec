"""Ray Data: a local Ray with two workers answers a dataset through the engine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator

# Ray warns about its own deprecated settings when a data context is made
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ray = pytest.importorskip(
    "ray", reason="Ray is not installed: pip install 'polars-azurechat[ray]'"
)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_dataset_is_answered_row_by_row(local_ray: Any) -> None:
    import polars_azurechat.ray as pac_ray

    rows = [{"id": i, "q": f"What is {i} + 10?"} for i in range(400)]
    with Emulator(latency_ms=5) as emu:
        config = ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key, deployment="d")
        ds = local_ray.data.from_items(rows)
        out = pac_ray.complete(
            ds, column="q", config=config, workers=2, batch_size=50, max_tokens=5
        ).take_all()
        stats = emu.stats()
    assert len(out) == 400
    # every row carries its own answer, whatever order the blocks come back in
    assert all(r["answer"] == str(r["id"] + 10) for r in out)
    assert sorted(r["id"] for r in out) == list(range(400))
    assert stats["requests"] == 400
    assert stats["statuses"] == {"200": 400}


@pytest.mark.slow
def test_failed_rows_carry_their_error(local_ray: Any) -> None:
    import polars_azurechat.ray as pac_ray

    rows = [
        {"id": i, "q": "[emu:filter] no" if i % 10 == 0 else f"What is {i} + 1?"}
        for i in range(40)
    ]
    with Emulator() as emu:
        config = ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key, deployment="d")
        out = pac_ray.complete(
            local_ray.data.from_items(rows),
            column="q",
            config=config,
            output="struct",
            max_tokens=5,
        ).take_all()
    by_id = {r["id"]: r["answer"] for r in out}
    assert all(by_id[i]["content"] == str(i + 1) for i in range(40) if i % 10)
    failed = [by_id[i] for i in range(0, 40, 10)]
    assert all(
        a["content"] is None and "content filter" in a["error"] for a in failed
    ), failed


def test_a_wrong_keyword_fails_before_anything_runs() -> None:
    import polars_azurechat.ray as pac_ray

    with pytest.raises(TypeError, match="max_tokens"):
        pac_ray.complete(object(), max_token=5)  # type: ignore[arg-type, call-arg]


@pytest.mark.slow
def test_workers_share_one_quota_and_cache_through_redis(local_ray: Any) -> None:
    import polars_azurechat.ray as pac_ray

    from ._redis import redis_server

    rows = [{"id": i, "q": f"What is {i} + 20?"} for i in range(300)]
    with (
        redis_server() as redis_url,
        Emulator(latency_ms=5, requests_per_minute=6000, request_window_s=1.0) as emu,
    ):
        config = ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key, deployment="d")

        def run() -> list[dict[str, Any]]:
            return pac_ray.complete(
                local_ray.data.from_items(rows),
                column="q",
                config=config,
                workers=2,
                batch_size=50,
                max_tokens=5,
                requests_per_minute=6000,
                limiter=redis_url,
                cache=redis_url,
            ).take_all()

        out = run()
        first = emu.stats()
        again = run()  # every answer now comes from the shared cache
        second = emu.stats()
    assert all(r["answer"] == str(r["id"] + 20) for r in out + again)
    # 100 per 1-s window shared by both workers: no storm
    assert first["statuses"].get("429", 0) <= 0.02 * first["requests"], first
    assert second["requests"] == first["requests"]  # nothing sent the second time
