"""Send through a user's own openai client (``client=``). Not meant for outside use."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Mapping
from typing import Any

from polars_azurechat.config import V1
from polars_azurechat.transport.http import (
    Api,
    Completion,
    mark_emptied,
    parse_completion,
)
from polars_azurechat.transport.responses import parse_response, responses_params
from polars_azurechat.transport.status import sdk_errors

__all__ = ["SdkTransport", "client_api_version"]


class SdkTransport:
    """Send through a user's own openai client (``client=``).

    An ``openai.AzureOpenAI``, or an ``openai.OpenAI`` whose ``base_url`` is a
    resource's v1 API (``https://<resource>.openai.azure.com/openai/v1/``).

    The client is used with ``max_retries=0`` (the engine owns retries) and the
    engine's ``timeout_s``; calls run on a thread pool as wide as ``max_concurrency``.
    Slower than :class:`Transport` (~2.5 ms CPU per request), but it honours whatever the
    client was built with: Entra ID token providers, proxies, custom ``http_client``.
    """

    def __init__(
        self, client: Any, *, deployment: str, timeout_s: float, api: Api = "chat"
    ) -> None:

        self.api_version = client_api_version(client)
        self.api = api
        if api == "responses" and self.api_version != V1:
            msg = (
                "api='responses' needs an openai.OpenAI client on the v1 API "
                "(base_url='https://<resource>.openai.azure.com/openai/v1/')"
            )
            raise TypeError(msg)
        self._client = client.with_options(max_retries=0, timeout=timeout_s)
        self.deployment = deployment
        self._host = str(client.base_url.host)
        self._timeout_s = timeout_s
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def endpoint_host(self) -> str:
        """Host of the client's endpoint (safe to show)."""
        return self._host

    async def open(self, limit: int) -> None:
        """Start the thread pool the blocking client runs on, unless it runs."""
        if self._pool is not None:
            return
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=limit, thread_name_prefix="polars-azurechat-sdk"
        )

    async def close(self) -> None:
        """Stop the thread pool."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def send(
        self, body: Mapping[str, Any], timeout_s: float | None = None
    ) -> Completion:
        """Send one request with the SDK; map its errors to ours (``timeout_s`` unused)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._send_blocking, body)

    def _send_blocking(self, body: Mapping[str, Any]) -> Completion:
        started = time.perf_counter()
        with sdk_errors(self.deployment, self._host, timeout_s=self._timeout_s):
            if self.api == "responses":
                fields = {k: v for k, v in body.items() if k != "messages"}
                raw = self._client.responses.with_raw_response.create(
                    model=self.deployment,
                    input=body["messages"],
                    **responses_params(fields),
                )
            else:
                raw = self._client.chat.completions.with_raw_response.create(
                    model=self.deployment, **body
                )
        latency_ms = (time.perf_counter() - started) * 1000
        parse = parse_response if self.api == "responses" else parse_completion
        completion = parse(raw.content, raw.headers)
        mark_emptied(completion)
        completion.deployment = self.deployment
        completion.latency_ms = round(latency_ms, 3)
        return completion


def client_api_version(client: Any) -> str:
    """The api-version a user's client speaks: its own, or ``"v1"`` for the v1 API.

    Raises
    ------
    TypeError
        ``client`` is not a synchronous ``openai.AzureOpenAI``, nor an ``openai.OpenAI``
        whose ``base_url`` ends in ``/openai/v1/``.
    """
    import openai

    if isinstance(client, openai.AzureOpenAI):
        return str(client.default_query.get("api-version", ""))
    if isinstance(client, openai.OpenAI) and str(client.base_url).rstrip("/").endswith(
        "/openai/v1"
    ):
        return V1
    msg = (
        "client must be an openai.AzureOpenAI, or an openai.OpenAI with "
        "base_url='https://<resource>.openai.azure.com/openai/v1/' (a synchronous "
        f"client), not {type(client).__name__}"
    )
    if isinstance(client, openai.OpenAI):
        msg += f" with base_url at {client.base_url.host}{client.base_url.path}"
    raise TypeError(msg)
