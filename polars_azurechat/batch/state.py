"""What batch mode submitted, kept in SQLite, so a rerun attaches instead of paying twice.

A job's distinct requests are cut into *chunks*, one input file and one batch each. A
chunk is named by the sha256 of its JSONL (so the same requests cut the same way give
the same name), and its file is uploaded as ``polars-azurechat-<sha256>.jsonl``, with
the batch created with ``metadata={"polars_azurechat_chunk": <sha256>,
"polars_azurechat_attempt": <n>}``. Those two names make each step findable on the
server when a process died before it could write down what the step returned.

The protocol (:class:`~polars_azurechat.batch.runner.BatchRunner` follows it; each write is
committed before the step it announces, or right after the step that returned the id):

1. **planned**: every new chunk and the cache keys it holds (in line order) are
   written in one transaction before anything is uploaded.
2. **uploading** is written, then the file is uploaded; its id is written at once
   (**uploaded**). A rerun that finds a chunk *uploading* without a file id first
   lists the files (purpose ``batch``) for the chunk's file name and adopts the one
   it finds: the upload happened, only its id was lost.
3. Once the file is ``processed``, **creating** is written with the attempt number
   ``n`` (one more than the last), then the batch is created; its id is written at
   once (**submitted**, with a row in ``batch_jobs``). A rerun that finds a chunk
   *creating* lists the batches for one whose metadata names the chunk and ``n``,
   and adopts it: the batch exists, only its id was lost.
4. While it runs, its last status is written as it is seen. A batch that failed for
   ``token_limit_exceeded`` sends the chunk back to *uploaded* (its file is kept)
   and the next create is attempt ``n + 1``.
5. When the batch ended and its results were handed over (to the cache), the chunk
   is **done**. Its files (the input file, recorded when uploaded, and the batch's
   output and error files, recorded when it ended) are then deleted from the server
   and each deletion written down (``batch_files``), so nothing is deleted twice and
   ``polars-azurechat batches --cleanup`` finds what a crashed job left. A chunk whose file cannot be rebuilt on a rerun (its requests are
   no longer asked for) and was never uploaded is **abandoned**: nothing was sent.

So whichever step a ``kill -9`` interrupts, a rerun with the same requests finds the
chunks still *live* (not done or abandoned) that hold any of its keys, attaches to
them at the step they reached, and cuts new chunks only from the keys no live chunk
holds: no request is uploaded or submitted twice. A done chunk cut again with the same
content (every row of it failed, and the rerun asks for them again) starts over as
*planned*, keeping its attempt count and its file if the server still has it.

The tables are ``batch_chunks``, ``batch_chunk_keys``, ``batch_jobs`` and
``batch_files`` (and the
index ``batch_chunk_keys_by_key``), with their own connection, so they live in the
answer cache's file (batch mode keeps them there; :class:`~polars_azurechat.store.sqlite.SqliteCache`
accepts exactly these objects, with exactly these columns, beside its own) or in a
file of their own.
The file is created owner-only (0600). Nothing secret is written: ids, hashes, counts.

One job at a time: a store takes an OS-level lock (``flock``) on the lock file
``<file>.batch-lock`` beside it for as long as it is open, so a second job of another
process (or of the same thread) opening the same file is refused with a
:class:`~polars_azurechat.errors.CacheError` naming the job that holds it (pid, host,
since when) instead of submitting the same rows again. A job of this process in
another thread (two batch-mode expressions of one eager ``select``, which Polars runs
at once) waits for its turn instead, then finds the first job's answers in the cache. The lock of a process that
died (``kill -9``) is released by the operating system; its lock file is taken over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from polars_azurechat.errors import CacheError
from polars_azurechat.outputs import FileBusyError, FileLock

__all__ = [
    "LIVE_PHASES",
    "BatchJobRecord",
    "BatchStateStore",
    "ChunkRecord",
    "FileKind",
    "FileRecord",
    "NewChunk",
    "Phase",
    "check_batch_lock",
]

logger = logging.getLogger(__name__)

Phase = Literal[
    "planned", "uploading", "uploaded", "creating", "submitted", "done", "abandoned"
]
#: What a file recorded in ``batch_files`` is to its chunk.
FileKind = Literal["input", "output", "error"]
#: The phases of a chunk that still has work (or a batch) on the server.
LIVE_PHASES: tuple[Phase, ...] = (
    "planned",
    "uploading",
    "uploaded",
    "creating",
    "submitted",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_chunks (
    chunk TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    deployment TEXT NOT NULL,
    file_name TEXT NOT NULL,
    lines INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    phase TEXT NOT NULL,
    file_id TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    batch_id TEXT,
    status TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_chunk_keys (
    chunk TEXT NOT NULL,
    line INTEGER NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (chunk, line)
);
CREATE INDEX IF NOT EXISTS batch_chunk_keys_by_key ON batch_chunk_keys (key);
CREATE TABLE IF NOT EXISTS batch_jobs (
    batch_id TEXT PRIMARY KEY,
    chunk TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_files (
    file_id TEXT PRIMARY KEY,
    chunk TEXT NOT NULL,
    kind TEXT NOT NULL,
    batch_id TEXT,
    deleted_at REAL,
    outcome TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""

#: The state's tables and their columns, in order (the answer cache accepts exactly
#: these beside its own), and its index.
TABLES: dict[str, tuple[str, ...]] = {
    "batch_chunks": (
        "chunk",
        "host",
        "deployment",
        "file_name",
        "lines",
        "bytes",
        "tokens",
        "phase",
        "file_id",
        "attempt",
        "batch_id",
        "status",
        "error",
        "created_at",
        "updated_at",
    ),
    "batch_chunk_keys": ("chunk", "line", "key"),
    "batch_jobs": (
        "batch_id",
        "chunk",
        "attempt",
        "status",
        "created_at",
        "updated_at",
    ),
    "batch_files": (
        "file_id",
        "chunk",
        "kind",
        "batch_id",
        "deleted_at",
        "outcome",
        "created_at",
        "updated_at",
    ),
}
INDEXES = frozenset({"batch_chunk_keys_by_key"})

_CHUNK_COLUMNS = (
    "chunk, host, deployment, file_name, lines, bytes, tokens, phase, file_id, "
    "attempt, batch_id, status, error, created_at, updated_at"
)


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One chunk as stored: its file, its current batch, and how far it got."""

    chunk: str
    host: str
    deployment: str
    file_name: str
    lines: int
    bytes: int
    tokens: int
    phase: Phase
    file_id: str | None
    attempt: int
    batch_id: str | None
    status: str | None
    error: str | None
    created_at: float
    updated_at: float

    @property
    def live(self) -> bool:
        """Whether the chunk still has work, or a batch, on the server."""
        return self.phase in LIVE_PHASES


