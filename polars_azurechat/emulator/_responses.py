"""Azure's Responses API on the emulator: ``POST /openai/v1/responses``.

A Responses body is read as the chat-completions body it is equivalent to
(:func:`chat_body`), answered by the one chat pipeline (:class:`~._chat.Chat`: the
same lanes, quota, latency, faults, reasoning, prompt cache and token estimate, so it
costs and answers exactly as that chat request would), and the answer is rendered
as a response object (:func:`response_payload`):

=========================================  ==========================================
Responses API                              chat completions
=========================================  ==========================================
``input`` (a string, or messages whose     ``messages`` (a string is one user
``content`` is a string or                 message; the parts' texts joined;
``input_text``/``input_image`` parts)      with images, chat's ``text`` and
                                           ``image_url`` parts)
``instructions``                           a first ``system`` message
``max_output_tokens`` (at least 16)        ``max_completion_tokens``
``reasoning: {effort}``                    ``reasoning_effort``
``text: {format: {type: json_schema}}``    ``response_format`` (``json_schema``)
``status`` ``completed`` / ``incomplete``  ``finish_reason`` ``stop`` / ``length``
(``incomplete_details.reason``)            (or ``content_filter``)
=========================================  ==========================================

A chat-completions field (``messages``, ``max_tokens``, ``response_format``, ...) or
any other the API does not know is Azure's 400 ``unsupported_parameter``; an error
of the chat pipeline names the parameter as this API does (``max_output_tokens``,
not ``max_completion_tokens``); every error body has Azure's four fields
(:func:`responses_error`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from polars_azurechat.emulator._body import _wrong_type, invalid
from polars_azurechat.emulator._errors import responses_content_filters

if TYPE_CHECKING:
    from polars_azurechat.emulator._chat import Answer

__all__ = [
    "KNOWN",
    "MIN_OUTPUT_TOKENS",
    "chat_body",
    "response_payload",
    "responses_error",
]

#: The body fields the Responses API takes; any other is ``unsupported_parameter``.
KNOWN = frozenset(
    {
        "model",
        "input",
        "instructions",
        "max_output_tokens",
        "reasoning",
        "text",
        "temperature",
        "top_p",
        "top_logprobs",
        "store",
        "service_tier",
        "metadata",
        "user",
        "prompt_cache_key",
        "safety_identifier",
        "parallel_tool_calls",
        "tools",
        "tool_choice",
        "truncation",
        "include",
        "stream",
        "background",
        "previous_response_id",
        "max_tool_calls",
    }
)

#: Chat-completions fields the Responses API names otherwise: what its 400 points to.
MOVED = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning.effort",
    "response_format": "text.format",
}

#: The smallest ``max_output_tokens`` Azure takes.
MIN_OUTPUT_TOKENS = 16

#: Fields passed to the chat pipeline as they are (it checks and reads them).
_PASSED = ("temperature", "top_p", "store", "user", "prompt_cache_key")
#: What ``include`` names to get each ``output_text`` part's ``logprobs``.
LOGPROBS_INCLUDE = "message.output_text.logprobs"

#: The parameters of a translated body, as this API names them in an error.
_RENAMED = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning.effort",
    "response_format": "text.format",
    "logprobs": "include",
}

#: The operation a 429's message names: the chat pipeline's, and this API's. Azure's
#: quota 429 names the operation it counted ("Requests to the ChatCompletions_Create
#: Operation have exceeded ..."); no Responses 429 text was found in Azure's docs, so
#: the Responses operation is named as the chat one is (``Responses_Create``).
CHAT_OPERATION = "ChatCompletions_Create"
RESPONSES_OPERATION = "Responses_Create"

_INPUT_ROLES = ("user", "system", "developer", "assistant")
_TEXT_PARTS = ("input_text", "output_text")


def chat_body(body: Any) -> tuple[dict[str, Any] | None, web.Response | None]:
    """The chat-completions body equivalent to a Responses ``body``, or Azure's 400.

    Examples
    --------
    >>> chat_body(
    ...     {
    ...         "model": "d",
    ...         "input": "hi",
    ...         "instructions": "Be brief.",
    ...         "max_output_tokens": 50,
    ...         "reasoning": {"effort": "low"},
    ...     }
    ... )[0]  # doctest: +NORMALIZE_WHITESPACE
    {'messages': [{'role': 'system', 'content': 'Be brief.'},
                  {'role': 'user', 'content': 'hi'}],
     'max_completion_tokens': 50, 'reasoning_effort': 'low'}
    >>> print(chat_body({"model": "d", "input": "hi", "max_tokens": 5})[1].text)
    {"error": {"code": "unsupported_parameter", "message": "Unsupported parameter: 'max_tokens'. In the Responses API, this parameter has moved to 'max_output_tokens'.", "type": "invalid_request_error", "param": "max_tokens"}}
    """
    if not isinstance(body, Mapping):
        return None, invalid(
            "the request body must be a JSON object with an 'input'",
            param=None,
            code="invalid_type",
        )
    for key in body:
        if key not in KNOWN:
            return None, _unsupported(str(key))
    messages, refused = _messages(body)
    if refused is not None:
        return None, refused
    chat: dict[str, Any] = {"messages": messages}
    refused = _translate(body, chat)
    if refused is not None:
        return None, refused
    for key in _PASSED:
        if key in body:
            chat[key] = body[key]
    return chat, None


def _translate(body: Mapping[str, Any], chat: dict[str, Any]) -> web.Response | None:
    """Put the chat equivalents of the limit, reasoning and text format in ``chat``."""
    limit = body.get("max_output_tokens")
    if limit is not None:
        refused = _limit_problem(limit)
        if refused is not None:
            return refused
        chat["max_completion_tokens"] = limit
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, Mapping):
            return _wrong_type("reasoning", "an object", reasoning)
        if reasoning.get("effort") is not None:
            chat["reasoning_effort"] = reasoning["effort"]
    include = body.get("include")
    if include is not None:
        if not isinstance(include, list) or not all(
            isinstance(i, str) for i in include
        ):
            return _wrong_type("include", "an array of strings", include)
        if LOGPROBS_INCLUDE in include:  # chat's logprobs, and how many alternatives
            chat["logprobs"] = True
            if "top_logprobs" in body:
                chat["top_logprobs"] = body["top_logprobs"]
    text = body.get("text")
    if text is not None:
        if not isinstance(text, Mapping):
            return _wrong_type("text", "an object", text)
        fmt = text.get("format")
        if fmt is not None:
            if not isinstance(fmt, Mapping):
                return _wrong_type("text.format", "an object", fmt)
            response_format = _response_format(fmt)
            if response_format is not None:
                chat["response_format"] = response_format
    return None


def _unsupported(key: str) -> web.Response:
    moved = MOVED.get(key)
    where = (
        f" In the Responses API, this parameter has moved to '{moved}'."
        if moved
        else ""
    )
    return invalid(
        f"Unsupported parameter: '{key[:40]}'.{where}",
        param=key[:40],
        code="unsupported_parameter",
    )


def _messages(body: Mapping[str, Any]) -> tuple[list[Any], web.Response | None]:
    """``instructions`` and ``input`` as chat messages (each content one string)."""
    out: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            return [], _wrong_type("instructions", "a string", instructions)
        out.append({"role": "system", "content": instructions})
    given = body.get("input")
    if given is None:
        return [], invalid(
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    if isinstance(given, str):
        out.append({"role": "user", "content": given})
        return out, None
    if not isinstance(given, list) or not given:
        return [], invalid(
            "Invalid 'input': expected a string or a non-empty array of input items.",
            param="input",
            code="invalid_value",
        )
    for i, item in enumerate(given):
        message, refused = _message(item, f"input[{i}]")
        if refused is not None:
            return [], refused
        out.append(message)
    return out, None


def _message(item: Any, where: str) -> tuple[dict[str, Any], web.Response | None]:
    """One input item as a chat message, or Azure's 400 naming where it is wrong."""
    if not isinstance(item, Mapping):
        return {}, _wrong_type(where, "an object", item)
    kind = item.get("type", "message")
    if kind != "message":
        return {}, invalid(
            f"Invalid value: '{str(kind)[:40]}'. The emulator takes input items of "
            "type 'message' only.",
            param=f"{where}.type",
            code="invalid_value",
        )
    role = item.get("role")
    if role not in _INPUT_ROLES:
        shown = ", ".join(f"'{r}'" for r in _INPUT_ROLES)
        return {}, invalid(
            f"Invalid value: '{str(role)[:40]}'. Supported values are: {shown}.",
            param=f"{where}.role",
            code="invalid_value",
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}, None
    if not isinstance(content, list):
        return {}, _wrong_type(
            f"{where}.content", "one of a string or array of input items", content
        )
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, Mapping):
            return {}, _wrong_type(at, "an object", part)
        kind = part.get("type")
        if kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):  # a file_id: the emulator keeps no files
                return {}, _wrong_type(f"{at}.image_url", "a string", url)
            detail = part.get("detail", "auto")
            parts.append(
                {"type": "image_url", "image_url": {"url": url, "detail": detail}}
            )
            continue
        if kind not in _TEXT_PARTS:
            return {}, invalid(
                f"Invalid value: '{str(kind)[:40]}'. The emulator takes "
                "'input_text' and 'input_image' parts only.",
                param=f"{at}.type",
                code="invalid_value",
            )
        text = part.get("text")
        if not isinstance(text, str):
            return {}, _wrong_type(f"{at}.text", "a string", text)
        parts.append({"type": "text", "text": text})
    if any(p["type"] == "image_url" for p in parts):  # checked and counted as chat's
        return {"role": role, "content": parts}, None
    return {"role": role, "content": "".join(p["text"] for p in parts)}, None


