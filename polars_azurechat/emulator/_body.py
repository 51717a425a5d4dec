"""A chat-completions request body, read and checked as Azure does: a 400, never a 500.

:func:`read_body` parses the bytes (JSON only: ``NaN`` and ``Infinity`` are not JSON,
nor is a body nested past :data:`MAX_DEPTH` levels, which Python's parser would
answer with a ``RecursionError``); :func:`body_problem` checks the types and ranges
of the fields the emulator reads or Azure validates on arrival (``messages``,
``max_tokens``, ``temperature``, ...). Each problem is Azure's 400
``invalid_request_error`` body naming the parameter, so a client under test sees what
Azure would send it, and the server's own code only ever sees a well-formed body.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from polars_azurechat.emulator._errors import error_response
from polars_azurechat.emulator._vision import MAX_IMAGES, parts_problem

__all__ = [
    "MAX_DEPTH",
    "body_problem",
    "logprobs_problem",
    "missing_model",
    "read_body",
]

#: The deepest nesting of arrays and objects a body may have (a structured-output
#: schema's included: Azure allows far fewer levels in a schema).
MAX_DEPTH = 64

#: Azure's answer to a body that is not JSON.
NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you "
    "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
    "but what was sent was not valid JSON.)"
)

ROLES = ("system", "developer", "user", "assistant", "tool", "function")

#: Numeric body fields: (kind, lowest, highest); ``None``: no bound on that side.
_NUMBERS: dict[str, tuple[str, float | None, float | None]] = {
    "max_tokens": ("integer", 1, None),
    "max_completion_tokens": ("integer", 1, None),
    "n": ("integer", 1, 128),
    "seed": ("integer", None, None),
    "top_logprobs": ("integer", 0, 20),
    "temperature": ("decimal", 0, 2),
    "top_p": ("decimal", 0, 1),
    "presence_penalty": ("decimal", -2, 2),
    "frequency_penalty": ("decimal", -2, 2),
}
_BOOLEANS = ("stream", "logprobs", "parallel_tool_calls", "store")


def invalid(
    message: str, *, param: str | None, code: str | None = None
) -> web.Response:
    """Azure's 400 ``invalid_request_error`` about ``param``."""
    return error_response(400, code, message, type="invalid_request_error", param=param)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def read_body(raw: bytes) -> tuple[Any, web.Response | None]:
    """The JSON value of ``raw``, or Azure's 400 when it is not JSON or too deep.

    orjson reads it (a photo's 67 KB data URL in a third of the standard library's
    time); a body orjson refuses is read again by the standard library, whose verdict
    stands (``NaN``, nesting past orjson's 1,024 levels, a lone surrogate). One way
    they differ on a body both read: an integer past 64 bits reads as a decimal.

    Examples
    --------
    >>> read_body(b'{"messages": []}')[0]
    {'messages': []}
    >>> read_body(b'{"max_tokens": NaN}')[1].status
    400
    >>> read_body(b"[" * 100_000 + b"]" * 100_000)[1].status
    400
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:  # the standard library's verdict, as it always was
        return _read_slowly(raw)
    if _depth(body) > MAX_DEPTH:
        return None, _too_deep()
    return body, None


def _read_slowly(raw: bytes) -> tuple[Any, web.Response | None]:
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:  # deeper than the parser goes: deeper than MAX_DEPTH too
        return None, _too_deep()
    except ValueError:  # not UTF-8, not JSON, NaN, an integer of 4,300 digits
        return None, invalid(NOT_JSON, param=None)
    if _depth(body) > MAX_DEPTH:
        return None, _too_deep()
    return body, None


def _too_deep() -> web.Response:
    return invalid(
        f"the request body is nested more than {MAX_DEPTH} levels deep", param=None
    )


def _depth(value: Any) -> int:
    """The deepest nesting of lists and dicts in ``value``, walked without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def body_problem(body: Any) -> web.Response | None:
    """Azure's 400 for a body whose fields have the wrong type or range, or ``None``.

    ``messages`` must be a non-empty list of objects, each with a known ``role`` and a
    ``content`` that is a string, a list of parts or null; the numeric fields
    (``max_tokens``, ``temperature``, ``n``, ...) must be numbers of their kind
    within Azure's bounds (a JSON ``true`` is not a number); the flags booleans.

    Examples
    --------
    >>> body_problem({"messages": [{"role": "user", "content": "hi"}]}) is None
    True
    >>> hi = [{"role": "user", "content": "hi"}]
    >>> print(body_problem({"messages": hi, "max_tokens": "abc"}).text)
    {"error": {"code": "invalid_type", "message": "Invalid type for 'max_tokens': expected an integer, but got a string instead.", "type": "invalid_request_error", "param": "max_tokens"}}
    """
    if not isinstance(body, Mapping):
        return invalid(
            "the request body must be a JSON object with a 'messages' list",
            param=None,
            code="invalid_type",
        )
    problem = _messages_problem(body.get("messages"))
    if problem is not None:
        return problem
    for name, (kind, low, high) in _NUMBERS.items():
        problem = _number_problem(name, body.get(name), kind, low, high)
        if problem is not None:
            return problem
    for name in _BOOLEANS:
        value = body.get(name)
        if value is not None and not isinstance(value, bool):
            return _wrong_type(name, "a boolean", value)
    return None


