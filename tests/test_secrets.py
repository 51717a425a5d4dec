"""No key in any log line (DEBUG included), error, repr, cache file or output."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import polars_azurechat as pac
from polars_azurechat.cli import app
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator

SECRET = "sk-THIS-IS-THE-SECRET-0123456789"


def test_key_appears_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, aiohttp and asyncio included
    src, out, cache = (
        tmp_path / "in.parquet",
        tmp_path / "out.parquet",
        tmp_path / "c.sqlite",
    )
    pl.DataFrame(
        {"q": ["What is 1 + 1?", "[emu:500*1] What is 2 + 2?", "[emu:filter] x", None]}
    ).write_parquet(src)
    texts: list[str] = []
    with Emulator(api_key=SECRET) as emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        result = CliRunner().invoke(
            app,
            ["run", str(src), str(out), "--column", "q", "--cache", str(cache), "-v"],
        )
        texts.append(result.output)
        cfg = ChatConfig.from_env()
        job = pac.Completer(config=cfg, cache=cache)
        texts += [repr(cfg), str(cfg), repr(job), repr(job.engine.cache)]
        pl.read_parquet(src).select(job.expr("q"))
        texts.append(str(job.summary()))
        bad = ChatConfig(azure_endpoint=emu.url, api_key=SECRET + "-wrong")
        with pytest.raises(pac.AuthenticationError) as info:
            pl.read_parquet(src).select(pac.complete("q", config=bad, deployment="d"))
        texts += [str(info.value), repr(info.value), str(info.value.body)]
    assert result.exit_code == 1  # the filtered row failed
    texts.append(caplog.text)
    assert "attempt failed" in caplog.text  # DEBUG lines were really captured
    for text in texts:
        assert SECRET not in text
    for f in tmp_path.iterdir():
        assert SECRET.encode() not in f.read_bytes(), f.name
