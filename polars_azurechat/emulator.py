"""An Azure-OpenAI-compatible chat-completions server for tests, demos and offline runs.

It speaks Azure's URL shape (``/openai/deployments/{deployment}/chat/completions`` with
``api-version``), checks the ``api-key`` header (or ``Authorization: Bearer``) and answers
a wrong key with Azure's 401 body. Answers are deterministic: an arithmetic question such
as ``"What is 53 + 53?"`` gets ``"106"``; anything else gets ``"Echo: <last user message>"``
(cut at ``max_tokens``, with ``finish_reason="length"``). It adds latency with jitter,
enforces requests/tokens-per-minute over a sliding window with Azure's 429 headers, and
injects faults: at random rates (500/503, hangs, dropped connections, malformed bodies),
or scripted per prompt with a directive in the message text:

``[emu:500*2]``
    the first 2 requests with this exact prompt get a 500 (also ``503``, ``429``,
    ``408``, ``hang``, ``drop``, ``malformed``);
``[emu:filter]``
    always a 400 content-filter error;
``[emu:delay=50]``
    50 ms more latency for this prompt.

Directives can be combined: ``[emu:429*1,delay=5]``. Every request is counted: by status,
faults by kind, and the peak number in flight, from Python (:meth:`Emulator.stats`) or over
HTTP (``GET /stats``; ``POST /stats/reset``).

Examples
--------
>>> import openai
>>> with Emulator() as emu:
...     client = openai.AzureOpenAI(
...         azure_endpoint=emu.url, api_key=emu.api_key, api_version="2024-10-21"
...     )
...     reply = client.chat.completions.create(
...         model="gpt-4o-mini",
...         messages=[{"role": "user", "content": "What is 53 + 53?"}],
...     )
...     print(reply.choices[0].message.content, emu.stats()["statuses"])
106 {'200': 1}
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from polars_azurechat import _tokens as _count

__all__ = ["DEFAULT_API_KEY", "Emulator", "EmulatorSettings", "answer_for", "serve"]

logger = logging.getLogger(__name__)

DEFAULT_API_KEY = "emulator-key"
_DIRECTIVE = re.compile(r"\[emu:([^\]]*)\]")
_ARITH = re.compile(
    r"what\s+is\s+(-?\d+(?:\.\d+)?)\s*([-+*/x\u00d7\u00f7])\s*(-?\d+(?:\.\d+)?)",
    re.IGNORECASE,
)
_FAULTS = ("500", "503", "429", "408", "hang", "drop", "malformed")
_ACCESS_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API "
    "endpoint for your resource."
)


@dataclasses.dataclass
class EmulatorSettings:
    """What the emulator does. Rates are probabilities per request, in [0, 1].

    Attributes
    ----------
    api_key
        The key (or bearer token) it accepts.
    deployments
        Deployment names that exist; ``None`` accepts any name.
    latency_ms, jitter_ms
        Base latency of every answer, plus uniform jitter in ``[0, jitter_ms]``.
    requests_per_minute, tokens_per_minute
        The quota, enforced per ``window_s`` as ``quota * window_s / 60`` (Azure: a sixth
        of the minute per 10 s). Tokens are counted on arrival: prompt + ``max_tokens``.
    error_rate
        Share of requests answered 500 or 503 (half each).
    hang_rate, drop_rate, malformed_rate
        Share of requests that hang for ``hang_s``, lose their connection, or get a 200
        whose body is not JSON.
    retry_after_ms
        ``retry-after-ms`` sent on injected 5xx/408 and scripted 429s (``None``: not sent).
    context_tokens
        The model's context; longer requests get Azure's ``context_length_exceeded``.
    """

    api_key: str = DEFAULT_API_KEY
    deployments: frozenset[str] | None = None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    window_s: float = 10.0
    error_rate: float = 0.0
    hang_rate: float = 0.0
    drop_rate: float = 0.0
    malformed_rate: float = 0.0
    hang_s: float = 3600.0
    retry_after_ms: int | None = 1
    context_tokens: int = 128_000
    model: str = "gpt-4o-mini"
    seed: int = 0


def answer_for(prompt: str) -> str:
    """The emulator's deterministic answer to a user prompt.

    Examples
    --------
    >>> answer_for("What is 53 + 53?")
    '106'
    >>> answer_for("What is 7 / 2?")
    '3.5'
    >>> answer_for("Say hi")
    'Echo: Say hi'
    """
    m = _ARITH.search(prompt)
    if m is None:
        return f"Echo: {_DIRECTIVE.sub('', prompt).strip()}"
    a, op, b = Fraction(m.group(1)), m.group(2), Fraction(m.group(3))
    if op == "+":
        value = a + b
    elif op == "-":
        value = a - b
    elif op in "*x\u00d7":
        value = a * b
    elif b == 0:
        return "undefined"
    else:
        value = a / b
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4


class _State:
    """Counters and windows; touched on the server's loop, read from any thread."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.rng = random.Random(settings.seed)  # noqa: S311 - faults, not secrets
        self.on_request: Callable[[int], None] | None = None
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.requests = 0
            self.statuses: collections.Counter[str] = collections.Counter()
            self.faults: collections.Counter[str] = collections.Counter()
            self.in_flight = 0
            self.peak_in_flight = 0
            self.prompt_tokens = 0
            self.completion_tokens = 0
            self.seen: collections.Counter[str] = collections.Counter()
            self.window: collections.deque[tuple[float, int]] = collections.deque()
            self.window_tokens = 0

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "statuses": dict(sorted(self.statuses.items())),
                "faults": dict(sorted(self.faults.items())),
                "in_flight": self.in_flight,
                "peak_in_flight": self.peak_in_flight,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            }


