"""A busy cache file (another connection holds its write lock) waits; it is not dropped.

Each test holds the lock with a real second SQLite connection (``BEGIN EXCLUSIVE``) and
lets it go itself: no test waits on a clock for the lock to free.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import polars_azurechat as pac
from polars_azurechat._types import ChatResult
from polars_azurechat.emulator import Emulator
from polars_azurechat.store.sqlite import SqliteCache


@contextlib.contextmanager
def write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the file's write lock from another connection until the block ends."""
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN EXCLUSIVE")
        yield other
        other.execute("COMMIT")
    finally:
        other.close()


def _stored(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM answers").fetchone()[0])


def _answer(text: str = "2") -> ChatResult:
    return ChatResult(content=text, finish_reason="stop", attempts=1)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "polars_azurechat.store.sqlite" and r.levelno >= logging.WARNING
    ]


def test_a_locked_file_keeps_the_answers_waiting_and_writes_them_once_it_frees(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "answers.sqlite"
    cache = SqliteCache(path)
    with caplog.at_level(logging.INFO, logger="polars_azurechat.store.sqlite"):
        with write_lock(path):
            for i in range(10):
                cache.put(f"k{i}", _answer(str(i)))
            cache.flush()  # returns once the writer finds the file busy
            assert cache.broken is None
            assert cache.busy == f"cache {path}: database is locked"
            assert cache.waiting == 10
            # what waits is still this process's: a hit, not a request sent again
            assert cache.get_many(["k3", "missing"])["k3"].content == "3"
            assert _stored(path) == 0
        cache.close()  # the lock is free: close writes what waited
    assert cache.broken is None and cache.lost == 0
    assert _stored(path) == 10
    assert _warnings(caplog) == []
    assert any("database is locked; 10 answers wait" in m for m in caplog.messages)


def test_close_waits_for_a_lock_that_frees_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "answers.sqlite"
    cache = SqliteCache(path)
    waiting = threading.Event()

    class Told(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting up to 10 s for it to take 3 answers" in record.getMessage():
                waiting.set()

    told = Told()
    log = logging.getLogger("polars_azurechat.store.sqlite")
    log.addHandler(told)
    try:
        with write_lock(path):
            for i in range(3):
                cache.put(f"k{i}", _answer())
            cache.flush()
            assert cache.busy is not None
            closing = threading.Thread(target=cache.close)
            closing.start()
            assert waiting.wait(30), "close never said it waits"
        # the lock is free now, while close waits: it writes what waited
        closing.join(30)
    finally:
        log.removeHandler(told)
    assert not closing.is_alive()
    assert cache.lost == 0 and cache.broken is None
    assert _stored(path) == 3


def test_close_gives_up_on_a_file_that_stays_locked_and_says_how_many(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "answers.sqlite"
    cache = SqliteCache(path, close_wait_s=0.0)
    with write_lock(path), caplog.at_level(logging.WARNING):
        cache.put("k1", _answer())
        cache.put("k2", _answer())
        cache.flush()
        cache.close()
    assert cache.lost == 2 and cache.broken is None
    [gave_up] = _warnings(caplog)  # no time to wait: no word of waiting
    assert gave_up.startswith(f"cache {path}: database is locked for ")
    assert gave_up.endswith(
        "s; 2 answers were not written (a rerun sends those requests again)"
    )
    assert _stored(path) == 0


def test_a_job_runs_through_a_held_lock_and_keeps_every_answer(
    emulator: Emulator, tmp_path: Path
) -> None:
    # the reported case: another process held the write lock for 8 s; every flush on
    # the event loop waited 5 s for it, then the cache was dropped (9 of 100 kept)
    path = tmp_path / "answers.sqlite"
    questions = [f"What is {i} + 1?" for i in range(100)]
    job = pac.Completer(cache=path, max_tokens=5, max_concurrency=16, progress=False)
    with write_lock(path):
        assert job.run(questions) == [str(i + 1) for i in range(100)]
        cache = job.engine.cache
        assert cache is not None
        assert cache.broken is None
        summary = job.summary()
        assert summary.cache_broken is None
        assert summary.cache_waiting == 100
        assert summary.cache_busy is not None
        assert summary.cache_busy.startswith(f"cache {path}: database is locked, for ")
        assert (
            f"cache:     100 answers were waiting for the busy cache (cache {path}: "
            in str(summary)
        )
        # a second run of the same job asks again: served from what waits
        assert job.run(questions[:10]) == [str(i + 1) for i in range(10)]
    job.close()  # the lock is free: every answer is written
    assert _stored(path) == 100
    assert emulator.stats()["requests"] == 100
    with pac.Completer(cache=path, max_tokens=5) as rerun:
        assert rerun.run(questions) == [str(i + 1) for i in range(100)]
    assert emulator.stats()["requests"] == 100  # the rerun paid for nothing


def test_a_job_whose_cache_stays_locked_says_what_it_lost(
    emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "answers.sqlite"
    job = pac.Completer(cache=path, max_tokens=5, progress=False)
    cache = job.engine.cache
    assert isinstance(cache, SqliteCache)
    cache.close_wait_s = 0.0
    with write_lock(path), caplog.at_level(logging.WARNING):
        assert job.run(["What is 1 + 1?", "What is 2 + 1?"]) == ["2", "3"]
        job.close()
    assert "2 answers were not written" in _warnings(caplog)[-1]
    summary = job.summary()
    assert summary.cache_lost == 2
    assert "cache:     2 answers were not written" in str(summary)
    assert _stored(path) == 0
