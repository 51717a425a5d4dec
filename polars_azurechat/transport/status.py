"""What an error status means: Azure's answer mapped to one of our exceptions.

Not meant for outside use. :func:`status_error` reads a status and Azure's error body
(online, and each line of a Batch job's output), :func:`sdk_errors` does the same for
the openai SDK's errors (a user's own client, the Batch API's files). A 400 is read by
its code or ``param``: a parameter or a kind of content part that every row of the job
would send again (:class:`~polars_azurechat.errors.UnsupportedParameterError`), a
content filter, a context too long, or a plain invalid request.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from polars_azurechat.config import host_of
from polars_azurechat.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ContentFilterError,
    ContextLengthError,
    NotFoundError,
    RateLimitError,
    RedirectError,
    ServerError,
    UnsupportedParameterError,
)
from polars_azurechat.options import BODY_FIELDS

#: The longest server-requested delay we honour (openai-python uses 60 s; Azure asks less).
MAX_RETRY_AFTER_S = 120.0


def status_error(
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    deployment: str,
    host: str,
    *,
    batch: bool = False,
) -> APIStatusError:
    """Map an error status and Azure's error body to one of our exceptions.

    ``batch``: a line of a Batch job's output. A 400 that every row would repeat
    then says so, not that the run stops (Azure has answered every line already).
    """
    body: Any
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if err is None and isinstance(body, dict) and "statusCode" in body:
        err = body  # Entra ID's own shape: {"statusCode": 401, "message": ...}
    err = err if isinstance(err, dict) else {}
    code = err.get("code")
    code = str(code) if code is not None else None
    server_msg = str(err.get("message") or raw[:200].decode(errors="replace")).strip()
    kw: dict[str, Any] = {
        "status_code": status,
        "request_id": headers.get("apim-request-id") or headers.get("x-request-id"),
        "code": code,
        "body": body,
        "retry_after_s": retry_after_s(headers),
    }
    where = f"deployment {deployment!r} at {host}"
    if 300 <= status < 400:
        return redirect_error(status, headers, where, kw)
    if kw["request_id"]:
        server_msg = f"{server_msg} (request id {kw['request_id']})"
    if status == 429:
        return RateLimitError(f"429 rate limited on {where}: {server_msg}", **kw)
    if status == 403 and code == "AuthenticationTypeDisabled":
        return AuthenticationError(
            f"403 key authentication is disabled on {where}: use Microsoft Entra ID "
            "(ChatConfig(credential=...) or azure_ad_token_provider=..., or install "
            "'polars-azurechat[azure]' and leave AZURE_OPENAI_API_KEY unset for "
            f"DefaultAzureCredential). Azure said: {server_msg}",
            **kw,
        )
    if status == 401 and "statusCode" in (body or {}):
        return AuthenticationError(
            f"401 the Entra ID token was refused by {where} even after a refresh: "
            "check that the identity has the 'Cognitive Services OpenAI User' role "
            f"on this resource. Azure said: {server_msg}",
            **kw,
        )
    if status in (401, 403):
        return AuthenticationError(
            f"{status} access denied by {where}: check AZURE_OPENAI_API_KEY "
            f"(or the token) and that the key belongs to this endpoint. "
            f"Azure said: {server_msg}",
            **kw,
        )
    if status == 404:
        return NotFoundError(
            f"404 not found: check the deployment name, the endpoint and "
            f"OPENAI_API_VERSION for {where}. Azure said: {server_msg}",
            **kw,
        )
    repeats = (
        "every line of the Batch job repeats it"
        if batch
        else "the run stops: every row would repeat it"
    )
    if status == 400 and (
        refused := _refused(err, code, server_msg, where, kw, repeats)
    ):
        return refused
    if status == 400 or (400 <= status < 500 and status not in (408, 409)):
        return BadRequestError(f"{status} invalid request: {server_msg}", **kw)
    return ServerError(f"{status} server error from {where}: {server_msg}", **kw)


def _refused(
    err: Mapping[str, Any],
    code: str | None,
    server_msg: str,
    where: str,
    kw: dict[str, Any],
    repeats: str,
) -> APIStatusError | None:
    """The 400s read by their code or ``param``; ``None``: a plain invalid request.

    ``repeats``: what follows from a 400 every row would repeat (said in brackets).
    """
    if code == "content_filter":
        categories = _filtered_categories(err)
        shown = ", ".join(categories) or "unspecified"
        return ContentFilterError(
            f"400 blocked by Azure's content filter (categories: {shown})",
            categories=categories,
            **kw,
        )
    if code in REPEATED_400_CODES:
        return unsupported_error(err, server_msg, where, kw, repeats)
    if _PART_TYPE.match(str(err.get("param") or "")):
        return UnsupportedParameterError(  # our parts are text and images only
            f"400 {where} does not read images: use a deployment of a vision model "
            f"(gpt-4o, gpt-4.1, o1, o3, o4-mini, gpt-5) or leave the images out "
            f"({repeats}). Azure said: {server_msg}",
            param="images",
            **kw,
        )
    field = _job_field(err.get("param"))
    if field is not None:
        return UnsupportedParameterError(
            f"400 {where} refuses {field!r}, which every request of the job sends "
            f"({repeats}). Azure said: {server_msg}",
            param=field,
            **kw,
        )
    if code == "context_length_exceeded":
        return ContextLengthError(f"400 context too long: {server_msg}", **kw)
    return None


#: 400 codes every row of a job would repeat: the first stops the run.
REPEATED_400_CODES = frozenset(
    {"unsupported_parameter", "unsupported_value", "OperationNotSupported"}
)


#: A 400's ``param`` naming a content part's type (``messages.[0].content.[1].type``):
#: the model does not take that kind of part (the client sends text and images only).
_PART_TYPE = re.compile(r"(messages|input)\.?\[\d+\]\.content\.?\[\d+\]\.type$")


#: What to do instead, by the parameter a reasoning model refuses.
_INSTEAD = {
    "max_tokens": "use max_completion_tokens= (CLI --max-completion-tokens) instead",
    "temperature": "leave temperature unset (this model takes only the default, 1)",
    "top_p": "leave top_p unset (this model takes only the default)",
}


def _job_field(param: Any) -> str | None:
    """The job-wide body field a 400's ``param`` names, or ``None``.

    ``response_format`` for ``response_format.json_schema``; ``None`` for the
    messages (each row's own) and what is not a body field.
    """
    if not isinstance(param, str) or not param:
        return None
    field = param.split(".", 1)[0].split("[", 1)[0]
    return field if field in BODY_FIELDS else None


def unsupported_error(
    err: Mapping[str, Any],
    server_msg: str,
    where: str,
    kw: dict[str, Any],
    repeats: str,
) -> UnsupportedParameterError:
    """A 400 that every row would repeat: names the parameter and what to change."""
    param = err.get("param")
    param = str(param) if param else None
    if param is not None:
        fix = _INSTEAD.get(param, f"leave {param} out for this deployment")
        what = f"parameter {param!r} is not supported by {where}: {fix}"
    else:
        what = f"{where} refuses this request for every row"
    return UnsupportedParameterError(
        f"400 {what} ({repeats}). Azure said: {server_msg}",
        param=param,
        **kw,
    )


def redirect_error(
    status: int, headers: Mapping[str, str], where: str, kw: dict[str, Any]
) -> RedirectError:
    """A 3xx, not followed: the error names the host it pointed to, nothing more.

    Not the location's path or query (they may carry a signature or a token), and not
    the body (it often repeats the location).
    """
    location = headers.get("location") or headers.get("Location") or ""
    try:
        target = host_of(location) if urlsplit(location).hostname else None
    except ValueError:
        target = None
    to = f"to {target}" if target else "to another path"
    kw = {**kw, "body": None}
    return RedirectError(
        f"{status} redirect {to} from {where}, not followed: following it would send "
        "the key and the prompts there; check azure_endpoint (give the resource's "
        "own https:// endpoint)",
        location_host=target,
        **kw,
    )


@contextlib.contextmanager
def sdk_errors(
    deployment: str, host: str, *, timeout_s: float | None = None
) -> Iterator[None]:
    """Raise ours for the openai SDK's errors raised inside the block.

    The one mapping from the SDK's errors to ours, for a user's own client (online
    with ``client=``, and batch mode): a status error as :func:`status_error` maps
    the status and Azure's body, a timeout as :class:`APITimeoutError`, any other
    connection failure as :class:`APIConnectionError`; each chained to the SDK's.
    Other exceptions go through unchanged.

    Parameters
    ----------
    deployment, host
        Named in the messages (the host is safe to show).
    timeout_s
        The time bound the client was given, named by a timeout's message.
    """
    import openai

    try:
        yield
    except openai.APIStatusError as exc:
        response = exc.response
        raise status_error(
            response.status_code,
            response.headers,
            response.content,
            deployment,
            host,
        ) from exc
    except openai.APITimeoutError as exc:
        msg = (
            f"no answer within {timeout_s} s"
            if timeout_s is not None
            else f"no answer from {host} in time"
        )
        raise APITimeoutError(msg) from exc
    except openai.APIConnectionError as exc:
        msg = f"connection to {host} failed: {type(exc).__name__}"
        raise APIConnectionError(msg) from exc


#: What Azure's flex tier says when it has no capacity for a request (not a quota).
_CAPACITY_WORDS = ("capacity", "resource unavailable", "resource_unavailable")


def is_capacity_refusal(exc: APIStatusError) -> bool:
    """Whether a 429 says the tier has no capacity now (flex), rather than a quota.

    Such a 429 is not charged and does not tell the quota: it does not pause the
    deployment's admissions. Read from Azure's error code and message.
    """
    if not isinstance(exc, RateLimitError):
        return False
    body = exc.body
    err = body.get("error") if isinstance(body, dict) else None
    text = " ".join(
        str(err.get(k) or "") for k in ("code", "message") if isinstance(err, dict)
    ).lower()
    return any(word in text for word in _CAPACITY_WORDS)


def rate_limited_resource(exc: APIStatusError) -> str | None:
    """Which budget a 429 names: ``"tokens"``, ``"requests"``, or ``None`` (unsaid).

    Azure's message says "token rate limit" or "call rate limit" (or "Requests to
    ... have exceeded" for requests).
    """
    body = exc.body
    err = body.get("error") if isinstance(body, dict) else None
    text = str(err.get("message") if isinstance(err, dict) else "").lower()
    if "token" in text:
        return "tokens"
    if "call rate" in text or "requests" in text or "request rate" in text:
        return "requests"
    return None


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The delay the server asked for: ``retry-after-ms`` first, then ``Retry-After``."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        if math.isfinite(seconds) and 0 <= seconds <= MAX_RETRY_AFTER_S:
            return seconds
    return None


def _filtered_categories(err: Mapping[str, Any]) -> list[str]:
    """What a content-filter error filtered (chat: ``innererror``; Responses too).

    Chat completions name it in ``innererror.content_filter_result``, the Responses
    API in ``content_filters`` (one item per source).
    """
    inner = err.get("innererror")
    result = inner.get("content_filter_result") if isinstance(inner, dict) else None
    found = set(flagged(result))
    filters = err.get("content_filters")
    for item in filters if isinstance(filters, list) else ():
        if isinstance(item, dict):
            found.update(flagged(item.get("content_filter_results")))
    return sorted(found)


def flagged(results: Any) -> tuple[str, ...]:
    """The categories marked ``filtered`` in Azure's content-filter results."""
    if not isinstance(results, dict):
        return ()
    return tuple(
        sorted(
            name
            for name, v in results.items()
            if isinstance(v, dict) and v.get("filtered")
        )
    )
