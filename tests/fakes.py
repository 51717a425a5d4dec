"""The fake clocks every test uses: time that moves only when a test (or a sleep) says.

Two kinds, and when to use each:

:class:`FakeClock`
    Monotonic seconds that move only when told: ``advance(s)``, assigning ``now``, or
    one of its sleeps (``await clock.sleep(s)`` for code on the event loop: the engine,
    the limiter, the pool; ``clock.blocking_sleep(s)`` for code that sleeps in a thread:
    the batch runner's polling). Every sleep is recorded in ``sleeps``. Use it when a
    test decides when time passes, or when the code under test sleeps one thing at a
    time (retries of one row, a batch being polled, the emulator's quota windows
    stepped by hand).

:class:`NetworkClock`
    A :class:`FakeClock` for engines that send real requests (to the emulator over
    HTTP) while many rows sleep at once: time moves only when no request of the
    watched engines is on the wire, and then jumps to the earliest wake-up among the
    sleepers (their waits overlap in time, they do not add up). Give the same clock to
    the emulator (``Emulator(clock=clock)``) so that the server's quota windows and the
    client's limiter see the same instants; a minute of quota then passes in
    milliseconds.

No test waits for real on either clock: a real ``asyncio.sleep`` appears only in
:class:`NetworkClock`, where it lets I/O that is already under way complete.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polars_azurechat.engine.core import ChatEngine

#: Where a :class:`FakeClock` starts unless told: far from 0, so that code computing
#: ``now - something`` never sees a negative or zero instant by accident.
START = 1000.0


class FakeClock:
    """Monotonic seconds that move only when told (see the module docstring).

    Parameters
    ----------
    now
        The clock's first reading.
    """

    def __init__(self, now: float = START) -> None:
        self.now = now
        #: every sleep asked of this clock, in order (async and blocking alike)
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock (a negative step is allowed: a test of a clock going back)."""
        self.now += seconds

    @property
    def slept(self) -> float:
        """Seconds slept on this clock in all."""
        return sum(self.sleeps)

    async def sleep(self, seconds: float) -> None:
        """The awaitable sleep for code on the event loop: moves the clock at once."""
        self.sleeps.append(seconds)
        self.now += seconds

    def blocking_sleep(self, seconds: float) -> None:
        """The blocking sleep for code that sleeps in a thread: moves the clock at once."""
        self.sleeps.append(seconds)
        self.now += seconds


class NetworkClock(FakeClock):
    """A fake clock that moves only when no request is on the wire (module docstring).

    Parameters
    ----------
    now
        The clock's first reading.
    together
        With several engines: time does not move until every watched engine has
        begun a run (a job must not pass its windows alone while another job's thread
        has not started yet).

    Notes
    -----
    Call :meth:`watch` with the engine (or engines) whose requests hold time back.
    """

    def __init__(self, now: float = START, *, together: bool = False) -> None:
        super().__init__(now)
        self.together = together
        self.engines: tuple[ChatEngine, ...] = ()
        self._pending: list[float] = []

    def watch(self, *engines: ChatEngine) -> None:
        """Hold time back while any of ``engines`` has a request on the wire."""
        self.engines = engines

    def _busy(self) -> bool:
        engines = self.engines
        if self.together and not all(e.runs.count for e in engines):
            return True
        return any(e.in_flight for e in engines)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        while self._busy():
            await asyncio.sleep(0.0005)  # I/O completing, not time passing
        target = self.now + seconds
        self._pending.append(target)
        try:
            while target > self.now:
                while self._busy():
                    await asyncio.sleep(0.0005)  # I/O completing, not time passing
                await asyncio.sleep(0.0005)  # let the other sleepers register
                if target > self.now and target <= min(self._pending):
                    self.now = target
        finally:
            self._pending.remove(target)
