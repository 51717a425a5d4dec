from __future__ import annotations

import stat
from pathlib import Path

import polars as pl
import pytest

import polars_azurechat as pac
from polars_azurechat.emulator import Emulator


def test_rerun_sends_only_what_is_missing(emulator: Emulator, tmp_path: Path) -> None:
    cache = tmp_path / "answers.sqlite"
    first = pl.DataFrame({"q": [f"What is {i} + 1?" for i in range(20)]})
    out1 = first.select(pl.col("q").chat.complete(cache=cache, max_tokens=5))
    assert emulator.stats()["requests"] == 20
    more = pl.DataFrame({"q": [f"What is {i} + 1?" for i in range(25)]})
    out2 = more.select(
        pl.col("q").chat.complete(cache=cache, max_tokens=5, output="struct")
    )
    assert emulator.stats()["requests"] == 25  # only the 5 new rows were sent
    rows = out2["q"].to_list()
    assert [r["content"] for r in rows] == [str(i + 1) for i in range(25)]
    assert [r["attempts"] for r in rows] == [0] * 20 + [1] * 5  # 0 attempts: from cache
    assert out1["q"].to_list() == [r["content"] for r in rows[:20]]


def test_parameters_are_part_of_the_key(emulator: Emulator, tmp_path: Path) -> None:
    cache = tmp_path / "answers.sqlite"
    df = pl.DataFrame({"q": ["Tell me a story"]})
    assert df.select(pac.complete("q", cache=cache, max_tokens=2))["q"][0] == "Echo: Te"
    assert df.select(pac.complete("q", cache=cache, max_tokens=50))["q"][0] == (
        "Echo: Tell me a story"
    )
    assert emulator.stats()["requests"] == 2


def test_failures_are_not_cached(emulator: Emulator, tmp_path: Path) -> None:
    cache = tmp_path / "answers.sqlite"
    df = pl.DataFrame({"q": ["[emu:500*3] What is 9 + 9?"]})
    with pytest.warns(pac.FailedRowsWarning):
        out = df.select(pac.complete("q", cache=cache, max_attempts=2))
    assert out["q"][0] is None
    assert df.select(pac.complete("q", cache=cache, max_attempts=2))["q"][0] == "18"
    assert emulator.stats()["statuses"] == {"200": 1, "500": 3}


def test_cache_file_is_private_and_holds_no_key(
    emulator: Emulator, tmp_path: Path
) -> None:
    cache = tmp_path / "answers.sqlite"
    pl.DataFrame({"q": ["What is 1 + 1?"]}).select(pac.complete("q", cache=cache))
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    for f in tmp_path.iterdir():
        assert emulator.api_key.encode() not in f.read_bytes()