def _limit_problem(limit: Any) -> web.Response | None:
    if isinstance(limit, bool) or not isinstance(limit, int):
        return _wrong_type("max_output_tokens", "an integer", limit)
    if limit < MIN_OUTPUT_TOKENS:
        return invalid(
            "Invalid 'max_output_tokens': integer below minimum value. Expected a "
            f"value >= {MIN_OUTPUT_TOKENS}, but got {limit} instead.",
            param="max_output_tokens",
            code="integer_below_min_value",
        )
    return None


def _response_format(fmt: Mapping[str, Any]) -> dict[str, Any] | None:
    """``text.format`` as a chat ``response_format`` (``None`` for plain text)."""
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_schema":
        inner = {
            k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt
        }
        return {"type": "json_schema", "json_schema": inner}
    return dict(fmt)  # json_object, or a type the chat pipeline refuses


_MESSAGE_PARAM = re.compile(r"messages\[(\d+)\]((?:\.[A-Za-z_]+|\[\d+\])*)")


def input_param(param: str, offset: int) -> str:
    """A chat body's ``messages[i]...`` path as the Responses request names it.

    ``offset``: 1 when ``instructions`` became ``messages[0]``. An input item's image
    is ``image_url`` (a string), not ``image_url.url``.

    Examples
    --------
    >>> input_param("messages[1].content[1].image_url.url", 1)
    'input[0].content[1].image_url'
    >>> input_param("messages[0].content", 1), input_param("temperature", 0)
    ('instructions', 'temperature')
    """

    def named(match: re.Match[str]) -> str:
        i = int(match.group(1)) - offset
        rest = match.group(2).replace(".image_url.url", ".image_url")
        return f"input[{i}]{rest}" if i >= 0 else "instructions"

    return _MESSAGE_PARAM.sub(named, param)


