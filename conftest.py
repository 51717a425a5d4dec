"""Fixtures for every test and doctest: a clean environment and, for doctests, an emulator."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
import pytest

from polars_azurechat.emulator import Emulator

_ENV_PREFIXES = ("AZURE_OPENAI_", "OPENAI_", "POLARS_AZURECHAT_")


@pytest.fixture(autouse=True)
def clean_environ(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """Drop Azure/OpenAI settings and leave the working dir for an empty one (no .env).

    Doctests also get an emulator, pointed at by the environment, and stable table output.
    """
    import os

    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    if isinstance(request.node, pytest.DoctestItem):
        with Emulator() as emu, pl.Config(tbl_rows=10, fmt_str_lengths=40):
            for key, value in emu.env().items():
                monkeypatch.setenv(key, value)
            yield
        return
    yield
