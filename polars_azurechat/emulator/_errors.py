"""Azure's error bodies, as the emulator sends them."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

__all__ = [
    "ACCESS_DENIED",
    "ENTRA_UNAUTHORIZED",
    "KEY_AUTH_DISABLED",
    "V1_PREFIX",
    "api_version_problem",
    "content_filter_response",
    "entra_unauthorized_response",
    "error_response",
    "flex_busy_response",
    "key_auth_disabled_response",
    "output_filter_results",
    "prompt_filter_results",
    "rate_limit_response",
    "responses_content_filters",
]

ACCESS_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API "
    "endpoint for your resource."
)


ENTRA_UNAUTHORIZED = (
    "Unauthorized. Access token is missing, invalid, audience is incorrect "
    "(https://cognitiveservices.azure.com), or have expired."
)

KEY_AUTH_DISABLED = "Key based authentication is disabled for this resource."


def error_response(
    http_status: int, code: str | None, message: str, **extra: Any
) -> web.Response:
    """``{"error": {"code": ..., "message": ..., **extra}}`` with ``http_status``."""
    body: dict[str, Any] = {"error": {"code": code, "message": message, **extra}}
    return web.json_response(body, status=http_status)


def flex_busy_response(retry_after_ms: int | None) -> web.Response:
    """The flex tier's 429 when it has no capacity now: not a quota's (no limit named).

    ``retry_after_ms``: sent as ``retry-after-ms`` when set.
    """
    response = error_response(
        429,
        "resource_unavailable",
        "Resource unavailable: the flex processing tier has no capacity for this "
        "request now. Retry later, or send it on the default tier.",
    )
    if retry_after_ms is not None:
        response.headers["retry-after-ms"] = str(retry_after_ms)
    return response


def rate_limit_response(
    wait_ms: int,
    limited_by: str | None,
    headers: dict[str, str],
    *,
    operation: str = "ChatCompletions_Create",
) -> web.Response:
    """Azure's 429 for a quota, with ``retry-after-ms`` and ``Retry-After``.

    Parameters
    ----------
    wait_ms
        The wait in whole milliseconds (``Retry-After`` rounds it up to seconds).
    limited_by
        ``"requests"`` or ``"tokens"``: which limit the message names.
    headers
        More headers to send (the ``x-ratelimit-*`` ones).
    operation
        The operation the message names (``Embeddings_Create`` for embeddings).
    """
    seconds = math.ceil(wait_ms / 1000)
    which = "token" if limited_by == "tokens" else "call"
    response = error_response(
        429,
        "429",
        f"Requests to the {operation} Operation have exceeded the {which} "
        "rate limit of your current pricing tier. Please retry after "
        f"{seconds} second{'' if seconds == 1 else 's'}.",
    )
    response.headers.update(headers)
    response.headers["retry-after-ms"] = str(wait_ms)
    response.headers["Retry-After"] = str(seconds)
    return response


#: The harm categories Azure rates every prompt and answer in.
HARMS = ("hate", "self_harm", "sexual", "violence")


def _harms(filtered: str | None = None) -> dict[str, dict[str, object]]:
    """The harm categories, all safe but ``filtered`` (filtered, severity high)."""
    return {
        name: {
            "filtered": name == filtered,
            "severity": "high" if name == filtered else "safe",
        }
        for name in HARMS
    }


def output_filter_results(
    filtered: bool, *, protected_material: bool = False
) -> dict[str, dict[str, object]]:
    """A choice's ``content_filter_results``.

    Violence filtered when ``filtered``; ``protected_material_text`` detected (not
    filtered) when ``protected_material``.
    """
    results = _harms("violence" if filtered else None)
    results["protected_material_code"] = {"filtered": False, "detected": False}
    results["protected_material_text"] = {
        "filtered": False,
        "detected": protected_material,
    }
    return dict(sorted(results.items()))


def prompt_filter_results(*, jailbreak: bool = False) -> list[dict[str, Any]]:
    """An answer's ``prompt_filter_results``: the prompt's, as index 0.

    ``jailbreak``: a user prompt attack was detected but not filtered (Prompt
    Shields in annotate mode), ``{"filtered": false, "detected": true}``.
    """
    results: dict[str, dict[str, object]] = {
        **_harms(),
        "jailbreak": {"filtered": False, "detected": jailbreak},
    }
    return [
        {"prompt_index": 0, "content_filter_results": dict(sorted(results.items()))}
    ]


def responses_content_filters(
    *, jailbreak: bool = False, output_filtered: bool = False
) -> list[dict[str, Any]]:
    """A Responses API answer's ``content_filters``: the prompt's, then the output's.

    Azure's Responses API puts what chat completions splits between
    ``prompt_filter_results`` and each choice's ``content_filter_results`` in one
    top-level list, an item per source (``source_type`` ``prompt`` or
    ``completion``), each with ``blocked`` and its ``content_filter_results``
    (the shape of Azure's REST spec sample, azure-rest-api-specs PR 42141, and of its
    Responses content-filter error body).
    """
    [prompt] = prompt_filter_results(jailbreak=jailbreak)
    return [
        {
            "blocked": False,
            "source_type": "prompt",
            "content_filter_results": prompt["content_filter_results"],
        },
        {
            "blocked": output_filtered,
            "source_type": "completion",
            "content_filter_results": output_filter_results(output_filtered),
        },
    ]


def content_filter_response(*, jailbreak: bool = False) -> web.Response:
    """Azure's 400 ``content_filter`` body: violence filtered, or a jailbreak."""
    categories: dict[str, dict[str, object]] = _harms(None if jailbreak else "violence")
    if jailbreak:
        categories["jailbreak"] = {"filtered": True, "detected": True}
    return error_response(
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


def entra_unauthorized_response() -> web.Response:
    """Azure's 401 for a bad Entra ID token: ``{"statusCode": 401, "message": ...}``.

    Not the usual ``{"error": ...}`` shape: Azure answers a missing, unknown or expired
    bearer token this way.
    """
    return web.json_response(
        {"statusCode": 401, "message": ENTRA_UNAUTHORIZED}, status=401
    )


def key_auth_disabled_response() -> web.Response:
    """Azure's 403 ``AuthenticationTypeDisabled``: a key sent where only tokens are taken."""
    return error_response(403, "AuthenticationTypeDisabled", KEY_AUTH_DISABLED)


#: The ``api-version`` values the v1 routes take (none at all is the usual).
V1_API_VERSIONS = frozenset({"v1", "preview", "latest"})

#: The path every route of the v1 API starts with.
V1_PREFIX = "/openai/v1/"


def api_version_problem(request: web.Request) -> web.Response | None:
    """Azure's answer to a request whose ``api-version`` its route does not take.

    The classic routes (``/openai/deployments/...``, ``/openai/files``, ...) need one:
    without it Azure answers 404. The v1 routes (``/openai/v1/...``) need none, and take
    ``preview`` (or ``v1``, ``latest``); a dated version such as ``2024-10-21`` is
    refused with a 400 ``API version not supported``.
    """
    version = request.query.get("api-version")
    if request.path.startswith(V1_PREFIX):
        if version is None or version in V1_API_VERSIONS:
            return None
        return error_response(400, "BadRequest", "API version not supported")
    if not version:
        return error_response(404, "404", "Resource not found")
    return None