def _error(
    http_status: int, code: str | None, message: str, **extra: Any
) -> web.Response:
    body: dict[str, Any] = {"error": {"code": code, "message": message, **extra}}
    return web.json_response(body, status=http_status)


class _App:
    def __init__(self, state: _State) -> None:
        self.state = state
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post(
            "/openai/deployments/{deployment}/chat/completions", self.chat
        )
        self.app.router.add_get("/stats", self.get_stats)
        self.app.router.add_post("/stats/reset", self.reset_stats)

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.snapshot())

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.state.reset()
        return web.json_response({"ok": True})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        st = self.state
        with st.lock:
            st.requests += 1
            st.in_flight += 1
            st.peak_in_flight = max(st.peak_in_flight, st.in_flight)
            n = st.requests
        if st.on_request is not None:
            st.on_request(n)
        status = "?"
        try:
            response = await self._chat(request)
        except _Dropped:
            status = "dropped"
            raise
        else:
            status = str(response.status)
            return response
        finally:
            with st.lock:
                st.in_flight -= 1
                st.statuses[status] += 1

    async def _chat(self, request: web.Request) -> web.Response:
        s = self.state.settings
        if not request.query.get("api-version"):
            return _error(404, "404", "Resource not found")
        key = request.headers.get("api-key")
        if key is None:
            auth = request.headers.get("Authorization", "")
            key = auth[7:] if auth.startswith("Bearer ") else None
        if key != s.api_key:
            return _error(401, "401", _ACCESS_DENIED)
        deployment = request.match_info["deployment"]
        if s.deployments is not None and deployment not in s.deployments:
            return _error(
                404,
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
            )
        try:
            body = await request.json(loads=json.loads)
            messages = body["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages")  # noqa: TRY301
            texts = [str(m["content"]) for m in messages]
            roles = [str(m["role"]) for m in messages]
        except (ValueError, KeyError, TypeError):
            return _error(
                400,
                None,
                "'messages' is a required property and must be a non-empty list of "
                "{role, content} objects",
                type="invalid_request_error",
                param="messages",
            )
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        prompt_tokens = _count.prompt_tokens(
            [{"role": r, "content": t} for r, t in zip(roles, texts, strict=True)]
        )
        last_user = next(
            (
                t
                for r, t in zip(reversed(roles), reversed(texts), strict=True)
                if r == "user"
            ),
            texts[-1],
        )
        directives = _parse_directives(last_user)
        delay_s = (
            s.latency_ms
            + float(directives.get("delay", 0))
            + s.jitter_ms * self.state.rng.random()
        ) / 1000
        fault = self._scripted_fault(messages, directives) or self._random_fault()
        if fault is not None:
            return await self._fault(request, fault, delay_s)
        if "filter" in directives:
            return _content_filter()
        if prompt_tokens + (max_tokens or 0) > s.context_tokens:
            return _error(
                400,
                "context_length_exceeded",
                f"This model's maximum context length is {s.context_tokens} tokens. "
                f"However, your messages resulted in {prompt_tokens} tokens. Please "
                "reduce the length of the messages.",
                type="invalid_request_error",
                param="messages",
            )
        cost = prompt_tokens + (max_tokens if max_tokens is not None else 4096)
        limited = self._admit(cost)
        if limited is not None:
            return limited
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        answer = answer_for(last_user)
        finish = "stop"
        if isinstance(max_tokens, int) and _tokens(answer) > max_tokens:
            answer, finish = answer[: max(1, max_tokens) * 4], "length"
        completion_tokens = max(1, _tokens(answer))
        with self.state.lock:
            self.state.prompt_tokens += prompt_tokens
            self.state.completion_tokens += completion_tokens
            remaining = self._remaining()
            n = self.state.requests
        payload = {
            "id": f"chatcmpl-emu-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": s.model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": answer,
                        "refusal": None,
                    },
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": "fp_emulator",
        }
        headers = {"apim-request-id": f"emu-{n}", **remaining}
        return web.json_response(payload, headers=headers)

    def _scripted_fault(self, messages: Any, directives: dict[str, str]) -> str | None:
        for kind in _FAULTS:
            if kind in directives:
                key = hashlib.sha256(
                    json.dumps(messages, sort_keys=True).encode()
                ).hexdigest()
                with self.state.lock:
                    self.state.seen[key] += 1
                    n = self.state.seen[key]
                times = int(directives[kind] or 1)
                return kind if n <= times else None
        return None

    def _random_fault(self) -> str | None:
        s = self.state.settings
        rng = self.state.rng
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

    async def _fault(
        self, request: web.Request, kind: str, delay_s: float
    ) -> web.Response:
        s = self.state.settings
        with self.state.lock:
            self.state.faults[kind] += 1
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        headers = {}
        if s.retry_after_ms is not None:
            headers = {
                "retry-after-ms": str(s.retry_after_ms),
                "Retry-After": str(math.ceil(s.retry_after_ms / 1000)),
            }
        if kind == "hang":
            await asyncio.sleep(s.hang_s)
            return _error(504, "504", "Gateway timeout")
        if kind == "drop":
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise _Dropped
        if kind == "malformed":
            return web.Response(
                status=200,
                body=b'{"choices": [{"message": ',
                content_type="application/json",
            )
        status = int(kind)
        message = {
            429: "Requests to the ChatCompletions_Create Operation have exceeded the rate "
            "limit of your current pricing tier. Please retry after 1 second.",
            408: "Request timeout",
            500: "The server had an error while processing your request. Sorry about that!",
            503: "The service is temporarily unable to process your request.",
        }[status]
        response = _error(status, str(status), message)
        response.headers.update(headers)
        return response

    def _admit(self, cost: int) -> web.Response | None:
        s = self.state.settings
        if s.requests_per_minute is None and s.tokens_per_minute is None:
            return None
        st = self.state
        scale = s.window_s / 60
        now = time.monotonic()
        with st.lock:
            while st.window and st.window[0][0] + s.window_s <= now:
                st.window_tokens -= st.window.popleft()[1]
            wait = 0.0
            if s.requests_per_minute is not None:
                budget = max(1, int(s.requests_per_minute * scale))
                if len(st.window) + 1 > budget:
                    wait = st.window[len(st.window) - budget][0] + s.window_s - now
            if s.tokens_per_minute is not None and st.window:
                budget_t = max(1, int(s.tokens_per_minute * scale))
                need = st.window_tokens + cost - budget_t
                freed = 0
                for t, c in st.window if need > 0 else ():
                    freed += c
                    if freed >= need:
                        wait = max(wait, t + s.window_s - now)
                        break
            if wait <= 0:
                st.window.append((now, cost))
                st.window_tokens += cost
                return None
        wait_ms = max(1, math.ceil(wait * 1000))
        response = _error(
            429,
            "429",
            "Requests to the ChatCompletions_Create Operation have exceeded the rate limit "
            f"of your current pricing tier. Please retry after {math.ceil(wait)} seconds.",
        )
        response.headers["retry-after-ms"] = str(wait_ms)
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response

    def _remaining(self) -> dict[str, str]:
        s = self.state.settings
        scale = s.window_s / 60
        out = {}
        if s.requests_per_minute is not None:
            budget = int(s.requests_per_minute * scale)
            out["x-ratelimit-remaining-requests"] = str(
                max(0, budget - len(self.state.window))
            )
        if s.tokens_per_minute is not None:
            budget = int(s.tokens_per_minute * scale)
            out["x-ratelimit-remaining-tokens"] = str(
                max(0, budget - self.state.window_tokens)
            )
        return out


