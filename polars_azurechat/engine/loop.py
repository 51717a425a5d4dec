"""The one background event loop of the process. Not meant for outside use.

Every job's requests run on one asyncio loop on one daemon thread, started on first use:
however many expressions a user builds, there is one thread, and a job's connection pool
(which belongs to the loop) stays open across its chunks and collects. Callers on other
threads (Polars' threads, the CLI, plain Python) hand it coroutines and wait. A forked
child starts its own loop on first use.

At interpreter exit the loop is shut down in order (:func:`_shutdown`): the closers
registered with :func:`on_exit` run first (they close connection pools on the loop),
then what still runs on it is cancelled, the loop stops, what was registered with
:func:`after_stop` runs (the Ctrl-C watch closes its sockets) and the loop is closed:
no socket is left for the garbage collector to warn about.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["call", "loop", "on_exit", "submit"]

T = TypeVar("T")
logger = logging.getLogger(__name__)

#: re-entrant: the garbage collector may run a job's finalizer (which closes on the
#: loop, so asks for it) on this thread while it holds the lock
_lock = threading.RLock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
#: finalizers to run at exit before the loop stops (one that ran already is dead and
#: holds nothing: it is dropped at the next registration)
_closers: set[weakref.finalize[Any, Any]] = set()
#: guards ``_closers`` only: a finalizer the collector runs while it is held never
#: takes it (it takes ``_lock``; one lock for both deadlocked the test suite)
_closers_lock = threading.Lock()
#: what runs at exit once the loop has stopped, before it is closed
_after_stop: list[Callable[[asyncio.AbstractEventLoop], None]] = []
#: how long exit waits for the loop's thread to stop
STOP_WAIT_S = 2.0


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
            if _loop is None:  # the first loop of this process
                atexit.register(_shutdown)
            _loop, _thread = new, thread
        return _loop


def on_exit(finalizer: weakref.finalize[Any, Any]) -> None:
    """Run ``finalizer`` at exit while the loop still runs.

    It runs once whichever comes first: its object's collection, an explicit close, this
    exit hook or the interpreter's own finalizer hook (which then finds it dead).
    """
    with _closers_lock:
        _closers.difference_update([f for f in _closers if not f.alive])
        _closers.add(finalizer)


def after_stop(callback: Callable[[asyncio.AbstractEventLoop], None]) -> None:
    """Run ``callback(loop)`` at exit once the loop has stopped (not yet closed)."""
    if callback not in _after_stop:
        _after_stop.append(callback)


def _shutdown() -> None:
    """At exit: run the closers, stop the loop, wait for its thread, close it."""
    with _closers_lock:
        closers = list(_closers)
    for closer in closers:
        try:
            closer()
        except Exception:  # exit goes on: there is nobody left to tell
            logger.debug("closing at exit failed", exc_info=True)
    running, thread = _loop, _thread
    if running is None or thread is None or not thread.is_alive():
        return
    try:
        asyncio.run_coroutine_threadsafe(_drain(), running).result(STOP_WAIT_S)
    except Exception:
        logger.debug("draining the loop at exit failed", exc_info=True)
    running.call_soon_threadsafe(running.stop)
    thread.join(STOP_WAIT_S)
    if thread.is_alive() or running.is_closed():
        return
    for callback in _after_stop:
        try:
            callback(running)
        except Exception:
            logger.debug("closing at exit failed", exc_info=True)
    running.close()


async def _drain() -> None:
    """Cancel what still runs on the loop and let it end (a sampler, a pool's cleanup)."""
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not me]
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


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
        logger.debug("closing failed", exc_info=True)


def _forget_after_fork() -> None:
    global _loop, _thread, _lock, _closers_lock
    _loop = _thread = None
    _lock = threading.RLock()
    _closers_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
