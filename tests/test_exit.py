"""A process that ran jobs exits clean: its sockets closed, no task left pending.

At exit the jobs' connection pools are closed, what still runs on the background loop
is cancelled, the Ctrl-C watch puts back the wakeup fd it found and closes its socket
pair, and the loop is closed (``engine.loop._shutdown``). Before, the sockets were left
to the garbage collector: ``ResourceWarning: unclosed <socket ...>`` after a test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from polars_azurechat.emulator import Emulator

pytestmark = pytest.mark.slow  # a child process

CHILD = textwrap.dedent(
    """
    import atexit
    import signal
    import sys

    def last() -> None:  # registered first: runs after the package's own exit hooks
        from polars_azurechat.engine import interrupt, loop

        print("wakeup fd", signal.set_wakeup_fd(-1))
        print("sockets", interrupt._sockets)
        print("loop closed", loop._loop.is_closed())

    atexit.register(last)

    import polars as pl
    import polars_azurechat as pac

    df = pl.DataFrame({"q": [f"What is {i} + 1?" for i in range(20)]})
    out = df.select(pac.complete("q", cache=sys.argv[1]))
    many = pac.complete_many(["What is 1 + 1?", "What is 2 + 1?"])
    print(out["q"].null_count(), len(many))
    """
)


def test_a_process_that_ran_jobs_exits_clean(
    emulator: Emulator, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", CHILD, str(tmp_path / "c.sqlite")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "0 2",
        "wakeup fd -1",  # the one found at start (none) was put back
        "sockets None",
        "loop closed True",
    ]
    for said in ("ResourceWarning", "Task was destroyed", "nclosed"):
        assert said not in done.stderr, done.stderr
    assert emulator.stats()["requests"] == 22


#: Jobs collected by the garbage collector while another job registers its exit hook:
#: the collector runs their finalizers (which close on the loop) on the registering
#: thread, inside ``loop.on_exit``. With one lock for both, that deadlocked (a doctest
#: of the documentation hung the test suite).
COLLECTED_WHILE_REGISTERING = textwrap.dedent(
    """
    import gc
    import weakref

    from polars_azurechat.engine import loop

    async def close() -> None:
        pass

    class Job:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector frees it
            finalizer = weakref.finalize(self, loop.close_soon, close())
            loop.on_exit(finalizer)

    loop.loop()
    for _ in range(50):
        gc.disable()
        Job()  # garbage now: the next collection runs its finalizer
        gc.set_threshold(1)
        gc.enable()  # the next allocation collects: the one inside on_exit
        Job()
    print("done")
    """
)


def test_a_job_collected_while_another_registers_does_not_deadlock() -> None:
    done = subprocess.run(
        [sys.executable, "-c", COLLECTED_WHILE_REGISTERING],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["done"]