@dataclasses.dataclass(frozen=True, slots=True)
class BatchJobRecord:
    """One batch created for a chunk (a chunk may have several attempts)."""

    batch_id: str
    chunk: str
    attempt: int
    status: str | None
    created_at: float
    updated_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class FileRecord:
    """A file on the server that belongs to a chunk, and whether it was deleted."""

    file_id: str
    chunk: str
    kind: FileKind
    #: the batch whose output or error file it is (``None``: the input file)
    batch_id: str | None
    #: when it was deleted (or found gone), ``None`` while it may still exist
    deleted_at: float | None
    #: ``"deleted"``, ``"gone"`` (a 404), or why the last delete failed
    outcome: str | None
    created_at: float
    updated_at: float


_FILE_COLUMNS = (
    "file_id, chunk, kind, batch_id, deleted_at, outcome, created_at, updated_at"
)


@dataclasses.dataclass(frozen=True, slots=True)
class NewChunk:
    """A chunk to record before anything is uploaded."""

    chunk: str
    host: str
    deployment: str
    file_name: str
    lines: int
    bytes: int
    tokens: int
    #: in line order; read once, as the chunk is recorded (it may be a generator)
    keys: Iterable[str]


class BatchStateStore:
    """The batch-mode state in one SQLite file; safe to share between threads.

    Parameters
    ----------
    path
        The database file (the answer cache's file may be used: the tables are
        others). Created owner-only if missing.
    clock
        Wall-clock seconds for the ``created_at``/``updated_at`` columns.
    lock
        Take the file for this store alone while it is open (the module docstring):
        a job's store does; a reader (``polars-azurechat batches`` listing) need not.

    Raises
    ------
    CacheError
        ``lock`` and another job holds the file (the message names it).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "state.sqlite"
    >>> with BatchStateStore(path) as store:
    ...     new = NewChunk("c1", "h", "d", "f.jsonl", 2, 100, 10, ["k1", "k2"])
    ...     _ = store.add_chunks([new])
    ...     store.uploading("c1")
    ...     store.uploaded("c1", "file-1")
    ...     attempt = store.creating("c1")
    ...     store.submitted("c1", "batch_1", "validating")
    ...     live = [(c.phase, c.file_id, c.batch_id) for c in store.live("h", "d")]
    >>> attempt, live
    (1, [('submitted', 'file-1', 'batch_1')])
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        lock: bool = True,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file_lock = _batch_lock(self.path) if lock else None
        try:
            if not self.path.exists():
                with contextlib.suppress(FileExistsError):  # another process was first
                    os.close(
                        os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                    )
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
        except BaseException:
            self._release()
            raise
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            self._release()
            raise

    def close(self) -> None:
        """Close the connection (and release the file for another job)."""
        with self._lock:
            try:
                self._db.close()
            finally:
                self._release()

    def _release(self) -> None:
        lock, self._file_lock = self._file_lock, None
        if lock is not None:
            lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------

    def chunk(self, chunk: str) -> ChunkRecord | None:
        """The chunk named ``chunk``, or ``None``."""
        rows = self._query(
            f"SELECT {_CHUNK_COLUMNS} FROM batch_chunks WHERE chunk = ?",  # noqa: S608 - our columns
            (chunk,),
        )
        return _chunk(rows[0]) if rows else None

    def chunks(
        self, host: str | None = None, *, live_only: bool = False
    ) -> list[ChunkRecord]:
        """Every chunk (of ``host``, if given), oldest first."""
        sql = f"SELECT {_CHUNK_COLUMNS} FROM batch_chunks"  # noqa: S608 - our columns
        where, args = [], []
        if host is not None:
            where.append("host = ?")
            args.append(host)
        if live_only:
            where.append(f"phase IN ({', '.join('?' * len(LIVE_PHASES))})")
            args.extend(LIVE_PHASES)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, rowid"
        return [_chunk(row) for row in self._query(sql, args)]

    def live(self, host: str, deployment: str) -> list[ChunkRecord]:
        """The live chunks of ``deployment`` at ``host``, oldest first."""
        return [
            c for c in self.chunks(host, live_only=True) if c.deployment == deployment
        ]

    def keys(self, chunk: str) -> list[str]:
        """The cache keys ``chunk`` holds, in line order."""
        rows = self._query(
            "SELECT key FROM batch_chunk_keys WHERE chunk = ? ORDER BY line", (chunk,)
        )
        return [str(row[0]) for row in rows]

    def jobs(self, chunk: str | None = None) -> list[BatchJobRecord]:
        """The batches created (of ``chunk``, if given), oldest first."""
        sql = (
            "SELECT batch_id, chunk, attempt, status, created_at, updated_at "
            "FROM batch_jobs"
        )
        args: tuple[Any, ...] = ()
        if chunk is not None:
            sql += " WHERE chunk = ?"
            args = (chunk,)
        rows = self._query(sql + " ORDER BY created_at, rowid", args)
        return [BatchJobRecord(*row) for row in rows]

    def files(
        self, chunk: str | None = None, *, undeleted: bool = False
    ) -> list[FileRecord]:
        """The files recorded (of ``chunk``; only those not deleted yet), oldest first."""
        sql = f"SELECT {_FILE_COLUMNS} FROM batch_files"  # noqa: S608 - our columns
        where, args = [], []
        if chunk is not None:
            where.append("chunk = ?")
            args.append(chunk)
        if undeleted:
            where.append("deleted_at IS NULL")
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._query(sql + " ORDER BY created_at, rowid", args)
        return [FileRecord(*row) for row in rows]

    # -- writing -------------------------------------------------------------------

    def add_chunks(self, new: Iterable[NewChunk]) -> list[ChunkRecord]:
        """Record new chunks and their keys, all in one transaction (step 1).

        A chunk that exists and is live is left as it is; one that is done or
        abandoned starts over as *planned* (its attempt count and file id kept).
        """
        now = self._clock()
        names: list[str] = []
        with self._lock:
            db = self._db
            with _transaction(db):
                for c in new:
                    names.append(c.chunk)
                    db.execute(
                        "INSERT INTO batch_chunks (chunk, host, deployment, file_name, "
                        "lines, bytes, tokens, phase, created_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, 'planned', ?, ?) "
                        "ON CONFLICT (chunk) DO UPDATE SET phase = 'planned', "
                        "batch_id = NULL, status = NULL, error = NULL, "
                        "updated_at = excluded.updated_at "
                        "WHERE batch_chunks.phase IN ('done', 'abandoned')",
                        (
                            c.chunk,
                            c.host,
                            c.deployment,
                            c.file_name,
                            c.lines,
                            c.bytes,
                            c.tokens,
                            now,
                            now,
                        ),
                    )
                    db.executemany(
                        "INSERT OR IGNORE INTO batch_chunk_keys (chunk, line, key) "
                        "VALUES (?, ?, ?)",
                        ((c.chunk, i, key) for i, key in enumerate(c.keys)),
                    )
        records = [self.chunk(name) for name in names]
        return [r for r in records if r is not None]

    def uploading(self, chunk: str) -> None:
        """The file of ``chunk`` is about to be uploaded (step 2)."""
        self._set(chunk, phase="uploading")

    def uploaded(self, chunk: str, file_id: str) -> None:
        """The file of ``chunk`` was uploaded as ``file_id`` (or found on the server)."""
        self._set(chunk, phase="uploaded", file_id=file_id)
        self.file_made(chunk, file_id, "input")

    def file_made(
        self, chunk: str, file_id: str, kind: FileKind, batch_id: str | None = None
    ) -> None:
        """Record a file of ``chunk`` on the server (once; a known file is left as is)."""
        now = self._clock()
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO batch_files (file_id, chunk, kind, batch_id, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (file_id, chunk, kind, batch_id, now, now),
            )

    def file_deleted(self, file_id: str, outcome: str = "deleted") -> None:
        """The file ``file_id`` was deleted (or found gone): never delete it again.

        An input file is also forgotten by its chunk, so a rerun cutting the same
        chunk again uploads it anew instead of looking for it.
        """
        now = self._clock()
        with self._lock:
            db = self._db
            with _transaction(db):
                db.execute(
                    "UPDATE batch_files SET deleted_at = ?, outcome = ?, "
                    "updated_at = ? WHERE file_id = ?",
                    (now, outcome, now, file_id),
                )
                db.execute(
                    "UPDATE batch_chunks SET file_id = NULL, updated_at = ? "
                    "WHERE file_id = ? AND phase IN ('done', 'abandoned')",
                    (now, file_id),
                )

    def file_not_deleted(self, file_id: str, why: str) -> None:
        """Deleting ``file_id`` failed (``why``): a later cleanup tries again."""
        with self._lock:
            self._db.execute(
                "UPDATE batch_files SET outcome = ?, updated_at = ? WHERE file_id = ?",
                (why[:500], self._clock(), file_id),
            )

    def reupload(self, chunk: str, reason: str) -> None:
        """The file of ``chunk`` is gone or broken: upload it again."""
        self._set(chunk, phase="planned", file_id=None, error=reason)

    def creating(self, chunk: str) -> int:
        """A batch is about to be created for ``chunk`` (step 3); returns its attempt.

        Called again while *creating* (a rerun), it returns the same attempt.
        """
        with self._lock:
            db = self._db
            with _transaction(db):
                row = db.execute(
                    "SELECT phase, attempt FROM batch_chunks WHERE chunk = ?", (chunk,)
                ).fetchone()
                if row is None:
                    raise KeyError(chunk)  # rolled back by _transaction
                phase, attempt = str(row[0]), int(row[1])
                if phase != "creating":
                    attempt += 1
                    db.execute(
                        "UPDATE batch_chunks SET phase = 'creating', attempt = ?, "
                        "batch_id = NULL, status = NULL, updated_at = ? WHERE chunk = ?",
                        (attempt, self._clock(), chunk),
                    )
        return attempt

    def submitted(self, chunk: str, batch_id: str, status: str | None) -> None:
        """The batch ``batch_id`` was created for ``chunk`` (or found on the server)."""
        now = self._clock()
        with self._lock:
            db = self._db
            with _transaction(db):
                db.execute(
                    "UPDATE batch_chunks SET phase = 'submitted', batch_id = ?, "
                    "status = ?, error = NULL, updated_at = ? WHERE chunk = ?",
                    (batch_id, status, now, chunk),
                )
                db.execute(
                    "INSERT INTO batch_jobs (batch_id, chunk, attempt, status, "
                    "created_at, updated_at) SELECT ?, chunk, attempt, ?, ?, ? "
                    "FROM batch_chunks WHERE chunk = ? ON CONFLICT (batch_id) DO "
                    "UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
                    (batch_id, status, now, now, chunk),
                )

    def seen(self, chunk: str, batch_id: str, status: str) -> None:
        """The batch of ``chunk`` was last seen with ``status`` (step 4)."""
        now = self._clock()
        with self._lock:
            self._db.execute(
                "UPDATE batch_chunks SET status = ?, updated_at = ? "
                "WHERE chunk = ? AND batch_id = ?",
                (status, now, chunk, batch_id),
            )
            self._db.execute(
                "UPDATE batch_jobs SET status = ?, updated_at = ? WHERE batch_id = ?",
                (status, now, batch_id),
            )

    def requeue(self, chunk: str, reason: str) -> None:
        """The batch of ``chunk`` was refused for now: create another from its file."""
        self._set(chunk, phase="uploaded", batch_id=None, error=reason)

    def done(self, chunk: str, status: str, error: str | None = None) -> None:
        """The batch of ``chunk`` ended and its results were handed over (step 5)."""
        self._set(chunk, phase="done", status=status, error=error)

    def abandon(self, chunk: str, reason: str) -> None:
        """``chunk`` was never uploaded and will not be: forget it."""
        self._set(chunk, phase="abandoned", error=reason)

    def _set(self, chunk: str, **fields: Any) -> None:
        fields["updated_at"] = self._clock()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._lock:
            cursor = self._db.execute(
                f"UPDATE batch_chunks SET {assignments} WHERE chunk = ?",  # noqa: S608 - names are ours
                (*fields.values(), chunk),
            )
        if cursor.rowcount != 1:
            raise KeyError(chunk)

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, tuple(args)).fetchall())


@dataclasses.dataclass
class _Gate:
    """The process's turn at one batch state file, and the thread whose job has it."""

    turn: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    owner: int | None = None


