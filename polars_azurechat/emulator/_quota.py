"""The request and token quotas: one window each, sliding or fixed, on an injectable clock.

Each quota has a budget per window of ``max(1, int(quota_per_minute * window / 60))``.
A request is admitted only if both windows have room for it (1 request; its estimated
tokens); only then is it charged to both. A rejected request is charged nothing and is
told the true wait until both windows would have room, assuming nothing else arrives.

``"sliding"``
    A charge leaves its window ``window`` seconds after it was made.
``"fixed"``
    Counters reset at ``origin + k * window`` (``origin``: when the quota was made).

A charge larger than a whole window's budget (a huge ``max_tokens``) is admitted only
into an empty window, so it is delayed but never refused forever.

This module knows no HTTP: :meth:`Quota.admit` returns a :class:`Decision` whose headers
the server sends.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from collections.abc import Callable

from polars_azurechat.emulator._settings import EmulatorSettings, WindowKind

__all__ = ["Decision", "Quota", "Window", "ceil_ms", "format_reset"]

#: Slack for float noise: waiting exactly the advertised time always gets in.
_EPS = 1e-6


def ceil_ms(seconds: float) -> int:
    """Whole milliseconds, rounded up (float noise below a nanosecond ignored)."""
    return max(0, math.ceil(round(seconds * 1000, 6)))


def format_reset(seconds: float) -> str:
    """A duration as ``x-ratelimit-reset-*`` sends it: ``"0.512s"``.

    Seconds with exactly three decimals and an ``s`` suffix, rounded up to the
    millisecond (also a valid Go duration, the format OpenAI's own headers use).

    Examples
    --------
    >>> format_reset(0.5121), format_reset(10), format_reset(-1)
    ('0.513s', '10.000s', '0.000s')
    """
    return f"{ceil_ms(seconds) / 1000:.3f}s"


class Window:
    """One quota's window: a budget of units per ``length`` seconds.

    Parameters
    ----------
    budget
        Units (requests or tokens) allowed per window.
    length
        The window's length in seconds.
    kind
        ``"sliding"`` or ``"fixed"``.
    origin
        The clock reading fixed windows count from.
    """

    def __init__(
        self, budget: int, length: float, kind: WindowKind, origin: float
    ) -> None:
        self.budget = budget
        self.length = length
        self.kind = kind
        self.origin = origin
        self.used = 0
        self._charges: collections.deque[tuple[float, int]] = collections.deque()
        self._index = 0

    def _advance(self, now: float) -> None:
        if self.kind == "fixed":
            index = math.floor((now - self.origin + _EPS) / self.length)
            if index != self._index:
                self._index, self.used = index, 0
            return
        charges = self._charges
        while charges and charges[0][0] + self.length <= now + _EPS:
            self.used -= charges.popleft()[1]

    def _fits(self, cost: int, used: int) -> bool:
        return used == 0 or used + cost <= self.budget

    def wait(self, cost: int, now: float) -> float:
        """Seconds until ``cost`` fits (0: it fits now).

        Parameters
        ----------
        cost
            Units the request would charge.
        now
            The clock's reading.

        Returns
        -------
        float
            The wait, assuming nothing else is charged meanwhile.
        """
        self._advance(now)
        if self._fits(cost, self.used):
            return 0.0
        if self.kind == "fixed":
            return self._next_boundary() - now
        used = self.used
        for t, c in self._charges:
            used -= c
            if self._fits(cost, used):
                return t + self.length - now
        raise AssertionError("unreachable: an empty window admits anything")

    def charge(self, cost: int, now: float) -> None:
        """Count ``cost`` units at ``now`` (call :meth:`wait` first)."""
        self.used += cost
        if self.kind == "sliding":
            self._charges.append((now, cost))

    def remaining(self) -> int:
        """Units left in the window (after the last :meth:`wait` or :meth:`charge`)."""
        return max(0, self.budget - self.used)

    def reset_in(self, now: float) -> float:
        """Seconds until the window next frees capacity.

        Sliding: until its oldest charge leaves (0 if it holds none). Fixed: until the
        window's counter resets.
        """
        if self.kind == "fixed":
            return self._next_boundary() - now
        return self._charges[0][0] + self.length - now if self._charges else 0.0

    def _next_boundary(self) -> float:
        return self.origin + (self._index + 1) * self.length


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the quota decided about one request.

    Attributes
    ----------
    admitted
        Whether the request was admitted (and charged).
    wait_s
        When rejected: seconds until the request would fit in both windows.
    limited_by
        When rejected: ``"requests"`` or ``"tokens"``, the window with the longer wait.
    headers
        The ``x-ratelimit-*`` headers to send (on a 429 they describe the windows as
        they are, the request not being charged).
    """

    admitted: bool
    wait_s: float = 0.0
    limited_by: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


class Quota:
    """The request window and the token window of one emulator.

    Parameters
    ----------
    settings
        The quotas, window lengths and kind, and whether to send the limit headers.
    clock
        Monotonic seconds (``None``: ``settings.clock``, else ``time.monotonic``).
    """

    def __init__(
        self, settings: EmulatorSettings, clock: Callable[[], float] | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock or settings.clock or time.monotonic
        self.origin = self.clock()
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Empty both windows (fixed windows keep their origin)."""
        s = self.settings
        windows: dict[str, Window] = {}
        for name, per_minute, length in (
            ("requests", s.requests_per_minute, s.request_window_s),
            ("tokens", s.tokens_per_minute, s.token_window_s),
        ):
            if per_minute is None:
                continue
            length = s.window_s if length is None else length
            budget = max(1, int(per_minute * length / 60 + 1e-9))
            windows[name] = Window(budget, length, s.window_kind, self.origin)
        with self._lock:
            self.windows = windows

    def admit(self, tokens: int) -> Decision:
        """Admit and charge a request of ``tokens`` estimated tokens, or say how long to wait.

        Parameters
        ----------
        tokens
            The request's estimated tokens (prompt plus reserved completion).

        Returns
        -------
        Decision
            Admitted (charged to both windows), or rejected with the wait.
        """
        if not self.windows:
            return Decision(admitted=True)
        costs = {"requests": 1, "tokens": tokens}
        with self._lock:
            now = self.clock()
            waits = {
                name: window.wait(costs[name], now)
                for name, window in self.windows.items()
            }
            limited_by = max(waits, key=lambda name: waits[name])
            wait = waits[limited_by]
            admitted = wait <= 0
            if admitted:
                for name, window in self.windows.items():
                    window.charge(costs[name], now)
            headers = self._headers(now)
        if admitted:
            return Decision(admitted=True, headers=headers)
        return Decision(
            admitted=False, wait_s=wait, limited_by=limited_by, headers=headers
        )

    def _headers(self, now: float) -> dict[str, str]:
        headers = {
            f"x-ratelimit-remaining-{name}": str(window.remaining())
            for name, window in self.windows.items()
        }
        if self.settings.limit_headers:
            for name, window in self.windows.items():
                headers[f"x-ratelimit-limit-{name}"] = str(window.budget)
                headers[f"x-ratelimit-reset-{name}"] = format_reset(
                    window.reset_in(now)
                )
        return headers
