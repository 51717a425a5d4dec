"""The one background event loop of the process. Not meant for outside use.

Every job's requests run on one asyncio loop on one daemon thread, started on first use:
however many expressions a user builds, there is one thread, and a job's connection pool
(which belongs to the loop) stays open across its chunks and collects. Callers on other
threads (Polars' threads, the CLI, plain Python) hand it coroutines and wait. A forked
child starts its own loop on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["call", "loop", "submit"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def loop() -> asyncio.AbstractEventLoop:
    """The running background loop (started on first use)."""
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            new = asyncio.new_event_loop()
            thread = threading.Thread(
                target=new.run_forever, name="polars-azurechat-loop", daemon=True
            )
            thread.start()
            _loop, _thread = new, thread
        return _loop


def in_loop_thread() -> bool:
    """Whether the caller runs on the background loop's thread."""
    return _thread is not None and threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the loop; the future can be waited on from any thread."""
    return asyncio.run_coroutine_threadsafe(coro, loop())


def call(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the loop and wait for its result from this thread."""
    if in_loop_thread():  # pragma: no cover - a programming error, not a user's
        msg = "cannot wait on the background loop from its own thread"
        raise RuntimeError(msg)
    future = submit(coro)
    try:
        return future.result(timeout)
    except BaseException:
        future.cancel()
        raise


def close_soon(coro: Coroutine[Any, Any, None], timeout: float = 5.0) -> None:
    """Run a closing coroutine: waited for from other threads, scheduled on the loop's.

    Used by finalizers, which may run on any thread, the loop's included.
    """
    if in_loop_thread():
        asyncio.get_running_loop().create_task(coro)
        return
    if _loop is None or _thread is None or not _thread.is_alive():
        coro.close()  # never started: nothing is open
        return
    try:
        call(coro, timeout)
    except Exception:
        import logging

        logging.getLogger(__name__).debug("closing failed", exc_info=True)


def _forget_after_fork() -> None:
    global _loop, _thread, _lock
    _loop = _thread = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
