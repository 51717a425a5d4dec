"""A SQLite cache of answered requests, so a rerun sends only what is missing.

Each answer is stored under the sha256 of canonical JSON (sorted keys) of what decides it:
endpoint host, deployment, messages and body parameters (not the api-version: the classic
routes and the v1 API share answers). The key never holds the API key. Only answers are stored, never failures. Writes are transactions in WAL mode,
so a process killed at any moment leaves every committed answer readable; the file is
created owner-only (0600).

An unusable file is refused when the cache is opened, before any request is sent, with a
:class:`~polars_azurechat.errors.CacheError` whose one-line message names the path and
the problem (see :class:`SqliteCache` for the rules). If the file breaks during a run
(disk full, file changed by another program, ...), the cache logs one warning, records
why in :attr:`SqliteCache.broken` and does nothing from then on: the run goes on
without it. A file that is only *busy* (another connection holds its write lock:
``database is locked``) does not break it: the answers wait and a writer thread
(:mod:`polars_azurechat.store.buffered`) tries again with backoff, so the event loop
never waits for the lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

from polars_azurechat._json import messages_json
from polars_azurechat._types import ChatResult
from polars_azurechat.batch.state import INDEXES as BATCH_INDEXES
from polars_azurechat.batch.state import TABLES as BATCH_TABLES
from polars_azurechat.errors import CacheError
from polars_azurechat.store.buffered import CLOSE_WAIT_S, BufferedCache

__all__ = ["BufferedCache", "SqliteCache", "request_key", "request_key_parts"]

logger = logging.getLogger(__name__)

_SQLITE_MAGIC = b"SQLite format 3\x00"
_MIGRATIONS_COLUMNS = ("name", "applied_at")
_ANSWERS_COLUMNS = (
    "key",
    "content",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "created_at",
)
# a row written and deleted at opening: proves the file takes writes
_PROBE = "_write_probe"
#: How long a read (on the event loop) waits for a lock before its rows are misses.
READ_BUSY_S = 0.1
#: How long one write attempt (on the writer thread) waits for the lock before the
#: writer backs off and tries again.
WRITE_BUSY_S = 0.05
#: How long an interrupted job's close waits for the checkpoint (see ``hurry``).
HURRIED_CLOSE_S = 0.5

_MIGRATIONS: list[tuple[str, str]] = [
    (
        "m001_initial",
        """
        CREATE TABLE answers (
            key TEXT PRIMARY KEY,
            content TEXT,
            finish_reason TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            created_at REAL NOT NULL
        )
        """,
    ),
    # an answer's (token, logprob) pairs, when the request asked for them (JSON)
    ("m002_logprobs", "ALTER TABLE answers ADD COLUMN logprobs TEXT"),
]


def request_key(
    *,
    host: str,
    deployment: str,
    messages: Sequence[Mapping[str, str]],
    params: Mapping[str, Any],
) -> str:
    """The cache key of one request: sha256 over canonical JSON of what decides the answer.

    The resource's host, the deployment, the messages and the body's parameters: not
    the surface a request travels by (the classic ``api-version`` routes or the v1
    API), so a job cached on one is not paid again on the other.

    Examples
    --------
    >>> a = request_key(
    ...     host="h",
    ...     deployment="d",
    ...     messages=[],
    ...     params={"a": 1, "b": 2},
    ... )
    >>> a == request_key(
    ...     host="h",
    ...     deployment="d",
    ...     messages=[],
    ...     params={"b": 2, "a": 1},
    ... )
    True
    """
    head, tail = request_key_parts(host=host, deployment=deployment, params=params)
    return hashlib.sha256(
        head + messages_json(messages, canonical=True) + tail
    ).hexdigest()


def request_key_parts(
    *, host: str, deployment: str, params: Mapping[str, Any]
) -> tuple[bytes, bytes]:
    """The canonical JSON of :func:`request_key` before and after the messages.

    A job's parts are the same for every row: the engine encodes them once (a typed
    answer's schema is in ``params``) and hashes ``head + messages + tail``.

    Examples
    --------
    >>> head, tail = request_key_parts(
    ...     host="h", deployment="d", params={"b": 2, "a": 1}
    ... )
    >>> head + b"[]" + tail
    b'{"deployment":"d","host":"h","messages":[],"params":{"a":1,"b":2}}'
    >>> import hashlib
    >>> hashlib.sha256(head + b"[]" + tail).hexdigest() == request_key(
    ...     host="h",
    ...     deployment="d",
    ...     messages=[],
    ...     params={"a": 1, "b": 2},
    ... )
    True
    """
    # the keys in sorted order: the canonical JSON of the whole dict, byte for byte
    head = (
        b'{"deployment":'
        + _canonical(deployment)
        + b',"host":'
        + _canonical(host)
        + b',"messages":'
    )
    return head, b',"params":' + _canonical(params) + b"}"


def _canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def _schema_problem(db: sqlite3.Connection) -> str | None:
    """Why an SQLite database is not one of our caches, or None if it is (or is empty).

    The rule: the database may hold nothing (a new or empty file, which is then
    migrated), or only our objects: the tables ``_migrations`` (columns ``name,
    applied_at``) and ``answers`` (the columns of ``m001_initial``), where
    ``_migrations`` records only migrations this version knows and records
    ``m001_initial`` exactly when ``answers`` exists; and batch mode's state, the
    tables ``batch_chunks``, ``batch_chunk_keys``, ``batch_jobs`` and ``batch_files``
    with exactly the
    columns :data:`polars_azurechat.batch.state.TABLES` lists and the index
    ``batch_chunk_keys_by_key``. SQLite's own objects (``sqlite_*``) are ignored.
    """
    objects = dict(
        db.execute(
            "SELECT name, type FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        ).fetchall()
    )
    problem = _batch_problem(db, objects)
    if problem is not None:
        return problem
    objects = {
        name: kind
        for name, kind in objects.items()
        if name not in BATCH_TABLES and name not in BATCH_INDEXES
    }
    if not objects:
        return None
    other = sorted(name for name in objects if name not in ("_migrations", "answers"))
    other += sorted(
        f"{name} ({kind})"
        for name, kind in objects.items()
        if name in ("_migrations", "answers") and kind != "table"
    )
    if other:
        listed = ", ".join(repr(name) for name in other[:3])
        more = f" and {len(other) - 3} more" if len(other) > 3 else ""
        return (
            "an SQLite database of another program (it holds "
            f"{listed}{more}, which polars_azurechat does not create); "
            "give the cache a new file name"
        )
    if "_migrations" not in objects:
        return (
            "an SQLite database of another program (it has an 'answers' table but no "
            "'_migrations' table); give the cache a new file name"
        )
    columns = _columns(db, "_migrations")
    if columns != _MIGRATIONS_COLUMNS:
        return (
            "an SQLite database of another program (its '_migrations' table has columns "
            f"({', '.join(columns)}), not ({', '.join(_MIGRATIONS_COLUMNS)})); "
            "give the cache a new file name"
        )
    applied = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    known = {name for name, _ in _MIGRATIONS}
    unknown = sorted(str(name) for name in applied - known)
    if unknown:
        return (
            "written by a newer version of polars_azurechat (unknown migration "
            f"{unknown[0]!r}); upgrade polars_azurechat or give the cache a new file name"
        )
    if ("answers" in objects) != ("m001_initial" in applied):
        if "answers" in objects:
            return (
                "an SQLite database of another program (it has an 'answers' table that "
                "its '_migrations' table does not record); give the cache a new file name"
            )
        return (
            "a damaged cache ('_migrations' records 'm001_initial' but the 'answers' "
            "table is missing); delete it or give the cache a new file name"
        )
    if "answers" in objects:
        columns = _columns(db, "answers")
        expected = _ANSWERS_COLUMNS + (
            ("logprobs",) if "m002_logprobs" in applied else ()
        )
        if columns != expected:
            return (
                "an SQLite database of another program (its 'answers' table has columns "
                f"({', '.join(columns)}), not ({', '.join(expected)})); "
                "give the cache a new file name"
            )
    return None


def _batch_problem(db: sqlite3.Connection, objects: Mapping[str, str]) -> str | None:
    """Why the batch-state objects of the database are not ours, or None."""
    for name, kind in sorted(objects.items()):
        expected = "table" if name in BATCH_TABLES else "index"
        if name not in BATCH_TABLES and name not in BATCH_INDEXES:
            continue
        if kind != expected:
            return (
                f"an SQLite database of another program (its {name!r} is a {kind}, "
                f"not a {expected}); give the cache a new file name"
            )
        if name in BATCH_TABLES:
            columns = _columns(db, name)
            if columns != BATCH_TABLES[name]:
                return (
                    f"an SQLite database of another program (its {name!r} table has "
                    f"columns ({', '.join(columns)}), not "
                    f"({', '.join(BATCH_TABLES[name])})); give the cache a new file name"
                )
    return None


def _columns(db: sqlite3.Connection, table: str) -> tuple[str, ...]:
    return tuple(str(row[1]) for row in db.execute(f'PRAGMA table_info("{table}")'))


def _dir_writable(directory: Path) -> bool:
    """Whether files can be created in ``directory`` (SQLite creates -wal and -shm)."""
    mode = os.W_OK | os.X_OK
    if os.access in os.supports_effective_ids:
        return os.access(directory, mode, effective_ids=True)
    return os.access(directory, mode)  # pragma: no cover - platforms without euid


class SqliteCache(BufferedCache[tuple[Any, ...]]):
    """Answers stored in one SQLite file; safe to share between threads.

    Parameters
    ----------
    path
        The database file; created (owner-only) with its tables if missing.
    close_wait_s
        How long :meth:`close` waits for the file's write lock when another
        connection holds it and answers are still waiting (then they are given up,
        with one warning).

    Attributes
    ----------
    path
        The database file, as given.
    broken
        None while the cache works. If the file fails during a run (a write or read
        raised another error than a busy lock), the one-line reason, naming the path
        and the problem (one warning is logged when it happens); from then on
        :meth:`put`, :meth:`flush` and :meth:`get_many` do nothing and the run goes on
        without the cache.
    busy
        None while writes go through; ``cache <path>: database is locked`` while
        another connection holds the write lock: the answers wait (:attr:`waiting`)
        and the writer thread tries again with backoff, until the lock frees.

    Raises
    ------
    CacheError
        At construction, before any request, when the file cannot be used. The
        one-line message is ``cache <absolute path>: <problem>``. Refused are: a
        directory; a path whose directory does not exist (or is not a directory);
        something that is not a regular file; a file that cannot be read; a non-empty
        file that does not start with SQLite's header ("not an SQLite database"); an
        SQLite database that SQLite cannot read (damaged, locked); an SQLite database of
        another program: anything else than an empty database or our tables, see the
        rule below; a file written by a newer version (a migration this version does not
        know); a file that cannot be opened for writing (read-only file or file system);
        a directory where files cannot be created (SQLite creates ``<name>-wal`` and
        ``<name>-shm`` beside the database, and a new file needs creating); and a
        database that refuses a real write: opening commits its migrations and writes
        and deletes a probe row, so a read-only mount or a full disk is caught here.
        No connection is left open and a file created here is removed.

    Notes
    -----
    The rule for "ours": a new or empty file is ours (its tables are created). A
    database with objects is ours only if its objects (ignoring SQLite's own
    ``sqlite_*``) are among the tables ``_migrations`` (columns ``name, applied_at``)
    and ``answers`` (columns ``key, content, finish_reason, prompt_tokens,
    completion_tokens, created_at``, in this order, then ``logprobs`` once
    ``m002_logprobs`` is recorded), every migration recorded in
    ``_migrations`` is known to this version, and ``answers`` exists exactly when
    ``m001_initial`` is recorded; besides them, batch mode's state may be there (it
    lives in the cache file): the tables ``batch_chunks``, ``batch_chunk_keys``,
    ``batch_jobs`` and ``batch_files``, each with exactly its columns, and the index
    ``batch_chunk_keys_by_key``. Anything else (another table, a ``batch_*`` table
    with other columns, ...) is another program's file (or a damaged or newer cache)
    and is refused, never modified.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "answers.sqlite"
    >>> cache = SqliteCache(path)
    >>> cache.put("k1", ChatResult(content="106", finish_reason="stop", attempts=1))
    >>> cache.flush()
    >>> cache.get_many(["k1", "k2"])["k1"].content
    '106'
    >>> cache.close()
    >>> print(cache.broken)
    None

    An unusable path is refused at once, naming the path and the problem:

    >>> SqliteCache(path.parent)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    polars_azurechat.errors.CacheError: cache ...: is a directory, not a file; ...
    """

    _log = logger

    def __init__(
        self, path: str | os.PathLike[str], *, close_wait_s: float = CLOSE_WAIT_S
    ) -> None:
        super().__init__(close_wait_s=close_wait_s)
        self.path = Path(path)
        self._shown = str(self.path.absolute())
        created = self._check_path()
        try:
            self._db = self._open()
        except BaseException:
            if created:
                for suffix in created:
                    with suppress(OSError):
                        os.unlink(f"{self.path}{suffix}")
            raise

    def __repr__(self) -> str:
        return f"SqliteCache({str(self.path)!r})"

    def _error(self, problem: str) -> CacheError:
        return CacheError(f"cache {self._shown}: {problem}")

    def _check_path(self) -> list[str]:
        """Refuse a path that cannot be our database; create a missing file.

        Returns the suffixes of the files created here ("" for the database,
        "-wal" / "-shm" for SQLite's files that did not exist), to remove on failure.
        """
        path = self.path
        if path.is_dir():
            raise self._error(
                "is a directory, not a file; give a file path such as "
                f"{path.absolute() / 'answers.sqlite'}"
            )
        directory = path.absolute().parent
        if not directory.exists():
            raise self._error(f"its directory {directory} does not exist")
        if not directory.is_dir():
            raise self._error(f"{directory} is not a directory")
        if path.exists():
            if not path.is_file():
                raise self._error("is not a regular file")
            try:
                with path.open("rb") as f:
                    header = f.read(len(_SQLITE_MAGIC))
            except OSError as e:
                raise self._error(f"cannot read the file ({e.strerror})") from None
            if header and header != _SQLITE_MAGIC:
                raise self._error(
                    "not an SQLite database (the file holds other data); "
                    "give the cache a new file name"
                )
            try:
                os.close(os.open(path, os.O_RDWR))
            except OSError as e:
                raise self._error(f"cannot write the file ({e.strerror})") from None
            if not _dir_writable(directory):
                raise self._error(
                    f"its directory {directory} is not writable (SQLite creates "
                    f"{path.name}-wal and {path.name}-shm beside the file)"
                )
            return []
        if not _dir_writable(directory):
            raise self._error(
                f"cannot create the file: its directory {directory} is not writable"
            )
        created = [
            suffix
            for suffix in ("-wal", "-shm")
            if not Path(f"{path}{suffix}").exists()
        ]
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except (
            FileExistsError
        ):  # created meanwhile by another process: SQLite checks it
            return []
        except OSError as e:
            raise self._error(f"cannot create the file ({e.strerror})") from None
        os.close(fd)
        return ["", *created]

    def _open(self) -> sqlite3.Connection:
        """Connect and prepare; a refused file leaves no connection open."""
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._prepare(db)
            # reads run on the event loop: in WAL mode they take no lock, and a read
            # that meets one anyway gives up soon (its rows are misses)
            db.execute(f"PRAGMA busy_timeout={int(READ_BUSY_S * 1000)}")
        except BaseException:
            with suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            db.close()
            raise
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Refuse a database that is not ours, then migrate and prove a write."""
        try:
            problem = _schema_problem(db)
        except sqlite3.Error as e:
            raise self._error(_read_problem(e)) from None
        if problem is not None:
            raise self._error(problem)
        try:
            mode = str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            if mode.lower() == "wal":
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("BEGIN IMMEDIATE")
                # again under the write lock: another process may have migrated meanwhile
                problem = _schema_problem(db)
                if problem is None:
                    self._migrate(db)
                    db.execute(
                        "INSERT OR REPLACE INTO _migrations VALUES (?, ?)",
                        (_PROBE, time.time()),
                    )
                    db.execute("DELETE FROM _migrations WHERE name = ?", (_PROBE,))
                    db.execute("COMMIT")
        except sqlite3.Error as e:
            raise self._error(f"cannot write the file ({e})") from None
        if mode.lower() != "wal":
            raise self._error(f"cannot use WAL mode (the journal mode stays {mode!r})")
        if problem is not None:
            raise self._error(problem)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Apply the missing migrations (inside the caller's transaction)."""
        db.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)"
        )
        done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
        for name, sql in _MIGRATIONS:
            if name not in done:
                db.execute(sql)
                db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))

    def _label(self) -> str:
        return f"cache {self._shown}"

    def _let_go(self) -> None:
        """The cache broke: roll back and close the reader (the lock is held)."""
        with suppress(sqlite3.Error):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        with suppress(sqlite3.Error):
            self._db.close()

    def get_many(self, keys: Iterable[str]) -> dict[str, ChatResult]:
        """Look up many keys at once.

        Parameters
        ----------
        keys
            Cache keys (see :func:`request_key`); repeats are looked up once.

        Returns
        -------
        dict[str, ChatResult]
            The hits only, by key: in the file, or flushed and still waiting for the
            writer (a busy file). Empty once the cache is broken or closed; a failing
            read breaks the cache (see :attr:`broken`) instead of raising, unless the
            file is only busy: its rows are then misses.
        """
        keys = list(dict.fromkeys(keys))
        with self._lock:
            if not self._usable():
                return {}
            out = self._queued_hits(keys)
            if out:
                keys = [k for k in keys if k not in out]
            try:
                for start in range(0, len(keys), 500):
                    chunk = keys[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    query = f"SELECT * FROM answers WHERE key IN ({marks})"  # noqa: S608
                    for row in self._db.execute(query, chunk):
                        out[row[0]] = self._result(row)
            except sqlite3.Error as e:
                if self._is_busy(e):
                    logger.debug("%s: %s; the rest are misses", self._label(), e)
                    return out
                self._break(f"cannot read answers ({e})")
                return {}
            except ValueError as e:
                self._break(f"cannot read answers ({e})")
                return {}
        return out

    def put(self, key: str, result: ChatResult) -> None:
        """Queue an answer for writing; :meth:`flush` hands it to the writer thread.

        The engine flushes once per event-loop turn, without waiting: the writer
        commits in one transaction what was handed over since its last commit, so a
        killed process loses at most the answers not yet committed. Failures are
        refused, and so is an answer SQLite cannot store (text that is not valid
        Unicode); nothing is queued once the cache is broken or closed.

        Parameters
        ----------
        key
            The request's cache key (see :func:`request_key`).
        result
            The answer.
        """
        if result.exception is not None or not self._usable():
            return
        if result.content is not None:
            try:
                result.content.encode()
            except UnicodeEncodeError:
                logger.debug("not caching an answer that is not valid Unicode")
                return
        self._add(
            key,
            (
                key,
                result.content,
                result.finish_reason,
                result.prompt_tokens,
                result.completion_tokens,
                time.time(),
                None if result.logprobs is None else json.dumps(result.logprobs),
            ),
        )

    def _result(self, row: tuple[Any, ...]) -> ChatResult:
        _, content, finish, prompt, completion, _, logprobs = row
        return ChatResult(
            content=content,
            finish_reason=finish,
            prompt_tokens=prompt,
            completion_tokens=completion,
            attempts=0,
            cached=True,
            logprobs=None if logprobs is None else stored_logprobs(logprobs),
        )

    def _errors(self, *, writing: bool) -> tuple[type[Exception], ...]:
        return (
            (sqlite3.Error, ValueError, OverflowError) if writing else (sqlite3.Error,)
        )

    def _is_busy(self, error: Exception) -> bool:
        """Another connection holds the lock: ``database is locked`` (SQLITE_BUSY)."""
        return isinstance(error, sqlite3.OperationalError) and _busy(error)

    def _open_writer(self) -> sqlite3.Connection:
        """The writer thread's own connection (the file must still exist)."""
        db = sqlite3.connect(
            f"file:{quote(str(self.path.absolute()))}?mode=rw",
            uri=True,
            check_same_thread=False,
            isolation_level=None,
            timeout=WRITE_BUSY_S,
        )
        try:
            db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _write(self, handle: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        """Commit ``rows`` in one transaction; roll back on any failure."""
        try:
            handle.execute("BEGIN IMMEDIATE")
            handle.executemany(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)", rows
            )
            handle.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                if handle.in_transaction:
                    handle.execute("ROLLBACK")
            raise

    def _close_writer(self, handle: sqlite3.Connection) -> None:
        with suppress(sqlite3.Error):
            handle.close()

    def _count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM answers").fetchone()[0])

    def _disconnect(self) -> None:
        if self.broken is not None:  # a broken cache closed its connection
            return
        if not self.hurry:
            with suppress(sqlite3.Error):
                self._db.close()
            return
        # the last connection's close folds the WAL into the file (a checkpoint, with
        # two disk syncs): off this thread, waited for a moment. If the process ends
        # first, the committed answers stay in the -wal file and the next open folds
        # them in (SQLite's recovery): nothing is lost.
        closer = threading.Thread(
            target=_close_quietly, args=(self._db,), name="cache-close", daemon=True
        )
        closer.start()
        closer.join(HURRIED_CLOSE_S)


def _close_quietly(db: sqlite3.Connection) -> None:
    with suppress(sqlite3.Error):
        db.close()


def stored_logprobs(text: str | bytes) -> tuple[tuple[str, float], ...]:
    """An answer's ``(token, logprob)`` pairs from their stored JSON."""
    return tuple((str(t), float(p)) for t, p in json.loads(text))


def _busy(error: sqlite3.Error) -> bool:
    """Whether SQLite refused for now (a lock held elsewhere), not for good."""
    name = getattr(error, "sqlite_errorname", "")
    if name:
        return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    text = str(error)  # pragma: no cover - Python before 3.11
    return "database is locked" in text or "database table is locked" in text


def _read_problem(error: sqlite3.Error) -> str:
    """The problem SQLite met reading a file, in words."""
    name = getattr(error, "sqlite_errorname", "")
    if name == "SQLITE_NOTADB":
        return f"not an SQLite database ({error}); give the cache a new file name"
    if name == "SQLITE_CORRUPT":
        return f"a damaged SQLite database ({error}); delete it or give a new file name"
    return f"cannot read the file ({error})"
