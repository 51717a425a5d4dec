"""Fault injection: scripted per prompt (``[emu:500*2]``) or at random rates."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import math
import random
import threading
from typing import Any

from aiohttp import web

from polars_azurechat.emulator._errors import error_response
from polars_azurechat.emulator._settings import EmulatorSettings

__all__ = ["FAULTS", "Dropped", "Faults"]

#: The faults a directive can script, in the order they are looked for.
FAULTS = ("500", "503", "429", "408", "hang", "drop", "malformed")

_MESSAGES = {
    429: "Requests to the ChatCompletions_Create Operation have exceeded the rate "
    "limit of your current pricing tier. Please retry after 1 second.",
    408: "Request timeout",
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The service is temporarily unable to process your request.",
}


class Dropped(Exception):  # noqa: N818
    """The handler aborted its connection on purpose."""


class Faults:
    """Chooses a request's fault, if any, and answers with it.

    Parameters
    ----------
    settings
        The random rates, ``hang_s`` and ``retry_after_ms``.
    rng
        The emulator's seeded random generator (shared with the jitter).
    """

    def __init__(self, settings: EmulatorSettings, rng: random.Random) -> None:
        self.settings = settings
        self.rng = rng
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget how often each scripted prompt was seen."""
        with self._lock:
            self._seen: collections.Counter[str] = collections.Counter()

    def choose(self, messages: Any, directives: dict[str, str]) -> str | None:
        """The fault for this request: scripted by its directives, else at random.

        Parameters
        ----------
        messages
            The request's messages as sent (a scripted fault counts per exact list).
        directives
            The last user message's directives.

        Returns
        -------
        str or None
            One of :data:`FAULTS`, or ``None`` for a normal answer.
        """
        return self._scripted(messages, directives) or self._random()

    def flex_busy(self, messages: Any, directives: dict[str, str]) -> bool:
        """Whether ``[emu:flex_busy*N]`` refuses this flex request (its first N times)."""
        if "flex_busy" not in directives:
            return False
        key = (
            "flex:"
            + hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        )
        with self._lock:
            self._seen[key] += 1
            n = self._seen[key]
        return n <= int(directives["flex_busy"] or 1)

    def _scripted(self, messages: Any, directives: dict[str, str]) -> str | None:
        for kind in FAULTS:
            if kind in directives:
                key = hashlib.sha256(
                    json.dumps(messages, sort_keys=True).encode()
                ).hexdigest()
                with self._lock:
                    self._seen[key] += 1
                    n = self._seen[key]
                times = int(directives[kind] or 1)
                return kind if n <= times else None
        return None

    def _random(self) -> str | None:
        s = self.settings
        rng = self.rng
        x = rng.random()
        for kind, rate in (
            ("5xx", s.error_rate),
            ("hang", s.hang_rate),
            ("drop", s.drop_rate),
            ("malformed", s.malformed_rate),
        ):
            if x < rate:
                return (
                    ("500" if rng.random() < 0.5 else "503") if kind == "5xx" else kind
                )
            x -= rate
        return None

    async def respond(
        self, request: web.Request, kind: str, delay_s: float
    ) -> web.Response:
        """Answer ``request`` with the fault ``kind`` after ``delay_s``.

        Raises
        ------
        Dropped
            For ``"drop"``, after aborting the connection.
        """
        s = self.settings
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if kind == "hang":
            await asyncio.sleep(s.hang_s)
            return error_response(504, "504", "Gateway timeout")
        if kind == "drop":
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise Dropped
        if kind == "malformed":
            return web.Response(
                status=200,
                body=b'{"choices": [{"message": ',
                content_type="application/json",
            )
        status = int(kind)
        response = error_response(status, str(status), _MESSAGES[status])
        if s.retry_after_ms is not None:
            response.headers["retry-after-ms"] = str(s.retry_after_ms)
            response.headers["Retry-After"] = str(math.ceil(s.retry_after_ms / 1000))
        return response
