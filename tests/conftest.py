from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture
def quick_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory whose disk syncs cost nothing (tmpfs, else ``tmp_path``).

    For tests that time how soon a child process ends: at exit SQLite folds its WAL
    into the file with two disk syncs, and a loaded CI disk once made them 11 s. What
    such a test times is the engine, not the disk (a slow disk is its own test:
    tests/test_slow_disk.py).
    """
    shm = Path("/dev/shm")  # noqa: S108 - mkdtemp below makes a private directory
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="pac-test-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
