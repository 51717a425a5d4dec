"""A batch-mode run's rows, requests and results on disk. Not meant for outside use.

Batch mode answers a whole column (or a whole Parquet file) as one set of Azure
batches, and nothing of it may grow with the rows in memory: a million rows held as
Python objects took a gigabyte. So a run keeps them in a :class:`Spool`, a temporary
SQLite file (deleted when the run ends) with three tables:

``rows``
    one row per input row, in order: its request's cache key (``NULL`` for a null
    row), or the result of a row that cannot be sent;
``req``
    one row per distinct request (the cache key, ``WITHOUT ROWID``, so a scan is in
    key order): the input row that asked it first (the *leader*; later rows asking it
    follow), its JSONL line (``NULL`` when it is not to be sent: a cache hit, a row
    over the spending cap), its prompt tokens, the worst case held under the cap, and
    the chunk it was put in;
``res``
    one row per answered request: how it was answered (:data:`HIT`, :data:`DOOR`,
    :data:`BATCH`, :data:`ONLINE`), whether ``batch_fallback="online"`` may send it
    again, and the :class:`~polars_azurechat._types.ChatResult`, pickled.

The chunker reads the lines in key order a page at a time, the submitter writes one
chunk's file from it, results are written a batch at a time, and the rows are read
back a slice at a time: memory follows a slice and a batch file, never the run. The
file has no journal and is not synced (it is rebuilt by a rerun, never resumed from).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, Self

from polars_azurechat._types import ChatResult
from polars_azurechat.errors import AzureChatError

__all__ = ["BATCH", "DOOR", "HIT", "ONLINE", "Spool", "SpooledRow"]

logger = logging.getLogger(__name__)

#: How a request was answered: a cache hit at the door, an error at the door (the
#: spending cap), a batch's line (or the batch's error), online (``batch_fallback``).
HIT, DOOR, BATCH, ONLINE = 1, 2, 3, 4

#: Keys per ``IN (...)`` list (SQLite allows 32,766 parameters).
_IN = 900

_SCHEMA = """
CREATE TABLE rows (row INTEGER PRIMARY KEY, key TEXT, result BLOB);
CREATE TABLE req (
    key TEXT PRIMARY KEY,
    row INTEGER NOT NULL,
    line BLOB,
    tokens INTEGER NOT NULL DEFAULT 0,
    held REAL,
    chunk TEXT
) WITHOUT ROWID;
CREATE INDEX req_by_chunk ON req (chunk);
CREATE TABLE res (
    key TEXT PRIMARY KEY,
    kind INTEGER NOT NULL,
    again INTEGER NOT NULL DEFAULT 0,
    result BLOB
) WITHOUT ROWID;
CREATE INDEX res_again ON res (again) WHERE again = 1;
"""


_PUT = (
    "INSERT OR REPLACE INTO res (key, kind, again, result) "
    "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM req WHERE key = ?)"
)
_PUT_SENT = (
    "INSERT OR REPLACE INTO res (key, kind, again, result) SELECT ?, ?, ?, ? "
    "WHERE EXISTS (SELECT 1 FROM req WHERE key = ? AND line IS NOT NULL)"
)


class Writable(Protocol):
    """Where a chunk's lines are written (a file, or nowhere to only hash them)."""

    def write(self, data: bytes, /) -> int:
        """Write ``data``; the number of bytes written."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class SpooledRow:
    """One input row as read back: its key, whether it leads, and its result."""

    key: str | None
    #: the first row asking this key (``False``: a later row, a follower)
    leader: bool
    #: how its request was answered (:data:`HIT`, ...), ``None`` for a row without key
    kind: int | None
    result: ChatResult | None


class Spool:
    """One run's rows, distinct requests and results in a temporary SQLite file.

    Parameters
    ----------
    directory
        Where the temporary directory goes (default: the system's).
    cache_mb
        SQLite's page cache, in MB (a constant: it does not grow with the rows).
    """

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, *, cache_mb: int = 16
    ) -> None:
        self.dir = Path(
            tempfile.mkdtemp(prefix="polars-azurechat-batch-", dir=directory)
        )
        self.path = self.dir / "spool.sqlite"
        self.rows = 0
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        db = self._db
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA temp_store=FILE")
        db.execute(f"PRAGMA cache_size=-{int(cache_mb) * 1024}")
        db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the file and delete it (and every chunk file written beside it)."""
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- pass 1: the rows and their requests ---------------------------------------------

    def add_rows(self, rows: Sequence[tuple[str | None, ChatResult | None]]) -> int:
        """Append input rows (``(key, None)``, ``(None, error result)`` or ``(None, None)``).

        Returns the number of the first (rows are numbered from 0, in order).
        """
        first = self.rows
        with self._transaction():
            self._db.executemany(
                "INSERT INTO rows (row, key, result) VALUES (?, ?, ?)",
                (
                    (first + i, key, None if r is None else dump(r))
                    for i, (key, r) in enumerate(rows)
                ),
            )
        self.rows += len(rows)
        return first

    def known(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` already spooled (asked by an earlier row)."""
        return {
            str(row[0]) for row in self._in("SELECT key FROM req WHERE key IN", keys)
        }

    def add_requests(
        self, requests: Iterable[tuple[str, int, bytes | None, int, float | None]]
    ) -> None:
        """Record distinct requests: ``(key, first row, line or None, tokens, held)``."""
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO req (key, row, line, tokens, held) "
                "VALUES (?, ?, ?, ?, ?)",
                requests,
            )

    # -- planning and submitting ------------------------------------------------------

    def count(self, kind: int) -> int:
        """How many requests were answered ``kind`` (:data:`HIT`, ...)."""
        row = self._db.execute("SELECT count(*) FROM res WHERE kind = ?", (kind,))
        return int(row.fetchone()[0])

    def to_send(self) -> int:
        """How many requests are to be sent and not answered yet."""
        row = self._db.execute(
            "SELECT count(*) FROM req WHERE line IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM res WHERE res.key = req.key)"
        ).fetchone()
        return int(row[0])

    def wanted(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` this run sends (a line, no result yet)."""
        return {
            str(row[0])
            for row in self._in(
                "SELECT key FROM req WHERE line IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM res WHERE res.key = req.key) AND key IN",
                keys,
            )
        }

    def hits(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` answered from the cache at the door."""
        return {
            str(row[0])
            for row in self._in(
                "SELECT key FROM res WHERE kind = 1 AND key IN",
                keys,  # 1: HIT
            )
        }

    def unassigned(self, after: str | None, limit: int) -> list[tuple[str, bytes, int]]:
        """Up to ``limit`` requests to send that no chunk holds, after ``after``, by key."""
        rows = self._db.execute(
            "SELECT key, line, tokens FROM req WHERE key > ? AND line IS NOT NULL "
            "AND chunk IS NULL AND NOT EXISTS (SELECT 1 FROM res WHERE res.key = req.key) "
            "ORDER BY key LIMIT ?",
            (after or "", limit),
        ).fetchall()
        return [(str(k), bytes(line), int(t)) for k, line, t in rows]

    def assign(self, chunk: str, keys: Iterable[str]) -> None:
        """Put ``keys`` (those this run sends) in ``chunk``."""
        with self._transaction():
            for part in _parts(keys):
                marks = ",".join("?" * len(part))
                self._db.execute(
                    f"UPDATE req SET chunk = ? WHERE line IS NOT NULL AND key IN ({marks})",  # noqa: S608 - marks only
                    (chunk, *part),
                )

    def assign_range(self, chunk: str, first: str, last: str) -> None:
        """Put the unassigned requests to send from ``first`` to ``last`` in ``chunk``."""
        with self._transaction():
            self._db.execute(
                "UPDATE req SET chunk = ? WHERE key BETWEEN ? AND ? AND line IS NOT NULL "
                "AND chunk IS NULL AND NOT EXISTS (SELECT 1 FROM res WHERE res.key = req.key)",
                (chunk, first, last),
            )

    def chunk_keys(self, chunk: str) -> Iterator[str]:
        """The keys of ``chunk`` in this run, in key order (read as they are needed)."""
        after = ""
        while True:
            page = self._db.execute(
                "SELECT key FROM req WHERE chunk = ? AND key > ? ORDER BY key LIMIT 4096",
                (chunk, after),
            ).fetchall()
            if not page:
                return
            for (key,) in page:
                yield str(key)
            after = str(page[-1][0])

    def write_lines(self, keys: Sequence[str], out: Writable, digest: Any) -> bool:
        """Write the lines of ``keys`` to ``out`` in that order (and into ``digest``).

        Returns ``False`` if this run does not hold a line for every key.
        """
        for start in range(0, len(keys), _IN):
            part = keys[start : start + _IN]
            lines = {
                str(k): bytes(line)
                for k, line in self._in(
                    "SELECT key, line FROM req WHERE line IS NOT NULL AND key IN", part
                )
            }
            for key in part:
                line = lines.get(key)
                if line is None:
                    return False
                out.write(line)
                digest.update(line)
        return True

    def temp_file(self) -> IO[bytes]:
        """A new temporary file beside the spool (deleted when closed)."""
        return tempfile.TemporaryFile(dir=self.dir)

    # -- results ---------------------------------------------------------------------------

    def put_results(
        self,
        results: Mapping[str, ChatResult],
        kind: int,
        *,
        again: Callable[[ChatResult], bool] | None = None,
    ) -> None:
        """Record the results of requests this run asks (others are left out).

        A batch's or an online answer is kept only for a request this run sends: a
        chunk of an earlier run may hold a request this run found in the cache.
        """
        sql = _PUT_SENT if kind in (BATCH, ONLINE) else _PUT
        with self._transaction():
            self._db.executemany(
                sql,
                (
                    (key, kind, again is not None and again(r), dump(r), key)
                    for key, r in results.items()
                ),
            )

    def held(self, keys: Iterable[str]) -> dict[str, float]:
        """The worst cases still held under the cap for ``keys``; they are let go here."""
        out = {
            str(k): float(h)
            for k, h in self._in(
                "SELECT key, held FROM req WHERE held IS NOT NULL AND key IN", keys
            )
        }
        if out:
            with self._transaction():
                self._db.executemany(
                    "UPDATE req SET held = NULL WHERE key = ?", ((k,) for k in out)
                )
        return out

    def all_held(self) -> Iterator[float]:
        """Every worst case still held (the requests that never reached a batch)."""
        after = ""
        while True:
            page = self._db.execute(
                "SELECT key, held FROM req WHERE held IS NOT NULL AND key > ? "
                "ORDER BY key LIMIT 4096",
                (after,),
            ).fetchall()
            if not page:
                return
            for _, h in page:
                yield float(h)
            after = str(page[-1][0])

    def again(self, limit: int) -> list[tuple[str, bytes]]:
        """Up to ``limit`` requests ``batch_fallback="online"`` sends: key and line.

        Each is marked as taken (``again`` cleared) as it is read.
        """
        rows = self._db.execute(
            "SELECT res.key, req.line FROM res JOIN req ON req.key = res.key "
            "WHERE res.again = 1 ORDER BY res.key LIMIT ?",
            (limit,),
        ).fetchall()
        with self._transaction():
            self._db.executemany(
                "UPDATE res SET again = 0 WHERE key = ?", ((k,) for k, _ in rows)
            )
        return [(str(k), bytes(line)) for k, line in rows]

    def count_again(self) -> int:
        """How many requests ``batch_fallback="online"`` sends."""
        return int(
            self._db.execute("SELECT count(*) FROM res WHERE again = 1").fetchone()[0]
        )

    def results(self, keys: Iterable[str]) -> dict[str, ChatResult]:
        """The results recorded for ``keys`` (those answered so far)."""
        return {
            str(k): load(blob)
            for k, blob in self._in("SELECT key, result FROM res WHERE key IN", keys)
            if blob is not None
        }

    def all_results(
        self, kinds: Sequence[int] = (DOOR, BATCH, ONLINE)
    ) -> dict[str, ChatResult]:
        """Every result of ``kinds`` (for callers that hold the run in memory)."""
        marks = ",".join(str(int(k)) for k in kinds)
        rows = self._db.execute(
            f"SELECT key, result FROM res WHERE kind IN ({marks}) AND result IS NOT NULL"  # noqa: S608 - ints
        )
        return {str(k): load(blob) for k, blob in rows}

    # -- pass 2: the rows back ------------------------------------------------------------

    def read_rows(self, first: int, n: int) -> list[SpooledRow]:
        """Rows ``first`` to ``first + n - 1``, each with its request's result."""
        rows = self._db.execute(
            "SELECT rows.row, rows.key, rows.result, req.row, res.kind, res.result "
            "FROM rows LEFT JOIN req ON req.key = rows.key "
            "LEFT JOIN res ON res.key = rows.key "
            "WHERE rows.row >= ? AND rows.row < ? ORDER BY rows.row",
            (first, first + n),
        ).fetchall()
        if len(rows) != n:
            msg = f"the spool holds {len(rows)} of rows {first}..{first + n - 1}"
            raise AzureChatError(msg)
        out = []
        for row, key, own, leader_row, kind, blob in rows:
            if key is None:
                out.append(
                    SpooledRow(None, True, None, None if own is None else load(own))
                )
            else:
                out.append(
                    SpooledRow(
                        str(key),
                        leader_row == row,
                        None if kind is None else int(kind),
                        None if blob is None else load(blob),
                    )
                )
        return out

    # -- helpers ------------------------------------------------------------------------

    def _in(self, sql: str, keys: Iterable[str]) -> Iterator[tuple[Any, ...]]:
        """``sql (?, ?, ...)`` over ``keys``, a few hundred at a time."""
        for part in _parts(keys):
            marks = ",".join("?" * len(part))
            yield from self._db.execute(f"{sql} ({marks})", part)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _parts(keys: Iterable[str]) -> Iterator[list[str]]:
    part: list[str] = []
    for key in keys:
        part.append(key)
        if len(part) == _IN:
            yield part
            part = []
    if part:
        yield part


def dump(result: ChatResult) -> bytes:
    """A result as bytes (an exception that does not round-trip keeps its message)."""
    blob = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    if result.exception is not None:
        try:
            pickle.loads(blob)  # noqa: S301 - our own bytes, this process
        except Exception:  # noqa: BLE001 - any exception class a user's code raised
            kept = AzureChatError(
                f"{type(result.exception).__name__}: {result.exception}"
            )
            blob = pickle.dumps(
                dataclasses.replace(result, exception=kept),
                protocol=pickle.HIGHEST_PROTOCOL,
            )
    return blob


def load(blob: bytes) -> ChatResult:
    """A result :func:`dump` wrote."""
    result = pickle.loads(blob)  # noqa: S301 - our own bytes, written by this process
    assert isinstance(result, ChatResult)  # noqa: S101 - our own bytes
    return result
