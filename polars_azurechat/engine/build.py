"""A job's parts, built from its options. Internal.

:func:`build_engine` turns a job's options into its engine: the cache (refused first,
before anything is sent), one transport and limiter per deployment (a pool of one for a
single deployment), the spending cap, and the :class:`~polars_azurechat.engine.core.ChatEngine`
that holds them. :class:`~polars_azurechat.Completer` calls it once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from polars_azurechat.config import ENV_DEPLOYMENT, ChatConfig
from polars_azurechat.deployments import Deployment
from polars_azurechat.engine.core import ChatEngine
from polars_azurechat.engine.frontdoor import max_tokens_of
from polars_azurechat.errors import ConfigurationError
from polars_azurechat.summary import Prices, SpendingCap, model_for, price_for
from polars_azurechat.transport.http import Api, ChatTransport, Transport
from polars_azurechat.transport.pool import Pool, Route
from polars_azurechat.transport.ratelimit import RateLimiter
from polars_azurechat.transport.responses import responses_params
from polars_azurechat.transport.sdk import SdkTransport

if TYPE_CHECKING:
    from polars_azurechat.engine.frontdoor import AnswerCache
    from polars_azurechat.engine.texts import EmbeddingSpec
    from polars_azurechat.options import ChatOptions
    from polars_azurechat.schema.output import OutputSchema

logger = logging.getLogger(__name__)

#: An embeddings request's time bound (``timeout_s`` unset).
EMBEDDING_TIMEOUT_S = 60.0


def build_engine(
    opts: ChatOptions,
    fields: Mapping[str, Any],
    schema: OutputSchema | None,
    config: ChatConfig | None,
    client: Any,
    prices: Prices,
    embedding: EmbeddingSpec | None = None,
) -> tuple[ChatEngine, SpendingCap | None, ChatConfig | None]:
    """The engine of a job with options ``opts`` and body ``fields``; its cap; its config.

    ``config`` and ``client`` are the job's (at most one of them); without either,
    the endpoint and credential come from the environment (the config returned).
    ``embedding``: an embeddings job (its requests go to ``/embeddings``).
    """
    max_tokens = max_tokens_of(fields)
    if max_tokens is None and opts.tokens_per_minute is not None and not embedding:
        logger.warning(
            "tokens_per_minute is set but max_tokens is not: Azure then reserves the "
            "model's whole context per request; set max_tokens"
        )
    cache = open_cache(opts.cache)  # an unusable path is refused before anything else
    if client is not None and config is not None:
        msg = "give config= or client=, not both"
        raise ValueError(msg)
    if client is None and config is None and opts.deployments is None:
        config = ChatConfig.from_env()
    if opts.api == "responses":
        responses_params(fields)  # a field it has no equivalent for: refused now
    reasoning = "reasoning_effort" in fields or "max_completion_tokens" in fields
    timeout_s = opts.attempt_timeout_s(max_tokens, reasoning=reasoning)
    api: Api = opts.api
    if embedding is not None:  # no answer to wait for: 60 s for up to 2,048 inputs
        timeout_s, api = opts.timeout_s or EMBEDDING_TIMEOUT_S, "embeddings"
    deployments = _deployments(opts, config, client)
    pool = _pool(opts, deployments, config, client, timeout_s, api)
    cap = None
    if opts.max_cost_usd is not None:
        cap = _spending_cap(
            opts.max_cost_usd, pool.primary.transport.deployment, prices
        )
    engine = ChatEngine(
        pool.primary.transport,
        pool=pool,
        params=fields,
        max_concurrency=opts.max_concurrency,
        max_attempts=opts.max_attempts,
        deadline_s=opts.deadline_s,
        cache=cache,
        on_truncated=opts.on_truncated,
        flex_fallback=opts.flex_fallback,
        schema=schema,
        spending_cap=cap,
        embedding=embedding,
    )
    engine.sender.repair = opts.repair  # how an invalid typed answer is sent again
    return engine, cap, config


def open_cache(where: Any) -> AnswerCache | None:
    """The answer cache ``cache=`` names: a Redis URL, a SQLite file, or none."""
    from polars_azurechat.store.redis import RedisCache, is_redis_url
    from polars_azurechat.store.sqlite import SqliteCache

    if is_redis_url(where):
        return RedisCache(str(where))
    return None if where is None else SqliteCache(where)


def _spending_cap(max_cost_usd: float, deployment: str, prices: Prices) -> SpendingCap:
    """The job's cap, priced by its deployment's name (refused without a price)."""
    price = price_for(deployment, prices)
    model = model_for(deployment, prices)
    if price is None:
        named = f"it runs {model!r}" if model != deployment else "its name"
        msg = (
            f"max_cost_usd needs the price of deployment {deployment!r}, and {named} "
            "starts with no model of the price table (polars_azurechat.summary.PRICES): "
            f"name its model, Completer(prices={{{deployment!r}: 'gpt-4o-mini'}}), or "
            f"give its price, Completer(prices={{{deployment!r}: (input, output)}}) in "
            f"USD per million tokens (CLI: --price {deployment}=gpt-4o-mini)"
        )
        raise ConfigurationError(msg)
    return SpendingCap(max_cost_usd, price, model)


def _deployments(
    opts: ChatOptions, config: ChatConfig | None, client: Any
) -> tuple[Deployment, ...]:
    """The job's deployments: ``deployments=``, or a pool of one.

    The one is the deployment that ``deployment=`` (or the environment) names, with
    the job's quotas.
    """
    if opts.deployments is not None:
        return tuple(opts.deployments)
    if client is not None:
        name = opts.deployment or os.environ.get(ENV_DEPLOYMENT)
        if not name:
            msg = f"no deployment: pass deployment= or set {ENV_DEPLOYMENT}"
            raise ConfigurationError(msg)
    else:
        assert config is not None  # noqa: S101 - resolved by the caller
        name = config.resolve_deployment(opts.deployment)
    return (
        Deployment(
            name=name,
            requests_per_minute=opts.requests_per_minute,
            tokens_per_minute=opts.tokens_per_minute,
        ),
    )


def _limiter(
    url: str | None,
    transport: ChatTransport,
    requests_per_minute: float | None,
    tokens_per_minute: float | None,
) -> RateLimiter:
    """The deployment's limiter: this process's own, or one shared through Redis."""
    if url is None:
        return RateLimiter(
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
        )
    from polars_azurechat.transport.redis_limiter import shared_limiter

    return shared_limiter(
        url,
        scope=f"{transport.endpoint_host}/{transport.deployment}",
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
    )


def _pool(
    opts: ChatOptions,
    deployments: tuple[Deployment, ...],
    config: ChatConfig | None,
    client: Any,
    timeout_s: float,
    api: Api,
) -> Pool:
    """The routes of ``deployments``: their transports and limiters.

    Deployments without their own credential share the job's (one token cache).
    """
    routes = []
    shared_auth = None
    for d in deployments:
        if client is not None:
            if d.endpoint is not None or d.has_credential:
                msg = (
                    f"Deployment {d.name!r}: with client=, deployments take the client's "
                    "endpoint and credential (give config= to set them per deployment)"
                )
                raise ConfigurationError(msg)
            transport: ChatTransport = SdkTransport(
                client, deployment=d.name, timeout_s=timeout_s, api=api
            )
            cfg = None
        else:
            if config is None and (d.endpoint is None or not d.has_credential):
                config = ChatConfig.from_env()
            cfg = d.config(config)
            if d.has_credential:
                auth = cfg.auth()
            else:
                assert config is not None  # noqa: S101 - read above
                shared_auth = shared_auth or config.auth()
                auth = shared_auth
            transport = Transport(
                endpoint=cfg.azure_endpoint,
                deployment=d.name,
                api_version=cfg.api_version,
                auth=auth,
                timeout_s=timeout_s,
                api=api,
            )
        limiter = _limiter(
            opts.limiter,
            transport,
            d.requests_per_minute,
            d.tokens_per_minute,
        )
        routes.append(Route(d.name, transport, limiter, priority=d.priority))
    return Pool(routes, clock=time.monotonic, sleep=asyncio.sleep)
