"""What the answer caches share: answers queued by the loop, written by a thread. Internal.

The event loop never waits on the store. :meth:`BufferedCache.put` queues an answer and
``flush(wait=False)`` hands the queue to the cache's writer thread (started on first
use), which writes it in one go. A caller off the loop (the thread waiting for a batch,
batch mode, a test) may ``flush()`` and wait until what it handed over is written.

A *busy* store is not a broken one. When SQLite's write lock is held by another
connection (``database is locked``), the writer keeps the answers and tries again with
backoff (:data:`RETRY_FIRST_S` doubling to :data:`RETRY_MAX_S`), and the cache says so
(:attr:`BufferedCache.busy`, :attr:`BufferedCache.waiting`); answers waiting for it are
still served by :meth:`get_many` in this process. Only another error (disk full, the
file changed under it, Redis gone) breaks the cache: one warning, and the run goes on
without it (:attr:`BufferedCache.broken`).

:meth:`BufferedCache.close` waits up to ``close_wait_s`` (:data:`CLOSE_WAIT_S`) for
answers still waiting on a busy store; what is still waiting then is not written: one
warning says how many, and :attr:`BufferedCache.lost` counts them (a rerun sends those
requests again).
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, ClassVar, Generic, TypeVar

from polars_azurechat._types import ChatResult

__all__ = ["CLOSE_WAIT_S", "RETRY_FIRST_S", "RETRY_MAX_S", "BufferedCache"]

#: How long :meth:`BufferedCache.close` waits for a busy store to take what is waiting.
CLOSE_WAIT_S = 10.0
#: The writer's first wait after a busy store, doubled after each busy attempt ...
RETRY_FIRST_S = 0.01
#: ... up to this.
RETRY_MAX_S = 0.5
#: How often a waiting ``flush`` wakes up (so a signal reaches its thread).
_WAIT_SLICE_S = 0.25

Row = TypeVar("Row")


class BufferedCache(abc.ABC, Generic[Row]):
    """Answers queued on the loop, written by one writer thread, never raising.

    A subclass turns an answer into a row (:meth:`put` calls :meth:`_add`) and says how
    to open the writer's handle (:meth:`_open_writer`, on the writer thread), write rows
    with it (:meth:`_write`), close it (:meth:`_close_writer`), tell a busy store
    (:meth:`_is_busy`), read a queued row back (:meth:`_result`), count the answers
    (:meth:`_count`), let go of its reader on a break (:meth:`_let_go`) and disconnect
    (:meth:`_disconnect`).

    Parameters
    ----------
    close_wait_s
        How long :meth:`close` waits for a busy store to take the answers still
        waiting for it.

    Attributes
    ----------
    broken
        None while the cache works; the one-line reason once it failed during a run.
    busy
        None while writes go through; while the store refuses them for now (its lock
        is held elsewhere), the one-line reason. Cleared by the next write that goes.
    lost
        Answers given up at :meth:`close` because the store stayed busy.
    hurry
        Set when the job was interrupted (Ctrl-C, SIGTERM): :meth:`close` still waits
        for the answers to be written, but not for the store's housekeeping after
        them (SQLite's checkpoint, two disk syncs that a slow disk can make seconds
        long); the next open does it.
    """

    #: the logger of the subclass's module (its warnings are its own)
    _log: ClassVar[logging.Logger] = logging.getLogger(__name__)

    def __init__(self, *, close_wait_s: float = CLOSE_WAIT_S) -> None:
        self.broken: str | None = None
        self.busy: str | None = None
        self.lost = 0
        self.hurry = False
        self.close_wait_s = close_wait_s
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        #: put, not yet flushed
        self._pending: list[tuple[str, Row]] = []
        #: flushed, not yet written (the writer's current batch included), by key
        self._queued: dict[str, Row] = {}
        #: handovers so far, and the last one the writer has written
        self._handed = 0
        self._written = 0
        self._busy_since: float | None = None
        self._retry_now = False
        self._close_warned = False
        self._closed = False
        self._deadline: float | None = None
        self._writer: threading.Thread | None = None

    # -- what a store says ----------------------------------------------------------------

    @abc.abstractmethod
    def _errors(self, *, writing: bool) -> tuple[type[Exception], ...]:
        """The errors of the store met in a write or a read (busy or broken)."""

    def _is_busy(self, error: Exception) -> bool:
        """Whether ``error`` says the store refuses writes for now (tried again)."""
        return False

    @abc.abstractmethod
    def _label(self) -> str:
        """How messages name the cache (``cache <where>``)."""

    def _problem(self, error: Exception) -> str:
        """A store error, in words for :attr:`broken`."""
        return str(error)

    def _scrub(self, text: str) -> str:
        """``text`` without secrets (a Redis password)."""
        return text

    @abc.abstractmethod
    def _open_writer(self) -> Any:
        """The writer's handle (a connection), opened on the writer thread."""

    @abc.abstractmethod
    def _write(self, handle: Any, rows: list[Row]) -> None:
        """Write ``rows`` at once with the writer's handle (nothing half-written)."""

    def _close_writer(self, handle: Any) -> None:
        """Close the writer's handle; never raises."""

    @abc.abstractmethod
    def _result(self, row: Row) -> ChatResult:
        """A queued row as the hit :meth:`get_many` gives."""

    @abc.abstractmethod
    def _count(self) -> int:
        """How many answers the store holds (the lock is held)."""

    def _let_go(self) -> None:
        """The cache broke: let go of the reader (the lock is held; never raises)."""

    @abc.abstractmethod
    def _disconnect(self) -> None:
        """Close the reader; never raises (the lock is held)."""

    # -- state -------------------------------------------------------------------------

    def _usable(self) -> bool:
        return self.broken is None and not self._closed

    @property
    def waiting(self) -> int:
        """Answers put but not yet written (handed to the writer, or not yet flushed)."""
        with self._lock:
            return len(self._pending) + len(self._queued)

    def busy_for_s(self) -> float:
        """Seconds the store has refused writes, or 0.0 while they go through."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def _break(self, problem: str) -> None:
        """Give up on the store: set :attr:`broken`, warn once (the lock is held)."""
        if self.broken is not None:
            return
        self.broken = self._scrub(f"{self._label()}: {problem}")
        self._pending = []
        self._queued.clear()
        self.busy = None
        self._busy_since = None
        self._let_go()
        self._cond.notify_all()
        self._log.warning("%s; the run goes on without the cache", self.broken)

    def _queued_hits(self, keys: Iterable[str]) -> dict[str, ChatResult]:
        """The answers among ``keys`` still waiting for the writer (the lock is held)."""
        queued = self._queued
        if not queued:
            return {}
        return {k: self._result(queued[k]) for k in keys if k in queued}

    # -- the loop's side ---------------------------------------------------------------

    def _add(self, key: str, row: Row) -> None:
        """Queue ``row`` (the answer of ``key``) for the next :meth:`flush`."""
        with self._lock:
            if self._usable():
                self._pending.append((key, row))

    def _hand_over(self) -> int:
        """Give the pending rows to the writer (the lock is held); the handover's number."""
        if self._pending and self._usable():
            for key, row in self._pending:
                self._queued[key] = row
            self._handed += 1
            writer = self._writer
            if writer is None or not writer.is_alive():
                self._writer = threading.Thread(
                    target=self._run,
                    name=f"polars-azurechat {self._label()}",
                    daemon=True,
                )
                self._writer.start()
            self._cond.notify_all()
        self._pending = []
        return self._handed

    def flush(self, *, wait: bool = True, busy_wait_s: float = 0.0) -> None:
        """Hand the queued answers to the writer; never raises.

        Parameters
        ----------
        wait
            ``False`` (the event loop): return at once. ``True``: wait until they are
            written, the cache breaks, or the store is busy for longer than
            ``busy_wait_s`` (they then stay queued and are tried again).
        busy_wait_s
            How long a waiting flush waits for a busy store.

        Notes
        -----
        A write that fails for another reason than a busy store logs one warning
        naming the cache and the problem and breaks the cache (see :attr:`broken`):
        the run goes on without it.
        """
        with self._cond:
            target = self._hand_over()
            if not wait:
                return
            deadline = time.monotonic() + busy_wait_s
            while self._written < target and self._usable():
                writer = self._writer
                if writer is None or not writer.is_alive():
                    return
                now = time.monotonic()
                if self.busy is not None and now >= deadline:
                    return
                slice_s = _WAIT_SLICE_S if self.busy is None else deadline - now
                self._cond.wait(min(_WAIT_SLICE_S, slice_s))

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        """The writer: write what is handed over; wait out a busy store; stop on close."""
        handle: Any = None
        delay = RETRY_FIRST_S
        try:
            while True:
                with self._cond:
                    while not self._queued and not self._closed and self.broken is None:
                        self._cond.wait()
                    if not self._queued or self.broken is not None:
                        return
                    batch = list(self._queued.items())
                    upto = self._handed
                try:
                    if handle is None:
                        handle = self._open_writer()
                    self._write(handle, [row for _, row in batch])
                except self._errors(writing=True) as e:
                    if not self._is_busy(e):
                        if handle is not None:
                            self._close_writer(handle)
                            handle = None
                        with self._cond:
                            self._break(f"cannot save answers ({self._problem(e)})")
                        return
                    if not self._wait_out_busy(e, delay):
                        return
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                delay = RETRY_FIRST_S
                self._written_ok(batch, upto)
        finally:
            if handle is not None:
                self._close_writer(handle)
            with self._cond:
                self._cond.notify_all()

    def _written_ok(self, batch: list[tuple[str, Row]], upto: int) -> None:
        with self._cond:
            for key, row in batch:
                if self._queued.get(key) is row:
                    del self._queued[key]
            self._written = upto
            if self.busy is not None:
                self._log.info(
                    "%s takes writes again after %.1f s",
                    self._label(),
                    self.busy_for_s(),
                )
                self.busy = None
                self._busy_since = None
            self._cond.notify_all()

    def _wait_out_busy(self, error: Exception, delay: float) -> bool:
        """The store is busy: say so and wait ``delay`` (less when closing); go on or not."""
        with self._cond:
            now = time.monotonic()
            if self.busy is None:
                self._busy_since = now
                self._log.info(
                    "%s: %s; %d answers wait and are written when it frees",
                    self._label(),
                    self._problem(error),
                    len(self._queued),
                )
            self.busy = self._scrub(f"{self._label()}: {self._problem(error)}")
            self._cond.notify_all()
            until = now + delay
            if self._deadline is not None:
                if now >= self._deadline:
                    return False  # closing, and the store stayed busy: close says it
                if not self._close_warned:  # the closing thread waits: say why
                    self._close_warned = True
                    self._log.warning(
                        "%s: waiting up to %.0f s for it to take %d answers",
                        self.busy,
                        self._deadline - now,
                        len(self._queued),
                    )
                until = min(until, self._deadline)
            while not self._retry_now and self.broken is None:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._retry_now = False
            return self.broken is None

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        """Write what is queued and disconnect (idempotent; never raises).

        Waits up to ``close_wait_s`` for a busy store. Answers still waiting then are
        given up: one warning says how many (a rerun sends those requests again) and
        :attr:`lost` counts them.
        """
        with self._cond:
            if self._closed:
                return
            self._hand_over()
            self._closed = True
            self._deadline = time.monotonic() + self.close_wait_s
            self._retry_now = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(self.close_wait_s + 1.0)
        with self._cond:
            left = len(self._queued)
            if left and self.broken is None:
                self.lost += left
                self._log.warning(
                    "%s for %.1f s; %d answers were not written (a rerun sends those "
                    "requests again)",
                    self.busy or f"{self._label()}: busy",
                    self.busy_for_s(),
                    left,
                )
            self._queued.clear()
            self._pending = []
            self._disconnect()

    def __len__(self) -> int:
        with self._lock:
            if not self._usable():
                return 0
            try:
                return self._count()
            except self._errors(writing=False) as e:
                if self._is_busy(e):
                    return 0
                self._break(f"cannot read answers ({self._problem(e)})")
                return 0
