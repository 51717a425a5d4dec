"""Ctrl-C (and SIGTERM) reach running jobs at once. Not meant for outside use.

Python runs signal handlers on the main thread, between bytecodes. When Polars answers a
query on its own threads, the main thread waits inside Polars and the handler runs only
once the query is over: a job would go on sending every request. But the C-level handler
writes the signal number to the *wakeup fd* at once, whatever the main thread is doing.
:func:`install` (from the main thread) points the wakeup fd at a socket the background
loop reads: on SIGINT or SIGTERM every running job is interrupted (admission stops;
the answers of the requests in flight are awaited for a short grace,
:data:`~polars_azurechat.engine.runs.STOP_GRACE_S`, and kept in the cache; a second
signal cancels them at once) and the threads waiting for them raise
:class:`KeyboardInterrupt`. Bytes are passed on to a
wakeup fd installed before ours, so whoever relied on it still gets them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import weakref
from typing import Protocol

from polars_azurechat.engine import loop as _loop

__all__ = ["install", "register"]

logger = logging.getLogger(__name__)

_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
_lock = threading.Lock()
_previous_fd = -1
_sockets: tuple[socket.socket, socket.socket] | None = None
_listeners: weakref.WeakSet[_Listener] = weakref.WeakSet()


class _Listener(Protocol):
    """An object told about interrupts (the engine); kept weakly."""

    def interrupt(self, reason: str) -> None: ...


def register(listener: _Listener) -> None:
    """Tell ``listener.interrupt(reason)`` (on the loop) when Ctrl-C or SIGTERM arrives."""
    _listeners.add(listener)


def install() -> None:
    """Watch for SIGINT/SIGTERM through the wakeup fd (main thread only; idempotent).

    If someone else's wakeup fd is in place, ours replaces it and passes bytes on.
    """
    global _previous_fd, _sockets
    if threading.current_thread() is not threading.main_thread():
        return
    with _lock:
        if _sockets is None:
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            _sockets = (reader, writer)
            loop = _loop.loop()
            loop.call_soon_threadsafe(loop.add_reader, reader.fileno(), _on_wakeup)
            _loop.after_stop(_uninstall)
        ours = _sockets[1].fileno()
        try:
            previous = signal.set_wakeup_fd(ours, warn_on_full_buffer=False)
        except ValueError:  # pragma: no cover - not the main interpreter
            return
        if previous != ours:
            _previous_fd = previous


def _on_wakeup() -> None:
    assert _sockets is not None  # noqa: S101 - only registered once they exist
    try:
        data = _sockets[0].recv(4096)
    except BlockingIOError:
        return
    if _previous_fd >= 0:
        with contextlib.suppress(OSError):
            os.write(_previous_fd, data)
    for b in data:  # once per signal: the second stops a stopping job at once
        if b not in _SIGNALS:
            continue
        reason = "SIGTERM" if b == signal.SIGTERM else "Ctrl-C"
        for listener in list(_listeners):
            try:
                listener.interrupt(reason)
            except Exception:
                logger.exception("interrupting a job failed")


def _uninstall(loop: asyncio.AbstractEventLoop) -> None:
    """At exit, the loop stopped: put back the wakeup fd we found, close our sockets."""
    global _sockets, _previous_fd
    with _lock:
        if _sockets is None:
            return
        reader, writer = _sockets
        loop.remove_reader(reader.fileno())
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError):
                now = signal.set_wakeup_fd(_previous_fd)
                if now != writer.fileno():  # somebody replaced ours: theirs stays
                    signal.set_wakeup_fd(now)
        reader.close()
        writer.close()
        _sockets, _previous_fd = None, -1


def _forget_after_fork() -> None:
    global _sockets, _lock, _previous_fd
    _sockets = None
    _previous_fd = -1
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
