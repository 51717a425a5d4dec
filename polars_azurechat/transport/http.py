"""Send one chat-completions request over HTTP. Not meant for outside use.

The hot path uses one ``aiohttp.ClientSession`` per job on the process's event loop,
opened on first use: measured on 2 cores it costs ~0.15 ms of client CPU per request,
against ~2.5 ms for the openai SDK (docs/design.md). An error status is mapped to
:mod:`polars_azurechat.errors` once, by :func:`~.status.status_error`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol
from urllib.parse import quote

import aiohttp

from polars_azurechat._json import messages_json
from polars_azurechat._types import REASONING_LENGTH
from polars_azurechat.config import V1, host_of, surface_of
from polars_azurechat.errors import (
    APIConnectionError,
    APITimeoutError,
    MalformedResponseError,
)
from polars_azurechat.transport.auth import KeyAuth, TokenAuth
from polars_azurechat.transport.embeddings import parse_embeddings
from polars_azurechat.transport.logprobs import token_logprobs
from polars_azurechat.transport.responses import (
    parse_response,
    responses_input,
    responses_params,
)
from polars_azurechat.transport.status import flagged, status_error

logger = logging.getLogger(__name__)

#: Which API a job's requests go to: chat completions, the Responses API, or
#: embeddings (``/embeddings``: many texts per request, see :mod:`.embeddings`).
Api = Literal["chat", "responses", "embeddings"]


class ChatTransport(Protocol):
    """What the engine needs from a way of sending requests."""

    deployment: str
    api_version: str

    @property
    def endpoint_host(self) -> str:
        """The host requests go to (for messages; never a secret)."""

    async def open(self, limit: int) -> None:
        """Open the connection pool, ``limit`` connections at most."""

    async def close(self) -> None:
        """Close the connection pool."""

    async def send(
        self, body: Mapping[str, Any], timeout_s: float | None = None
    ) -> Completion:
        """Send one request body and read its answer (or raise the mapped error)."""


@dataclasses.dataclass(slots=True)
class Completion:
    """What a successful response carried."""

    content: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    remaining_requests: int | None
    remaining_tokens: int | None
    model: str | None = None
    #: Content-filter categories flagged on the completion (``content_filter_results``).
    filtered: tuple[str, ...] = ()
    limit_requests: int | None = None
    limit_tokens: int | None = None
    #: ``message.refusal``: the model refused a structured-output request
    refusal: str | None = None
    #: Azure's ``apim-request-id`` (or ``x-request-id``) header
    request_id: str | None = None
    system_fingerprint: str | None = None
    #: the deployment that answered (set by the transport)
    deployment: str | None = None
    #: the successful attempt's time on the wire, in milliseconds
    latency_ms: float | None = None
    #: the Responses API's response id (``resp_...``)
    response_id: str | None = None
    #: ``usage.completion_tokens_details.reasoning_tokens`` (part of completion_tokens)
    reasoning_tokens: int | None = None
    #: ``usage.prompt_tokens_details.cached_tokens`` (part of prompt_tokens)
    cached_tokens: int | None = None
    #: the processing tier that answered (``default``, ``flex``, ``priority``)
    service_tier: str | None = None
    #: prompt content-filter categories flagged (``prompt_filter_results``):
    #: ``"jailbreak"`` when filtered, ``"jailbreak:detected"`` when only detected
    prompt_filter: tuple[str, ...] = ()
    #: served by the deployment's spillover (standard) deployment, whose
    #: ``x-ratelimit-*`` headers these are (``x-ms-spillover-from-*``)
    spilled_over: bool = False
    #: an embeddings answer's vectors, in input order: little-endian float32 bytes,
    #: base64-encoded (as ``encoding_format="base64"`` sends them)
    vectors: list[str] | None = None
    #: ``choices[0].logprobs.content`` as ``(token, logprob)`` pairs, when asked
    #: (``logprobs=True``); ``None`` otherwise
    logprobs: tuple[tuple[str, float], ...] | None = None


class Transport:
    """Posts chat-completions bodies to one Azure deployment.

    The credential comes from ``auth`` per request (a key, or an Entra ID token kept
    fresh); nothing here logs or formats it. Redirects are never followed (aiohttp
    would carry the ``api-key`` header to any host a 3xx names): a 3xx is a
    :class:`~polars_azurechat.errors.RedirectError`. On the classic routes the
    deployment name is percent-escaped into the URL path; with ``api_version="v1"``
    requests go to ``<endpoint>/openai/v1/chat/completions`` and the deployment is
    the body's ``model``.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        deployment: str,
        api_version: str,
        auth: KeyAuth | TokenAuth,
        timeout_s: float,
        api: Api = "chat",
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.deployment = deployment
        self.api = api
        # the Responses API is the v1 API's
        self.api_version = V1 if api == "responses" else api_version
        self.surface = surface_of(self.api_version)
        self._parse = _PARSERS.get(api, parse_completion)
        self._messages = b'"input":' if api == "responses" else b'"messages":'
        #: the messages as this API takes them (the Responses API names parts its way)
        self._input: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] = (
            responses_input if api == "responses" else _same
        )
        if self.surface == V1:  # the deployment goes in the body's "model"
            path = _V1_PATHS.get(api, "chat/completions")
            self.url = f"{self.endpoint}/openai/v1/{path}"
            self._query: dict[str, str] = {}
            self._model: dict[str, Any] = {"model": deployment}
        else:
            path = "embeddings" if api == "embeddings" else "chat/completions"
            self.url = (
                f"{self.endpoint}/openai/deployments/{quote(deployment, safe='')}"
                f"/{path}"
            )
            self._query = {"api-version": api_version}
            self._model = {}
        self._headers = {"Content-Type": "application/json"}
        self.auth = auth
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        # the body's fields other than messages, encoded once: a typed answer's
        # schema is the same in every request and its JSON is most of the body
        self._fixed: tuple[tuple[str, Any], ...] = ()
        self._fixed_json = b""

    async def open(self, limit: int) -> None:
        """Create the shared session on the running loop, unless it is open."""
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=limit, limit_per_host=limit, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=self._timeout,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, body: Mapping[str, Any], timeout_s: float | None = None
    ) -> Completion:
        """Send one request; return the completion or raise one of our errors.

        ``timeout_s`` shortens this attempt's time bound (a run's deadline is near).
        """
        session = self._session
        assert session is not None  # noqa: S101 - open() runs first
        data = self._encode(body)
        timeout = self._timeout
        if timeout_s is not None and timeout_s < (timeout.total or float("inf")):
            timeout = aiohttp.ClientTimeout(total=max(0.001, timeout_s))
        auth = await self.auth.headers()
        started = time.perf_counter()
        status, headers, raw = await self._post(session, data, timeout, auth)
        if status == 401 and self.auth.refreshable and await self.auth.refresh(auth):
            # the token may have expired on the way: once more with a fresh one
            logger.info("401 with an Entra ID token: refreshed it, sending again")
            auth = await self.auth.headers()
            started = time.perf_counter()
            status, headers, raw = await self._post(session, data, timeout, auth)
        latency_ms = (time.perf_counter() - started) * 1000
        completion = read_answer(
            status, headers, raw, self.deployment, self.endpoint_host, self._parse
        )
        completion.latency_ms = round(latency_ms, 3)
        return completion

    def _encode(self, body: Mapping[str, Any]) -> bytes:
        """The request body as JSON; the fields besides ``messages`` encoded once.

        They are the job's parameters, the same objects in every request (the engine
        never changes them): while each is the very object seen before, its encoding
        is reused.
        """
        if "messages" not in body:
            return _dumps({**self._model, **self._fields(body)})
        fixed = self._fixed
        n = 0
        for key, value in body.items():
            if key == "messages":
                continue
            if n >= len(fixed) or fixed[n][0] != key or fixed[n][1] is not value:
                break
            n += 1
        else:
            if n == len(fixed) and self._fixed_json:
                messages = self._input(body["messages"])
                return b"".join((self._fixed_json, messages_json(messages), b"}"))
        # first use, or other parameters: encode them (and keep the objects alive,
        # so their identity cannot be taken by another object)
        self._fixed = tuple((k, v) for k, v in body.items() if k != "messages")
        fields = self._fields(dict(self._fixed))
        head = _dumps({**self._model, **fields})[:-1]  # no closing brace
        self._fixed_json = head + (b"," if len(head) > 1 else b"") + self._messages
        messages = self._input(body["messages"])
        return b"".join((self._fixed_json, messages_json(messages), b"}"))

    def _fields(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """The body's fields besides the messages, as this API names them."""
        return responses_params(params) if self.api == "responses" else params

    async def _post(
        self,
        session: aiohttp.ClientSession,
        data: bytes,
        timeout: aiohttp.ClientTimeout,
        auth: Mapping[str, str],
    ) -> tuple[int, Mapping[str, str], bytes]:
        try:
            async with session.post(
                self.url,
                params=self._query,
                data=data,
                timeout=timeout,
                headers=auth,
                allow_redirects=False,  # the key goes to this endpoint only
            ) as resp:
                return resp.status, resp.headers, await resp.read()
        except TimeoutError as exc:
            msg = f"no answer within {timeout.total:.3g} s"
            raise APITimeoutError(msg) from exc
        except aiohttp.ClientError as exc:
            msg = f"connection to {self.endpoint_host} failed: {type(exc).__name__}"
            raise APIConnectionError(msg) from exc

    @property
    def endpoint_host(self) -> str:
        """Host part of the endpoint (safe to show: never a user name or password)."""
        return host_of(self.endpoint)


#: How each API's 200 body is read, and its path on the v1 surface.
_PARSERS: dict[str, Callable[[bytes, Mapping[str, str]], Completion]] = {
    "responses": parse_response,
    "embeddings": parse_embeddings,
}
_V1_PATHS = {"responses": "responses", "embeddings": "embeddings"}


def _same(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return messages


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def read_answer(
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    deployment: str,
    host: str,
    parse: Callable[[bytes, Mapping[str, str]], Completion] | None = None,
) -> Completion:
    """Map one HTTP answer to a :class:`Completion`, or raise one of our errors.

    The one reading of an answer (status, headers, body) shared by the aiohttp
    transport and :class:`polars_azurechat.testing.MemoryTransport`; ``headers`` are
    looked up by lower-case name. ``parse`` reads a 200's body (default: a chat
    completion).
    """
    if status != 200:
        raise status_error(status, headers, raw, deployment, host)
    completion = (parse or parse_completion)(raw, headers)
    mark_emptied(completion)
    completion.deployment = deployment
    return completion


def mark_emptied(completion: Completion) -> None:
    """An answer a reasoning model left empty gets ``finish_reason="reasoning_length"``.

    Azure says ``length`` with no text when reasoning spent the whole
    ``max_completion_tokens``: not an answer cut short but none at all.
    """
    if (
        completion.finish_reason == "length"
        and not completion.content
        and (completion.reasoning_tokens or 0) > 0
    ):
        completion.finish_reason = REASONING_LENGTH


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _prompt_flags(results: Any) -> tuple[str, ...]:
    """The prompt's flagged filter categories, from Azure's ``prompt_filter_results``.

    A category ``filtered`` is named as is; one only ``detected`` (a jailbreak
    attempt let through, protected material) as ``"<name>:detected"``.

    Examples
    --------
    >>> _prompt_flags(
    ...     [
    ...         {
    ...             "prompt_index": 0,
    ...             "content_filter_results": {
    ...                 "hate": {"filtered": False, "severity": "safe"},
    ...                 "jailbreak": {"filtered": False, "detected": True},
    ...             },
    ...         }
    ...     ]
    ... )
    ('jailbreak:detected',)
    """
    if not isinstance(results, list):
        return ()
    flags: set[str] = set()
    for entry in results:
        found = entry.get("content_filter_results") if isinstance(entry, dict) else None
        if not isinstance(found, dict):
            continue
        for name, value in found.items():
            if not isinstance(value, dict):
                continue
            if value.get("filtered"):
                flags.add(name)
            elif value.get("detected"):
                flags.add(f"{name}:detected")
    return tuple(sorted(flags))


def _spilled_over(headers: Mapping[str, str]) -> bool:
    return any(str(name).lower().startswith("x-ms-spillover-from") for name in headers)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def parse_completion(raw: bytes, headers: Mapping[str, str]) -> Completion:
    """Read a chat completion body; a body that is not one is a malformed response."""
    try:
        body = json.loads(raw)
        choice = body["choices"][0]
        message = choice["message"]
        usage = body.get("usage") or {}
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise TypeError("content is not a string")  # noqa: TRY301
        refusal = message.get("refusal")
        fingerprint = body.get("system_fingerprint")
        out_details = usage.get("completion_tokens_details") or {}
        in_details = usage.get("prompt_tokens_details") or {}
        return Completion(
            content=content,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            remaining_requests=_int_header(headers, "x-ratelimit-remaining-requests"),
            remaining_tokens=_int_header(headers, "x-ratelimit-remaining-tokens"),
            model=body.get("model"),
            filtered=flagged(choice.get("content_filter_results")),
            limit_requests=_int_header(headers, "x-ratelimit-limit-requests"),
            limit_tokens=_int_header(headers, "x-ratelimit-limit-tokens"),
            refusal=refusal if isinstance(refusal, str) else None,
            request_id=headers.get("apim-request-id") or headers.get("x-request-id"),
            system_fingerprint=fingerprint if isinstance(fingerprint, str) else None,
            reasoning_tokens=out_details.get("reasoning_tokens"),
            cached_tokens=in_details.get("cached_tokens"),
            service_tier=_str_or_none(body.get("service_tier")),
            prompt_filter=_prompt_flags(body.get("prompt_filter_results")),
            spilled_over=_spilled_over(headers),
            logprobs=token_logprobs(choice.get("logprobs")),
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        msg = f"200 with a body that is not a chat completion ({type(exc).__name__})"
        raise MalformedResponseError(msg) from exc
