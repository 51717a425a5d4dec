from __future__ import annotations

from collections.abc import Iterator

import pytest

from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """A fresh emulator per test (clean counters), with the environment pointing at it."""
    with Emulator() as emu:
        for key, value in emu.env().items():
            monkeypatch.setenv(key, value)
        yield emu


@pytest.fixture
def config(emulator: Emulator) -> ChatConfig:
    return ChatConfig(
        azure_endpoint=emulator.url, api_key=emulator.api_key, deployment="gpt-4o-mini"
    )


class FakeClock:
    """A monotonic clock that only moves when the fake sleep is awaited."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
