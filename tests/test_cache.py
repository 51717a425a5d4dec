from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import sqlite3
import stat
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import polars_azurechat as pac
from polars_azurechat._types import ChatResult
from polars_azurechat.emulator import Emulator
from polars_azurechat.errors import CacheError
from polars_azurechat.store.sqlite import SqliteCache


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


def test_failures_are_not_cached(
    emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "answers.sqlite"
    df = pl.DataFrame({"q": ["[emu:500*3] What is 9 + 9?"]})
    with caplog.at_level(logging.WARNING):
        out = df.select(pac.complete("q", cache=cache, max_attempts=2))
    assert "1 of 1 rows failed" in caplog.text
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


# -- an unusable cache is refused at once, naming the path and the problem -------------


def _permissions_bind() -> bool:
    """Whether a file without write permission refuses this process's writes.

    Not for root (uid 0 with CAP_DAC_OVERRIDE, as in CI), which writes anyway.
    """
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe"
        probe.touch(mode=0o400)
        try:
            os.close(os.open(probe, os.O_WRONLY))
        except PermissionError:
            return True
        return False


ROOT_WRITES_ANYWAY = pytest.mark.skipif(
    not _permissions_bind(),
    reason=f"runs as root (euid {os.geteuid()}): root writes through file and "
    "directory permissions, so chmod cannot make the path unwritable; the read-only "
    "case is simulated by test_read_only_database_is_refused_as_root",
)


def _answer(content: str = "106") -> ChatResult:
    return ChatResult(content=content, finish_reason="stop", attempts=1)


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[sqlite3.Connection]:
    """Every connection the cache opens (to check none is left open)."""
    opened: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def spy(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db: sqlite3.Connection = connect(*args, **kwargs)
        opened.append(db)
        return db

    monkeypatch.setattr(sqlite3, "connect", spy)
    return opened


def _closed(db: sqlite3.Connection) -> bool:
    try:
        db.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def _refused(path: Path, problem: str) -> str:
    with pytest.raises(CacheError) as info:
        SqliteCache(path)
    message = str(info.value)
    assert message.startswith(f"cache {path}: "), message
    assert problem in message
    assert "\n" not in message
    assert isinstance(info.value, pac.ConfigurationError)
    return message


def _other_database(path: Path, *statements: str) -> bytes:
    with contextlib.closing(sqlite3.connect(path)) as db:
        for sql in statements:
            db.execute(sql)
        db.commit()
    return path.read_bytes()


def test_a_directory_is_refused(tmp_path: Path) -> None:
    message = _refused(tmp_path, "is a directory, not a file")
    assert str(tmp_path / "answers.sqlite") in message  # the fix is suggested
    assert list(tmp_path.iterdir()) == []


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "answers.sqlite"
    _refused(path, f"its directory {tmp_path / 'no-such-dir'} does not exist")
    assert list(tmp_path.iterdir()) == []


def test_a_file_as_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    _refused(tmp_path / "notes.txt" / "answers.sqlite", "is not a directory")


def test_a_file_that_is_not_sqlite_is_refused_untouched(
    tmp_path: Path, connections: list[sqlite3.Connection]
) -> None:
    path = tmp_path / "answers.csv"
    path.write_bytes(b"id,answer\n1,106\n")
    _refused(path, "not an SQLite database")
    assert path.read_bytes() == b"id,answer\n1,106\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.csv"]
    assert connections == []  # refused before SQLite ever opens it


def test_a_damaged_sqlite_file_is_refused(
    tmp_path: Path, connections: list[sqlite3.Connection]
) -> None:
    path = tmp_path / "answers.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    _refused(path, "SQLite database")
    assert connections
    assert all(_closed(db) for db in connections)


@pytest.mark.parametrize(
    ("statements", "problem"),
    [
        pytest.param(
            ["CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"],
            "an SQLite database of another program (it holds 'users', which "
            "polars_azurechat does not create)",
            id="other-tables",
        ),
        pytest.param(
            [
                "CREATE TABLE answers (key TEXT PRIMARY KEY, content TEXT, finish_reason "
                "TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, created_at REAL)"
            ],
            "an SQLite database of another program (it has an 'answers' table but no "
            "'_migrations' table)",
            id="answers-without-migrations",
        ),
        pytest.param(
            [
                "CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL)",
                "INSERT INTO _migrations VALUES ('m001_initial', 0)",
                "CREATE TABLE answers (question TEXT, answer TEXT)",
            ],
            "an SQLite database of another program (its 'answers' table has columns "
            "(question, answer), not (key, content, finish_reason, prompt_tokens, "
            "completion_tokens, created_at))",
            id="answers-of-another-shape",
        ),
        pytest.param(
            ["CREATE TABLE _migrations (id INTEGER, version TEXT)"],
            "an SQLite database of another program (its '_migrations' table has "
            "columns (id, version), not (name, applied_at))",
            id="migrations-of-another-shape",
        ),
        pytest.param(
            [
                "CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL)",
                "CREATE TABLE answers (key TEXT PRIMARY KEY, content TEXT, finish_reason "
                "TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, created_at REAL)",
            ],
            "an SQLite database of another program (it has an 'answers' table that its "
            "'_migrations' table does not record)",
            id="answers-not-recorded",
        ),
        pytest.param(
            ["CREATE TABLE batch_jobs (id INTEGER, payload TEXT)"],
            "an SQLite database of another program (its 'batch_jobs' table has "
            "columns (id, payload), not (batch_id, chunk, attempt, status, created_at, "
            "updated_at))",
            id="batch-table-of-another-shape",
        ),
        pytest.param(
            ["CREATE TABLE batch_things (id INTEGER)"],
            "an SQLite database of another program (it holds 'batch_things', which "
            "polars_azurechat does not create)",
            id="another-batch-name",
        ),
        pytest.param(
            ["CREATE VIEW batch_chunks AS SELECT 1 AS one"],
            "an SQLite database of another program (its 'batch_chunks' is a view, "
            "not a table)",
            id="batch-name-not-a-table",
        ),
        pytest.param(
            [
                "CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL)",
                "INSERT INTO _migrations VALUES ('m001_initial', 0)",
                "INSERT INTO _migrations VALUES ('m999_future', 0)",
            ],
            "written by a newer version of polars_azurechat (unknown migration "
            "'m999_future')",
            id="newer-version",
        ),
    ],
)
def test_another_programs_database_is_refused_untouched(
    tmp_path: Path,
    connections: list[sqlite3.Connection],
    statements: list[str],
    problem: str,
) -> None:
    path = tmp_path / "app.db"
    before = _other_database(path, *statements)
    connections.clear()
    _refused(path, problem)
    assert path.read_bytes() == before  # not migrated, not switched to WAL
    assert all(_closed(db) for db in connections)


@pytest.mark.parametrize("kind", ["new", "empty-file", "empty-database"])
def test_a_new_or_empty_file_is_fine(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "answers.sqlite"
    if kind == "empty-file":
        path.touch()
    elif kind == "empty-database":
        _other_database(path, "PRAGMA user_version = 7")
    cache = SqliteCache(path)
    cache.put("k", _answer())
    cache.close()
    cache = SqliteCache(path)
    assert cache.get_many(["k"])["k"].content == "106"
    assert cache.broken is None
    cache.close()


def test_a_cache_of_the_first_version_is_ours(tmp_path: Path) -> None:
    path = tmp_path / "answers.sqlite"
    _other_database(
        path,
        "CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL)",
        "CREATE TABLE answers (key TEXT PRIMARY KEY, content TEXT, finish_reason TEXT, "
        "prompt_tokens INTEGER, completion_tokens INTEGER, created_at REAL NOT NULL)",
        "INSERT INTO _migrations VALUES ('m001_initial', 0)",
        "INSERT INTO answers VALUES ('k', '106', 'stop', 3, 1, 0)",
    )
    cache = SqliteCache(path)
    assert cache.get_many(["k"])["k"].completion_tokens == 1
    assert len(cache) == 1
    cache.close()


@pytest.mark.parametrize("first", ["cache", "batch-state"])
def test_the_batch_state_shares_the_cache_file(tmp_path: Path, first: str) -> None:
    """Batch mode keeps its state in the cache file: its tables are ours."""
    from polars_azurechat.batch.state import BatchStateStore, NewChunk

    path = tmp_path / "answers.sqlite"
    if first == "cache":
        SqliteCache(path).close()
    with BatchStateStore(path) as store:
        store.add_chunks([NewChunk("c1", "h", "d", "f.jsonl", 1, 10, 5, ["k"])])
    cache = SqliteCache(path)
    cache.put("k", _answer())
    cache.close()
    cache = SqliteCache(path)  # opened again with both sets of tables
    assert cache.get_many(["k"])["k"].content == "106"
    cache.close()
    with BatchStateStore(path) as store:
        assert [c.chunk for c in store.chunks()] == ["c1"]
    # one more table beside them: another program's file again
    _other_database(path, "CREATE TABLE users (id INTEGER)")
    _refused(
        path,
        "an SQLite database of another program (it holds 'users', which "
        "polars_azurechat does not create)",
    )


@ROOT_WRITES_ANYWAY
def test_a_read_only_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "answers.sqlite"
    SqliteCache(path).close()
    path.chmod(0o400)
    _refused(path, "cannot write the file (Permission denied)")


@ROOT_WRITES_ANYWAY
@pytest.mark.parametrize("exists", [True, False])
def test_a_read_only_directory_is_refused(tmp_path: Path, exists: bool) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "answers.sqlite"
    if exists:
        SqliteCache(path).close()
    directory.chmod(0o500)
    try:
        _refused(path, f"its directory {directory} is not writable")
        assert path.exists() == exists
    finally:
        directory.chmod(0o700)


def _read_only_connect(
    monkeypatch: pytest.MonkeyPatch, opened: list[sqlite3.Connection]
) -> None:
    """Open databases the way SQLite does when the file cannot be opened for writing.

    SQLite falls back to a read-only connection when the file (or its mount) refuses
    writing; as root, permissions never refuse, so the fallback is forced here.
    """
    connect = sqlite3.connect

    def read_only(path: Any, **kwargs: Any) -> sqlite3.Connection:
        db: sqlite3.Connection = connect(
            f"{Path(path).as_uri()}?mode=ro", uri=True, **kwargs
        )
        opened.append(db)
        return db

    monkeypatch.setattr(sqlite3, "connect", read_only)


@pytest.mark.parametrize("exists", [True, False])
def test_read_only_database_is_refused_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exists: bool
) -> None:
    # the reported case: a cache of an earlier run (already WAL), now read-only, used
    # to open fine and then fail every commit with a traceback per event-loop turn
    path = tmp_path / "answers.sqlite"
    if exists:
        cache = SqliteCache(path)
        cache.put("k", _answer())
        cache.close()
    opened: list[sqlite3.Connection] = []
    _read_only_connect(monkeypatch, opened)
    _refused(path, "cannot write the file (attempt to write a readonly database)")
    assert len(opened) == 1
    assert _closed(opened[0])
    assert path.exists() == exists  # a file created for nothing is removed


# -- a cache that breaks mid-run: one warning, then the run goes on without it ---------


def _cache_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "polars_azurechat.store.sqlite"]