def responses_error(
    response: web.Response, *, renamed: bool = False, offset: int = 0
) -> web.Response:
    """An error answer as the Responses API sends it; any other answer as it is.

    The body's ``error`` gets Azure's four fields (``code``, ``message``, ``param``,
    ``type``; ``None`` when unsaid); a 429's message names this API's operation
    (``Responses_Create``), not the chat pipeline's. ``renamed``: the error is about the translated
    chat body, whose parameters are named as this API names them
    (``max_completion_tokens`` is ``max_output_tokens``). The headers
    (``retry-after-ms``, ``x-ratelimit-*``) stay.
    """
    if response.status < 400 or not isinstance(response.body, bytes):
        return response
    try:
        body = json.loads(response.body)
    except ValueError:
        return response
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return response  # Entra's {"statusCode": 401, "message": ...}
    param = err.get("param")
    message = str(err.get("message") or "").replace(CHAT_OPERATION, RESPONSES_OPERATION)
    if renamed:  # messages[i] is input[i - offset] (instructions came first)
        for old, new in _RENAMED.items():
            message = message.replace(f"'{old}'", f"'{new}'")
        message = input_param(message, offset)
        if isinstance(param, str):
            param = input_param(_RENAMED.get(param, param), offset)
    shaped = {
        **err,
        "code": err.get("code"),
        "message": message,
        "param": param,
        "type": err.get("type"),
    }
    inner = shaped.pop("innererror", None)
    if isinstance(inner, dict) and "content_filter_result" in inner:
        # this API names what was filtered in ``content_filters``, by source
        shaped["content_filters"] = [
            {
                "blocked": True,
                "source_type": "prompt",
                "content_filter_results": inner["content_filter_result"],
            }
        ]
    elif inner is not None:
        shaped["innererror"] = inner
    headers = {
        name: value
        for name, value in response.headers.items()
        if name.lower() not in ("content-type", "content-length")
    }
    return web.json_response(
        {**body, "error": shaped}, status=response.status, headers=headers
    )


