"""A SQLite cache of answered requests, so a rerun sends only what is missing.

Each answer is stored under the sha256 of canonical JSON (sorted keys) of what decides it:
endpoint host, deployment, api-version, messages and body parameters. The key never holds
the API key. Only answers are stored, never failures. Writes are transactions in WAL mode,
so a process killed at any moment leaves every committed answer readable; the file is
created owner-only (0600).
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
from pathlib import Path
from typing import Any

from polars_azurechat._types import ChatResult

__all__ = ["SqliteCache", "request_key"]

logger = logging.getLogger(__name__)

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
]


def request_key(
    *,
    host: str,
    deployment: str,
    api_version: str,
    messages: Sequence[Mapping[str, str]],
    params: Mapping[str, Any],
) -> str:
    """The cache key of one request: sha256 over canonical JSON of what decides the answer.

    Examples
    --------
    >>> a = request_key(
    ...     host="h",
    ...     deployment="d",
    ...     api_version="v",
    ...     messages=[],
    ...     params={"a": 1, "b": 2},
    ... )
    >>> a == request_key(
    ...     host="h",
    ...     deployment="d",
    ...     api_version="v",
    ...     messages=[],
    ...     params={"b": 2, "a": 1},
    ... )
    True
    """
    canonical = json.dumps(
        {
            "host": host,
            "deployment": deployment,
            "api_version": api_version,
            "messages": messages,
            "params": params,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class SqliteCache:
    """Answers stored in one SQLite file; safe to share between threads.

    Parameters
    ----------
    path
        The database file; created (owner-only) with its tables if missing.

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
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()
        self._pending: list[tuple[Any, ...]] = []

    def __repr__(self) -> str:
        return f"SqliteCache({str(self.path)!r})"

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)"
            )
            done = {row[0] for row in self._db.execute("SELECT name FROM _migrations")}
            for name, sql in _MIGRATIONS:
                if name in done:
                    continue
                self._db.execute("BEGIN")
                self._db.execute(sql)
                self._db.execute(
                    "INSERT INTO _migrations VALUES (?, ?)", (name, time.time())
                )
                self._db.execute("COMMIT")

    def get_many(self, keys: Iterable[str]) -> dict[str, ChatResult]:
        """Look up many keys at once; only the hits are returned."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, ChatResult] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT * FROM answers WHERE key IN ({marks})"  # noqa: S608
                rows = self._db.execute(query, chunk)
                for key, content, finish, prompt, completion, _ in rows:
                    out[key] = ChatResult(
                        content=content,
                        finish_reason=finish,
                        prompt_tokens=prompt,
                        completion_tokens=completion,
                        attempts=0,
                        cached=True,
                    )
        return out

    def put(self, key: str, result: ChatResult) -> None:
        """Queue an answer for writing (failures are refused); :meth:`flush` commits.

        The engine flushes once per event-loop turn, so a killed process loses at most
        the answers of the turn it died in.
        """
        if result.exception is not None:
            return
        self._pending.append(
            (
                key,
                result.content,
                result.finish_reason,
                result.prompt_tokens,
                result.completion_tokens,
                time.time(),
            )
        )

    def flush(self) -> None:
        """Commit queued answers in one transaction."""
        with self._lock:
            rows, self._pending = self._pending, []
            if not rows:
                return
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)", rows
            )
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        """Write what is queued and close the file."""
        self.flush()
        with self._lock:
            self._db.close()
