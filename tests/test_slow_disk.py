"""An interrupted job's cache closes without waiting on a slow disk. Real subprocesses.

When the last connection to an SQLite file in WAL mode closes, SQLite folds the WAL
into the file: a checkpoint, with two disk syncs. On a loaded disk each sync can take
seconds (a CI run once spent 11 s in them after a second Ctrl-C). After Ctrl-C the
answers are already committed to the WAL; the engine marks the cache ``hurry`` and its
close does not wait for the checkpoint; the next open folds the WAL in.

The slow disk is real in the sense that matters: ``strace`` holds every ``fsync`` and
``fdatasync`` of the child for a second (the kernel's own calls, no patched code).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from polars_azurechat._types import ChatResult
from polars_azurechat.store.sqlite import HURRIED_CLOSE_S, SqliteCache

pytestmark = pytest.mark.slow

#: How long the tracer holds each disk sync.
SYNC_S = 1.0
STRACE = shutil.which("strace")
ANSWERS = 50

CHILD = textwrap.dedent(
    f"""
    import sys, time
    from polars_azurechat._types import ChatResult
    from polars_azurechat.store.sqlite import SqliteCache

    cache = SqliteCache(sys.argv[1])
    for i in range({ANSWERS}):
        cache.put(f"key-{{i}}", ChatResult(content=f"answer {{i}}"))
    cache.flush()  # committed to the WAL: no sync in WAL mode with synchronous=NORMAL
    cache.hurry = sys.argv[2] == "hurry"
    print("ready", flush=True)
    sys.stdin.readline()  # the tracer is attached
    started = time.monotonic()
    cache.close()
    print(f"closed {{time.monotonic() - started:.3f}}", flush=True)
    """
)


def _close_under_slow_syncs(path: Path, mode: str) -> float:
    """Seconds the child's ``close()`` took while each disk sync takes ``SYNC_S``."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    tracer = None
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        assert STRACE is not None
        tracer = subprocess.Popen(
            [
                STRACE,
                "-f",
                "-p",
                str(child.pid),
                "-o",
                "/dev/null",
                "-e",
                "trace=fsync,fdatasync",
                "-e",
                f"inject=fsync,fdatasync:delay_enter={int(SYNC_S * 1e6)}",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert tracer.stderr is not None
        line = tracer.stderr.readline()  # "strace: Process N attached with 3 threads"
        if "attached" not in line:
            pytest.skip(f"strace cannot attach here: {line.strip()}")
        child.stdin.write("go\n")
        child.stdin.flush()
        said = child.stdout.readline().split()
        assert said and said[0] == "closed", said
        return float(said[1])
    finally:
        for proc in (child, tracer):
            if proc is None:
                continue
            try:
                proc.communicate(timeout=10)  # ends with the child; closes the pipes
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


@pytest.mark.skipif(STRACE is None, reason="needs strace (apt-get install strace)")
def test_a_hurried_close_does_not_wait_for_the_checkpoint_and_loses_nothing(
    tmp_path: Path,
) -> None:
    # the same close, unhurried, waits for both syncs: the tracer does slow them
    assert _close_under_slow_syncs(tmp_path / "calm.sqlite", "calm") >= 2 * SYNC_S
    path = tmp_path / "hurried.sqlite"
    took = _close_under_slow_syncs(path, "hurry")
    assert took < HURRIED_CLOSE_S + 0.4, took
    # the process ended in the middle of the checkpoint: the committed answers are
    # in the WAL, and the next open reads them all
    cache = SqliteCache(path)
    try:
        assert len(cache) == ANSWERS
        assert cache.get_many(["key-7"])["key-7"] == ChatResult(
            content="answer 7", cached=True
        )
    finally:
        cache.close()
    assert not path.with_name("hurried.sqlite-wal").exists()  # folded in on close