def response_payload(
    a: Answer, body: Mapping[str, Any], *, reasoning: bool
) -> dict[str, Any]:
    """The response object Azure sends for ``a``, answering the Responses ``body``.

    ``reasoning``: the deployment runs a reasoning model (a ``reasoning`` item leads
    the output). An answer the reasoning left empty has no ``message`` item.
    """
    finish = a.finish_reason
    complete = finish == "stop"
    reason = {"length": "max_output_tokens", "content_filter": "content_filter"}
    output: list[dict[str, Any]] = []
    if reasoning:
        output.append({"id": f"rs_emu-{a.n}", "type": "reasoning", "summary": []})
    if a.refusal is not None:
        parts: list[dict[str, Any]] = [{"type": "refusal", "refusal": a.refusal}]
    elif a.content:
        parts = [
            {
                "type": "output_text",
                "text": a.content,
                "annotations": [],
                "logprobs": a.logprobs or [],  # asked for by include
            }
        ]
    else:
        parts = []
    if parts:
        output.append(
            {
                "id": f"msg_emu-{a.n}",
                "type": "message",
                "status": "completed" if complete else "incomplete",
                "role": "assistant",
                "content": parts,
            }
        )
    effort = (body.get("reasoning") or {}).get("effort")
    tier = body.get("service_tier")
    return {
        "id": f"resp_emu-{a.n}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed" if complete else "incomplete",
        "error": None,
        "incomplete_details": None
        if complete
        else {"reason": reason.get(finish, finish)},
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": a.model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {
            "effort": (effort or "medium") if reasoning else None,
            "summary": None,
        },
        "service_tier": "default" if tier in (None, "auto") else tier,
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": (body.get("text") or {}).get("format") or {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": a.prompt_tokens,
            "input_tokens_details": {"cached_tokens": a.cached_tokens},
            "output_tokens": a.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": a.reasoning_tokens},
            "total_tokens": a.prompt_tokens + a.completion_tokens,
        },
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
        # Azure's, not OpenAI's: the prompt's and the output's filter results
        "content_filters": responses_content_filters(
            jailbreak=a.jailbreak_detected, output_filtered=a.output_filtered
        ),
    }
