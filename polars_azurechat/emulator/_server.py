"""The aiohttp app, its routes, and the two ways to run it (:class:`Emulator`, :func:`serve`)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal, Self

import orjson
from aiohttp import web

from polars_azurechat.emulator._batch import MAX_FILE_BYTES, BatchService
from polars_azurechat.emulator._body import missing_model, read_body
from polars_azurechat.emulator._chat import Chat, chat_payload
from polars_azurechat.emulator._embeddings import (
    Embeddings,
    is_embedding,
    operation_not_supported,
)
from polars_azurechat.emulator._errors import api_version_problem, error_response
from polars_azurechat.emulator._faults import Dropped
from polars_azurechat.emulator._lane import Lane
from polars_azurechat.emulator._reasoning import is_reasoning
from polars_azurechat.emulator._responses import (
    chat_body,
    response_payload,
    responses_error,
)
from polars_azurechat.emulator._settings import EmulatorSettings, exposure_warning
from polars_azurechat.emulator._state import State

__all__ = ["Emulator", "serve"]

logger = logging.getLogger(__name__)


#: The surfaces a request can come by: the classic deployment route, the v1 chat
#: route, the v1 Responses API, the classic and the v1 embeddings routes.
Route = Literal["classic", "v1", "responses", "embeddings", "embeddings_v1"]
#: What a body asks for: a chat completion, a response of the Responses API, or
#: embeddings.
Api = Literal["chat", "responses", "embeddings"]

#: Azure's 404 for a deployment name the resource does not have.
DEPLOYMENT_NOT_FOUND = (
    "The API deployment for this resource does not exist. If you created the "
    "deployment within the last 5 minutes, please wait a moment and try again."
)


class _App:
    def __init__(self, state: State, batches: BatchService | None = None) -> None:
        self.state = state
        self.chat_answers = Chat(state)
        self.embeddings = Embeddings(state, self.chat_answers)
        # a Batch input file of MAX_FILE_BYTES is refused by the Batch service in
        # Azure's words, not by aiohttp (room for the multipart envelope)
        self.app = web.Application(client_max_size=MAX_FILE_BYTES + 1024 * 1024)
        router = self.app.router
        router.add_post("/openai/deployments/{deployment}/chat/completions", self.chat)
        router.add_post("/openai/v1/chat/completions", self.chat_v1)
        router.add_post("/openai/v1/responses", self.responses)
        router.add_post(
            "/openai/deployments/{deployment}/embeddings", self.embeddings_classic
        )
        router.add_post("/openai/v1/embeddings", self.embeddings_v1)
        router.add_get("/openai/v1/models", self.models)
        router.add_get("/stats", self.get_stats)
        router.add_post("/stats/reset", self.reset_stats)
        # the files and batches endpoints (emulator/_batch.py)
        self.batches = batches if batches is not None else BatchService()
        self.batches.attach(self)

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {**self.state.snapshot(), "batch": self.batches.snapshot()}
        )

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.state.reset()
        self.batches.reset()
        return web.json_response({"ok": True})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /openai/deployments/{deployment}/chat/completions?api-version=``."""
        return await self._serve(request, "classic")

    async def chat_v1(self, request: web.Request) -> web.StreamResponse:
        """``POST /openai/v1/chat/completions``: the deployment is the body's ``model``."""
        return await self._serve(request, "v1")

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """``POST /openai/v1/responses``: the Responses API (``emulator/_responses.py``)."""
        return await self._serve(request, "responses")

    async def embeddings_classic(self, request: web.Request) -> web.StreamResponse:
        """``POST /openai/deployments/{deployment}/embeddings?api-version=``."""
        return await self._serve(request, "embeddings")

    async def embeddings_v1(self, request: web.Request) -> web.StreamResponse:
        """``POST /openai/v1/embeddings`` (``emulator/_embeddings.py``)."""
        return await self._serve(request, "embeddings_v1")

    async def models(self, request: web.Request) -> web.Response:
        """``GET /openai/v1/models``: the models the resource's deployments run."""
        refused = api_version_problem(request) or self._authenticated(request)
        if refused is not None:
            return refused
        s = self.state.settings
        names = {s.model} | {
            str(fields["model"])
            for fields in (s.per_deployment or {}).values()
            if "model" in fields
        }
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "system"}
            for name in sorted(names)
        ]
        return web.json_response({"object": "list", "data": data})

    async def _serve(self, request: web.Request, route: Route) -> web.StreamResponse:
        """Count a request by ``route``, answer it, count how it was answered."""
        st = self.state
        with st.lock:
            st.requests += 1
            st.routes[route] += 1
            st.in_flight += 1
            st.peak_in_flight = max(st.peak_in_flight, st.in_flight)
            n = st.requests
        if st.on_request is not None:
            st.on_request(n)
        status = "?"
        lane: Lane | None = None
        try:
            response, lane = await self._route(request, route)
            if route == "responses":  # Azure's error shape, this API's names
                response = responses_error(response)
        except Dropped:
            status = "dropped"
            raise
        except web.HTTPException as exc:  # aiohttp's own refusal (a 413: too large)
            status = str(exc.status)
            raise
        else:
            status = str(response.status)
            # Azure names every answer, errors included (unique per request)
            response.headers["apim-request-id"] = f"emu-{n}"
            return response
        finally:
            with st.lock:
                st.in_flight -= 1
                st.statuses[status] += 1
                if lane is not None:
                    lane.statuses[status] += 1

    async def _route(
        self, request: web.Request, route: Route
    ) -> tuple[web.Response, Lane | None]:
        """The answer to a request, and the lane it reached (if any).

        A lane (quota windows, counters) is made for a deployment name only once a
        request with a valid credential names it: a caller without one cannot make the
        emulator keep anything per name it invents. The classic route names the
        deployment in its path; the v1 routes in the body's ``model``.
        """
        refused = api_version_problem(request) or self._authenticated(request)
        if refused is not None:
            return refused, None
        body: Any = None
        if route in ("classic", "embeddings"):
            deployment = request.match_info["deployment"]
        else:
            body, refused = read_body(await request.read())
            if refused is not None:
                return refused, None
            model = body.get("model") if isinstance(body, dict) else None
            if not isinstance(model, str) or not model:
                return missing_model(), None
            deployment = model
        lane = self._lane(deployment)
        if isinstance(lane, web.Response):
            return lane, None
        with self.state.lock:
            lane.requests += 1
        if lane.is_down():
            return _down(lane), lane
        if body is None:
            body, refused = read_body(await request.read())
            if refused is not None:
                return refused, lane
        api: Api = _APIS[route]
        return await self.answer(lane, body, request=request, api=api), lane

    def _authenticated(self, request: web.Request) -> web.Response | None:
        """The refusal of a request without a valid credential (counted if valid)."""
        st = self.state
        auth = st.authenticate(request)
        if isinstance(auth, web.Response):
            return auth
        with st.lock:
            st.auth[auth] += 1
        return None

    def _lane(self, deployment: str) -> Lane | web.Response:
        """The lane of ``deployment``, or Azure's 404 if the resource has none."""
        known = self.state.settings.deployments
        if known is not None and deployment not in known:
            return error_response(404, "DeploymentNotFound", DEPLOYMENT_NOT_FOUND)
        return self.state.lane(deployment)

    async def answer(
        self,
        lane: Lane,
        body: Any,
        *,
        request: web.Request | None = None,
        n: int | None = None,
        api: Api = "chat",
    ) -> web.Response:
        """Answer one ``body`` on ``lane`` (see :meth:`Chat.answer`), for ``api``.

        ``request`` is ``None`` for a line of a batch. A Responses API body is
        answered as the chat body it is equivalent to, and rendered as a response.
        An embedding deployment answers embeddings only, and a chat one all but.
        """
        if api == "embeddings":
            return await self.embeddings.answer(lane, body, request=request)
        if is_embedding(lane.settings):
            operation = "responses" if api == "responses" else "chatCompletion"
            return operation_not_supported(operation, lane.settings.model)
        if api == "responses":
            chat, refused = chat_body(body)
            if refused is not None:
                return refused
            answer = await self.chat_answers.answer(lane, chat, request=request, n=n)
            if isinstance(answer, web.Response):  # named as this API names it
                first = 1 if body.get("instructions") else 0  # (then messages[0])
                return responses_error(answer, renamed=True, offset=first)
            payload = response_payload(
                answer, body, reasoning=is_reasoning(lane.settings)
            )
            return _json(payload, answer.headers)
        answer = await self.chat_answers.answer(lane, body, request=request, n=n)
        if isinstance(answer, web.Response):
            return answer
        return _json(chat_payload(answer), answer.headers)


