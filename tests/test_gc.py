"""The collector's young threshold is raised while a job runs, and put back after."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

import polars_azurechat as pac
from polars_azurechat._types import ChatRequest
from polars_azurechat.emulator import Emulator
from polars_azurechat.engine import gc as _gc


@pytest.fixture(autouse=True)
def _default_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def test_a_job_collects_less_often_and_puts_the_threshold_back(
    emulator: Emulator,
) -> None:
    seen = []

    def batches() -> Iterator[tuple[int, list[ChatRequest | None]]]:
        for b in range(3):
            seen.append(gc.get_threshold())
            yield b, [ChatRequest([{"role": "user", "content": f"What is {b} + 1?"}])]

    with pac.Completer() as job:
        out = [r[0].content for _, r in job.engine.pipeline(batches()) if r[0]]
    assert out == ["1", "2", "3"]
    assert seen == [(_gc.YOUNG_THRESHOLD, 10, 10)] * 3
    assert gc.get_threshold() == (700, 10, 10)


def test_overlapping_jobs_put_it_back_when_the_last_ends() -> None:
    first, second = _gc.fewer_collections(), _gc.fewer_collections()
    first.__enter__()
    entered, done = threading.Event(), threading.Event()

    def other() -> None:
        with second:
            entered.set()
            done.wait()

    t = threading.Thread(target=other)
    t.start()
    entered.wait()
    first.__exit__(None, None, None)
    assert gc.get_threshold()[0] == _gc.YOUNG_THRESHOLD  # the other job still runs
    done.set()
    t.join()
    assert gc.get_threshold() == (700, 10, 10)


def test_a_threshold_set_meanwhile_stands() -> None:
    with _gc.fewer_collections():
        gc.set_threshold(5_000, 20, 20)  # the user's own tuning
    assert gc.get_threshold() == (5_000, 20, 20)


@pytest.mark.parametrize("case", ["disabled", "higher"])
def test_it_leaves_a_collector_that_already_collects_less_alone(case: str) -> None:
    if case == "disabled":
        gc.disable()
    else:
        gc.set_threshold(50_000, 10, 10)
    before = gc.get_threshold()
    try:
        with _gc.fewer_collections():
            assert gc.get_threshold() == before
        assert gc.get_threshold() == before
    finally:
        gc.enable()
