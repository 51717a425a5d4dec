from __future__ import annotations

from collections.abc import Iterator

import pytest

from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator

from .fakes import FakeClock


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


@pytest.fixture
def clock() -> FakeClock:
    """A :class:`~tests.fakes.FakeClock` at its usual start."""
    return FakeClock()