class _Dropped(Exception):  # noqa: N818
    """The handler aborted its connection on purpose."""


def _content_filter() -> web.Response:
    categories = {
        name: {
            "filtered": name == "violence",
            "severity": "high" if name == "violence" else "safe",
        }
        for name in ("hate", "self_harm", "sexual", "violence")
    }
    return _error(
        400,
        "content_filter",
        "The response was filtered due to the prompt triggering Azure OpenAI's content "
        "management policy. Please modify your prompt and retry.",
        param="prompt",
        type=None,
        status=400,
        innererror={
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": categories,
        },
    )


def _parse_directives(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for block in _DIRECTIVE.findall(text):
        for item in block.split(","):
            item = item.strip()
            if not item:
                continue
            if "=" in item:
                k, v = item.split("=", 1)
            elif "*" in item:
                k, v = item.split("*", 1)
            else:
                k, v = item, ""
            out[k.strip()] = v.strip()
    return out


class Emulator:
    """Run the emulator on a background thread (port 0 picks a free port).

    Use it as a context manager; ``url`` and ``api_key`` point a client at it, and
    :meth:`env` gives the environment variables that do the same.

    Parameters
    ----------
    settings
        Behaviour; keyword arguments override its fields
        (``Emulator(latency_ms=200, requests_per_minute=600)``).
    host, port
        Where to listen; 127.0.0.1 and a free port by default.
    on_request
        Called with the running request count as each request arrives (on the server's
        thread), e.g. to kill a client at a chosen point in a test.
    """

    def __init__(
        self,
        settings: EmulatorSettings | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        on_request: Callable[[int], None] | None = None,
        **overrides: Any,
    ) -> None:
        self.settings = dataclasses.replace(settings or EmulatorSettings(), **overrides)
        self.host = host
        self.port = port
        self._state = _State(self.settings)
        self._state.on_request = on_request
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"Emulator(url={self.url!r})"

    @property
    def url(self) -> str:
        """The endpoint to use as ``azure_endpoint``."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_key(self) -> str:
        """The key the emulator accepts."""
        return self.settings.api_key

    def env(self, deployment: str = "gpt-4o-mini") -> dict[str, str]:
        """Environment variables that point polars_azurechat (and openai) here."""
        return {
            "AZURE_OPENAI_ENDPOINT": self.url,
            "AZURE_OPENAI_API_KEY": self.api_key,
            "OPENAI_API_VERSION": "2024-10-21",
            "AZURE_OPENAI_DEPLOYMENT": deployment,
        }

    def stats(self) -> dict[str, Any]:
        """What the emulator counted: requests, statuses, faults, peak in flight, tokens."""
        return self._state.snapshot()

    def reset(self) -> None:
        """Zero the counters and the rate-limit window."""
        self._state.reset()

    def start(self) -> Self:
        """Start serving on a background thread; returns once the port is bound."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name="azurechat-emulator", daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), loop).result()
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(
            _App(self._state).app, access_log=None, shutdown_timeout=0.1
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=4096)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None:
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop serving and end the thread."""
        if self._loop is None or self._thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(
                self._runner.cleanup(), self._loop
            ).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    settings: EmulatorSettings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    **overrides: Any,
) -> None:
    """Serve the emulator in the foreground until interrupted (used by the CLI)."""
    settings = dataclasses.replace(settings or EmulatorSettings(), **overrides)
    state = _State(settings)
    web.run_app(
        _App(state).app,
        host=host,
        port=port,
        access_log=None,
        print=None,
        shutdown_timeout=0.1,
        backlog=4096,
    )