def _messages_problem(messages: Any) -> web.Response | None:
    if not isinstance(messages, list) or not messages:
        return invalid(
            "'messages' is a required property and must be a non-empty list of "
            "{role, content} objects",
            param="messages",
        )
    images = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            return _wrong_type(where, "an object", message)
        role = message.get("role")
        if not isinstance(role, str):
            return _wrong_type(f"{where}.role", "a string", role)
        if role not in ROLES:
            shown = ", ".join(repr(r) for r in ROLES)
            return invalid(
                f"Invalid value: {role[:40]!r}. Supported values are: {shown}.",
                param=f"{where}.role",
                code="invalid_value",
            )
        if "content" not in message:
            return invalid(
                f"Missing required parameter: '{where}.content'.",
                param=f"{where}.content",
                code="missing_required_parameter",
            )
        content = message["content"]
        if content is not None and not isinstance(content, str | list):
            return _wrong_type(
                f"{where}.content", "one of a string or array of objects", content
            )
        if isinstance(content, list):
            found, problem = parts_problem(where, role, content)
            if problem is not None:
                text, param, code = problem
                return invalid(text, param=param, code=code)
            images += found
    if images > MAX_IMAGES:
        return invalid(
            f"Too many images in request. Max is {MAX_IMAGES} images, but got "
            f"{images}.",
            param="messages",
            code="too_many_images",
        )
    return None


def _number_problem(
    name: str, value: Any, kind: str, low: float | None, high: float | None
) -> web.Response | None:
    if value is None:
        return None
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        return _wrong_type(name, "an integer", value)
    if kind == "decimal" and (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
    ):
        return _wrong_type(name, "a decimal", value)
    if low is not None and value < low:
        return invalid(
            f"Invalid '{name}': {kind} below minimum value. Expected a value >= "
            f"{low}, but got {value} instead.",
            param=name,
            code=f"{kind}_below_min_value",
        )
    if high is not None and value > high:
        return invalid(
            f"Invalid '{name}': {kind} above maximum value. Expected a value <= "
            f"{high}, but got {value} instead.",
            param=name,
            code=f"{kind}_above_max_value",
        )
    return None


def _wrong_type(param: str, expected: str, value: Any) -> web.Response:
    return invalid(
        f"Invalid type for '{param}': expected {expected}, but got "
        f"{_json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def missing_model() -> web.Response:
    """Azure's 400 for a v1 request whose body names no ``model`` (deployment)."""
    return invalid(
        "Missing required parameter: 'model'.",
        param="model",
        code="missing_required_parameter",
    )


def logprobs_problem(body: Mapping[str, Any]) -> web.Response | None:
    """Azure's 400 for ``top_logprobs`` without ``logprobs: true``.

    Checked after a reasoning model's own refusal of both.
    """
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        return invalid(
            "The 'top_logprobs' parameter is only allowed when 'logprobs' is enabled.",
            param="top_logprobs",
            code="invalid_request_error",
        )
    return None