_GATES: dict[str, _Gate] = {}
_GATES_LOCK = threading.Lock()


@dataclasses.dataclass
class _HeldBatchLock:
    """The file lock of a batch state and this process's turn at it, released together."""

    file_lock: FileLock
    gate: _Gate

    def release(self) -> None:
        try:
            self.file_lock.release()
        finally:
            self.gate.owner = None
            self.gate.turn.release()


def _batch_lock(path: Path, *, wait: bool = True) -> _HeldBatchLock:
    """Take ``path`` for one job's batches, or raise :class:`CacheError` naming who has it.

    Another process's job is refused. Another job of this process, in another thread
    (two batch-mode expressions of one eager ``select`` run at once), is waited for
    (``wait``): its batches end, then this job finds their answers in the cache.
    """
    with _GATES_LOCK:
        gate = _GATES.setdefault(os.path.realpath(path), _Gate())
    me = threading.get_ident()
    if not gate.turn.acquire(blocking=False):
        if gate.owner == me or not wait:
            raise _busy(path, "another job of this process") from None
        logger.info(
            "cache %s: another job of this process runs its batches: waiting", path
        )
        gate.turn.acquire()
    gate.owner = me
    lock = FileLock(path.with_name(path.name + ".batch-lock"), what=f"cache {path}")
    try:
        lock.acquire()
    except BaseException as exc:
        gate.owner = None
        gate.turn.release()
        if isinstance(exc, FileBusyError):
            who = f"another job ({exc.holder})" if exc.holder else ""
            raise _busy(path, who) from None
        if isinstance(exc, OSError):
            msg = f"cache {path}: cannot write {lock.lock_path} ({exc.strerror or exc})"
            raise CacheError(msg) from None
        raise
    return _HeldBatchLock(lock, gate)