def _assert_inert(cache: SqliteCache) -> None:
    """Once broken, every call does nothing (and raises nothing)."""
    cache.put("again", _answer())
    cache.flush()
    assert cache.get_many(["k1", "again"]) == {}
    assert len(cache) == 0
    cache.close()
    cache.close()


def test_a_full_disk_at_commit_breaks_the_cache_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "answers.sqlite"
    cache = SqliteCache(path)
    cache.put("k1", _answer())
    cache.flush()
    cache.put("k2", _answer("x" * 1_000_000))  # needs ~1 MB of WAL at COMMIT
    # RLIMIT_FSIZE makes writes past 64 KiB fail as on a full disk, even for root
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with caplog.at_level(logging.WARNING, logger="polars_azurechat.store.sqlite"):
            cache.flush()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert cache.broken is not None
    assert cache.broken.startswith(f"cache {path}: cannot save answers (")
    with caplog.at_level(logging.WARNING, logger="polars_azurechat.store.sqlite"):
        _assert_inert(cache)
    [record] = _cache_warnings(caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (f"{cache.broken}; the run goes on without the cache")
    reopened = SqliteCache(path)  # what was committed before is intact
    assert set(reopened.get_many(["k1", "k2"])) == {"k1"}
    reopened.close()


def test_a_failing_insert_rolls_back_and_breaks_the_cache_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a failed statement inside the transaction used to leave it open, and every
    # later flush failed with "cannot start a transaction within a transaction"
    path = tmp_path / "answers.sqlite"
    cache = SqliteCache(path)
    with contextlib.closing(sqlite3.connect(path)) as other:  # another program
        other.execute(
            "CREATE TRIGGER no_more BEFORE INSERT ON answers "
            "BEGIN SELECT RAISE(ABORT, 'answers are frozen'); END"
        )
        other.commit()
    cache.put("k1", _answer())
    with caplog.at_level(logging.WARNING, logger="polars_azurechat.store.sqlite"):
        cache.flush()
        assert cache.broken == (
            f"cache {path}: cannot save answers (answers are frozen)"
        )
        _assert_inert(cache)
    assert len(_cache_warnings(caplog)) == 1
    # rolled back and let go: another program can write at once (no lock is left)
    with contextlib.closing(sqlite3.connect(path, timeout=0)) as other:
        other.execute("DROP TRIGGER no_more")
        other.commit()


def test_a_failing_read_breaks_the_cache_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "answers.sqlite"
    cache = SqliteCache(path)
    cache.put("k1", _answer())
    cache.flush()
    with contextlib.closing(sqlite3.connect(path)) as other:
        other.execute("DROP TABLE answers")
        other.commit()
    with caplog.at_level(logging.WARNING, logger="polars_azurechat.store.sqlite"):
        assert cache.get_many(["k1"]) == {}
        assert (
            cache.broken
            == f"cache {path}: cannot read answers (no such table: answers)"
        )
        _assert_inert(cache)
    assert len(_cache_warnings(caplog)) == 1


def test_an_answer_sqlite_cannot_store_is_skipped(tmp_path: Path) -> None:
    cache = SqliteCache(tmp_path / "answers.sqlite")
    cache.put("bad", _answer("half a surrogate: \ud800"))
    cache.put("good", _answer())
    cache.flush()
    assert set(cache.get_many(["bad", "good"])) == {"good"}
    assert cache.broken is None
    cache.close()


def test_a_run_goes_on_when_the_cache_breaks(
    emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "answers.sqlite"
    questions = [f"What is {i} + 1?" for i in range(20)]
    with (
        caplog.at_level(logging.WARNING),
        pac.Completer(cache=path, max_tokens=5, max_concurrency=4) as job,
    ):
        assert job.run(questions[:5]) == [str(i + 1) for i in range(5)]
        with contextlib.closing(sqlite3.connect(path)) as other:
            other.execute(
                "CREATE TRIGGER no_more BEFORE INSERT ON answers "
                "BEGIN SELECT RAISE(ABORT, 'answers are frozen'); END"
            )
            other.commit()
        assert job.run(questions) == [str(i + 1) for i in range(20)]
        assert job.run(questions) == [str(i + 1) for i in range(20)]
        cache = job.engine.cache
        assert cache is not None
        assert cache.broken == f"cache {path}: cannot save answers (answers are frozen)"
    assert emulator.stats()["requests"] == 5 + 15 + 20  # no cache after it broke
    assert len(_cache_warnings(caplog)) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
