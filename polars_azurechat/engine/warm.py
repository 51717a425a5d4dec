"""Loading what a job needs while the user's code goes on. Not meant for outside use.

``import polars_azurechat`` is lean: it loads neither aiohttp nor tenacity. A job
needs them, and importing them took about 0.15 s, paid by the first job of a process
(in a notebook, the user's first cell that answers anything). :func:`start`, called at
the end of the package's import, loads them on a daemon thread, so that by the time
a job is built they usually are; the import itself does not wait for it.

Set ``POLARS_AZURECHAT_PREWARM=0`` to turn it off. Before a fork, the thread is waited
for: a child must not inherit a module that is half imported.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading

__all__ = ["MODULES", "start", "wait"]

logger = logging.getLogger(__name__)

#: What a first job imports that costs time (aiohttp alone ~0.13 s: it builds its
#: default SSL contexts on import).
MODULES = ("aiohttp", "tenacity")
#: The environment variable that turns the prewarm off ("0").
ENV = "POLARS_AZURECHAT_PREWARM"

_started: list[threading.Thread] = []


def start() -> None:
    """Import :data:`MODULES` on a daemon thread (once per process)."""
    if _started or os.environ.get(ENV, "1") == "0":
        return
    thread = threading.Thread(
        target=_load, name="polars-azurechat-prewarm", daemon=True
    )
    _started.append(thread)
    os.register_at_fork(before=wait)
    thread.start()


def wait(timeout: float | None = None) -> None:
    """Wait until the prewarm is over (no-op if it never started)."""
    for thread in _started:
        if thread is not threading.current_thread():
            thread.join(timeout)


def _load() -> None:
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the job will say so when it needs it
            logger.debug("prewarm: %s not imported (%s)", name, exc)