def _busy(path: Path, who: str) -> CacheError:
    lock_path = path.with_name(path.name + ".batch-lock")
    return CacheError(
        f"cache {path}: its batches are being run by {who or 'another job'}, which "
        f"holds {lock_path}; wait for it to end or stop it (two jobs on one batch "
        "state would submit the same rows twice)"
    )


def check_batch_lock(path: str | os.PathLike[str]) -> None:
    """Raise :class:`CacheError` if another job runs the batches of ``path``.

    A check at the start of a job (the store takes the lock itself when opened).

    Parameters
    ----------
    path
        The batch state's file (a job's cache file).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "c.sqlite"
    >>> with BatchStateStore(path):
    ...     try:
    ...         check_batch_lock(path)
    ...     except CacheError as exc:
    ...         print("refused:", "this process" in str(exc))
    refused: True
    >>> check_batch_lock(path)  # closed: free
    """
    p = Path(path)
    if p.parent.is_dir():
        _batch_lock(p, wait=False).release()


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: committed, or rolled back if anything is raised.

    A Ctrl-C may land anywhere, also just after ``COMMIT``: there is then nothing
    to roll back, and the interrupt goes on as it is (a ``ROLLBACK`` outside a
    transaction would replace it with an ``OperationalError``).
    """
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _chunk(row: tuple[Any, ...]) -> ChunkRecord:
    return ChunkRecord(*row)