def _json(payload: Any, headers: Mapping[str, str]) -> web.Response:
    """A 200 answer's JSON body, written by orjson.

    The standard library's encoder was a tenth of the emulator's time a request at
    latency 0.
    """
    return web.Response(
        body=orjson.dumps(payload),
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


#: What each route's body asks for.
_APIS: dict[Route, Api] = {
    "classic": "chat",
    "v1": "chat",
    "responses": "responses",
    "embeddings": "embeddings",
    "embeddings_v1": "embeddings",
}


def _down(lane: Lane) -> web.Response:
    """The 503 of a deployment that is down."""
    down = error_response(
        503,
        "ServiceUnavailable",
        "The service is temporarily unable to process your request. Please try "
        "again later.",
    )
    if lane.settings.retry_after_ms is not None:
        down.headers["retry-after-ms"] = str(lane.settings.retry_after_ms)
    return down


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
    clock
        Monotonic seconds for the quota windows and token expiry (overrides
        ``settings.clock``; default ``time.monotonic``). A test passes a fake clock and
        moves it instead of sleeping.
    batches
        The files and batches endpoints' behaviour (pace, limits, quota of enqueued
        tokens, clock): a :class:`~polars_azurechat.emulator._batch.BatchService`;
        default ``BatchService()``.
    **overrides
        Fields of :class:`EmulatorSettings` to override.

    """

    def __init__(
        self,
        settings: EmulatorSettings | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        on_request: Callable[[int], None] | None = None,
        clock: Callable[[], float] | None = None,
        batches: BatchService | None = None,
        **overrides: Any,
    ) -> None:
        if clock is not None:
            overrides["clock"] = clock
        self.settings = dataclasses.replace(settings or EmulatorSettings(), **overrides)
        self.host = host
        self.port = port
        self._state = State(self.settings)
        self._state.on_request = on_request
        self.batches = batches if batches is not None else BatchService()
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
    def base_url(self) -> str:
        """The v1 API's base URL, ``<url>/openai/v1/`` (``openai.OpenAI(base_url=)``)."""
        return f"{self.url}/openai/v1/"

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
        """What the emulator counted: requests, statuses, faults, peak in flight, tokens.

        Also ``tokens_issued`` (by :meth:`issue_token`) and ``auth``: the requests
        authenticated with the key (``"key"``: an ``api-key`` header, or the key sent
        as a bearer) and with an issued token (``"bearer"``), as
        ``{"key": n, "bearer": n}``; ``routes``: the chat requests by the surface
        they came by, ``{"classic": n, "v1": n, "responses": n}`` (the deployment
        route with ``api-version``, ``/openai/v1/chat/completions``,
        ``/openai/v1/responses``); ``embeddings``: the embeddings requests by route,
        ``{"classic": n, "v1": n}``, and the inputs embedded and their tokens, as
        ``{"routes": {...}, "inputs": n, "tokens": n}`` (their requests and statuses
        are in the totals too); and ``batch``: the files and batches counters
        (:meth:`~polars_azurechat.emulator._batch.BatchService.snapshot`).
        """
        return {**self._state.snapshot(), "batch": self.batches.snapshot()}

    def reset(self) -> None:
        """Zero the counters and empty the rate-limit windows.

        Issued tokens stay valid (:meth:`revoke_tokens` ends them); uploaded files and
        batches stay, only their counters are zeroed.
        """
        self._state.reset()
        self.batches.reset()

    def issue_token(self, ttl_s: float = 3600.0) -> str:
        """Issue a new Microsoft Entra ID (Azure AD) bearer token.

        Send it as ``Authorization: Bearer <token>`` (the ``azure_ad_token`` of
        ``openai.AzureOpenAI``). It is accepted, even with key auth disabled
        (``key_auth=False``), until it expires or :meth:`revoke_tokens` is called;
        after that the request gets Azure's Entra 401,
        ``{"statusCode": 401, "message": "Unauthorized. Access token is missing, ..."}``.
        Thread-safe; the emulator need not be running.

        Parameters
        ----------
        ttl_s
            How long the token is valid, in seconds on the emulator's clock
            (``settings.clock``, else ``time.monotonic``); ``math.inf`` never expires.

        Returns
        -------
        str
            An opaque token, ``"emu-"`` and 32 URL-safe random characters.

        Raises
        ------
        ValueError
            If ``ttl_s`` is not positive.

        Examples
        --------
        >>> import openai
        >>> with Emulator(key_auth=False) as emu:
        ...     client = openai.AzureOpenAI(
        ...         azure_endpoint=emu.url,
        ...         azure_ad_token=emu.issue_token(ttl_s=600),
        ...         api_version="2024-10-21",
        ...     )
        ...     reply = client.chat.completions.create(
        ...         model="gpt-4o-mini",
        ...         messages=[{"role": "user", "content": "What is 2 + 3?"}],
        ...     )
        ...     stats = emu.stats()
        >>> reply.choices[0].message.content, stats["tokens_issued"], stats["auth"]
        ('5', 1, {'key': 0, 'bearer': 1})
        """
        return self._state.issue_token(ttl_s)

    def revoke_tokens(self) -> None:
        """Revoke every token issued so far: each then gets Azure's Entra 401.

        Tokens issued afterwards are valid as usual.
        """
        self._state.revoke_tokens()

    def take_down(self, deployment: str, *, after_s: float = 0.0) -> None:
        """Make ``deployment`` answer every request with a 503 (from ``after_s`` on).

        Parameters
        ----------
        deployment
            The deployment name.
        after_s
            Seconds from now on the emulator's clock (0: at once).

        Examples
        --------
        >>> from polars_azurechat import ChatConfig, Completer, Deployment
        >>> with Emulator() as emu:
        ...     emu.take_down("ptu")
        ...     pool = [Deployment(name="ptu"), Deployment(name="paygo", priority=1)]
        ...     config = ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key)
        ...     with Completer(config=config, deployments=pool, max_attempts=2) as job:
        ...         answers = job.run(["What is 2 + 2?"])
        ...     per = emu.stats()["deployments"]
        >>> answers, per["ptu"]["statuses"], per["paygo"]["statuses"]
        (['4'], {'503': 1}, {'200': 1})
        """
        lane = self._state.lane(deployment)
        lane.down_from = self._state.clock() + after_s

    def bring_up(self, deployment: str) -> None:
        """Undo :meth:`take_down` (and ``down_after_s``) for ``deployment``."""
        self._state.lane(deployment).down_from = None

    def start(self) -> Self:
        """Start serving on a background thread; returns once the port is bound."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name="azurechat-emulator", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result()
        except BaseException:  # the port is taken, say: no thread is left behind
            self.stop()
            raise
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(
            _App(self._state, self.batches).app, access_log=None, shutdown_timeout=0.1
        )
        await self._runner.setup()
        _warn_if_exposed(self.host, self.settings)
        site = web.TCPSite(self._runner, self.host, self.port, backlog=4096)
        await site.start()
        if self.port == 0 and self._runner.addresses:
            self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        """Stop serving and end the thread."""
        if self._loop is None or self._thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(
                self._runner.cleanup(), self._loop
            ).result()
        # requests still held (a hang fault, a long latency) end now, not when the
        # collector finds their tasks ("Task was destroyed but it is pending!")
        asyncio.run_coroutine_threadsafe(_cancel_the_rest(), self._loop).result()
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
    """Serve the emulator in the foreground until interrupted (used by the CLI).

    Parameters
    ----------
    settings
        Behaviour; keyword arguments override its fields.
    host, port
        Where to listen.
    **overrides
        Fields of :class:`EmulatorSettings` to override.
    """
    settings = dataclasses.replace(settings or EmulatorSettings(), **overrides)
    state = State(settings)
    _warn_if_exposed(host, settings)
    web.run_app(
        _App(state).app,
        host=host,
        port=port,
        access_log=None,
        print=None,
        shutdown_timeout=0.1,
        backlog=4096,
    )


async def _cancel_the_rest() -> None:
    """Cancel every other task on the running loop and wait for them to end.

    (The emulator imports nothing of the client: ``engine.loop`` has its own.)
    """
    me = asyncio.current_task()
    rest = [t for t in asyncio.all_tasks() if t is not me]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


def _warn_if_exposed(host: str, settings: EmulatorSettings) -> None:
    warning = exposure_warning(host, settings)
    if warning is not None:
        logger.warning("%s", warning)
