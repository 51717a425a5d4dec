"""Fewer garbage collections while a job runs. Not meant for outside use.

A job keeps every row's request and answer alive until its column is built, and makes
a few short-lived objects per request besides. Under CPython's default thresholds
(a young collection per 700 net allocations) that means a young collection every
few requests, and, as the survivors pile up in the old generations, full collections
that walk the whole heap (the process's Polars, pyarrow and openai modules included).
At 20,000 rows a job spent 15-17% of its time collecting (measured with
``gc.callbacks``, ``benchmarks/typed.py``'s job): with the young threshold at
:data:`YOUNG_THRESHOLD` it spends under 1%.

:func:`fewer_collections` raises the young generation's threshold while at least one
job runs, and puts back what it found when the last one ends, unless somebody else
changed the thresholds meanwhile (their setting then stands). It does nothing when
the collector is disabled or already collects less often.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

#: Net allocations between young collections while a job runs (CPython's default: 700).
YOUNG_THRESHOLD = 10_000

_lock = threading.Lock()
_running = 0
_saved: tuple[int, ...] | None = None


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Raise the young generation's threshold for the duration (see the module)."""
    global _running, _saved
    with _lock:
        if _running == 0:
            found = gc.get_threshold()
            if gc.isenabled() and 0 < found[0] < YOUNG_THRESHOLD:
                _saved = found
                gc.set_threshold(YOUNG_THRESHOLD, *found[1:])
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0 and _saved is not None:
                if gc.get_threshold() == (YOUNG_THRESHOLD, *_saved[1:]):
                    gc.set_threshold(*_saved)
                _saved = None
