"""The Responses API on the wire. Not meant for outside use.

A chat job's body as ``/openai/v1/responses`` takes it, and its answer read back as a
:class:`~polars_azurechat.transport.http.Completion`.

Every layer above the transport speaks chat completions (messages, ``max_tokens``,
``response_format``): the front door, the cache key, the quota estimate, typed answers.
Only the bytes differ, so the Responses API is a translation here, done once per job
for the fields every request shares, and a reading of its answer:

=========================================  ==========================================
chat completions                           Responses API
=========================================  ==========================================
``messages``                               ``input`` (the same list of messages; a
                                           part ``text`` is ``input_text``, an
                                           assistant's ``output_text``; ``image_url``
                                           is ``input_image``: :func:`responses_input`)
``max_tokens``, ``max_completion_tokens``  ``max_output_tokens``
``reasoning_effort``                       ``reasoning: {effort}``
``response_format`` (``json_schema``)      ``text: {format: {type: json_schema, ...}}``
``choices[0].message.content``             the ``output_text`` parts of ``output``
``logprobs: true``, ``top_logprobs``       ``include: ["message.output_text.logprobs"]``,
                                           ``top_logprobs``; each ``output_text``
                                           part's ``logprobs`` is chat's
                                           ``logprobs.content``
``finish_reason`` ``stop`` / ``length``    ``status`` ``completed`` / ``incomplete``
                                           (``incomplete_details.reason``)
``usage.prompt_tokens`` ...                ``usage.input_tokens`` ...
``prompt_filter_results`` (Azure's)        ``content_filters`` items of
                                           ``source_type`` ``prompt`` (Azure's)
``choices[0].content_filter_results``      ``content_filters`` items of
                                           ``source_type`` ``completion``
=========================================  ==========================================

``store`` is ``false`` unless the job sets it: a bulk job has no use for Azure keeping
every response for 30 days.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from polars_azurechat.errors import MalformedResponseError
from polars_azurechat.transport.logprobs import token_logprobs

__all__ = ["UNSUPPORTED", "parse_response", "responses_input", "responses_params"]

#: Chat-completions fields the Responses API has no equivalent for (refused at once).
UNSUPPORTED = frozenset(
    {
        "n",
        "stop",
        "logit_bias",
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "modalities",
        "audio",
        "prediction",
        "web_search_options",
        "functions",
        "function_call",
    }
)

#: What ``include`` asks for to get the output text's log-probabilities (each
#: ``output_text`` part's ``logprobs``: chat's ``logprobs.content``, token by token).
LOGPROBS_INCLUDE = "message.output_text.logprobs"

#: The least ``max_output_tokens`` the Responses API takes (a 400 below it).
MIN_OUTPUT_TOKENS = 16

#: ``incomplete_details.reason`` as a chat ``finish_reason``.
_FINISH = {"max_output_tokens": "length", "content_filter": "content_filter"}


def responses_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The Responses API's fields for a job's chat-completions ``params``.

    Raises
    ------
    ValueError
        A field the Responses API has no equivalent for (named, with what to do).

    Examples
    --------
    >>> responses_params({"max_completion_tokens": 50, "reasoning_effort": "low"})
    {'max_output_tokens': 50, 'reasoning': {'effort': 'low'}, 'store': False}
    >>> fmt = {
    ...     "type": "json_schema",
    ...     "json_schema": {"name": "A", "schema": {}, "strict": True},
    ... }
    >>> responses_params({"response_format": fmt})["text"]
    {'format': {'type': 'json_schema', 'name': 'A', 'schema': {}, 'strict': True}}
    >>> responses_params({"include": ["reasoning.encrypted_content"], "logprobs": True})
    {'include': ['reasoning.encrypted_content', 'message.output_text.logprobs'], 'store': False}
    >>> responses_params({"seed": 1})
    Traceback (most recent call last):
    ...
    ValueError: seed has no equivalent in the Responses API (api='responses'): leave it out, or use api='chat'
    >>> responses_params({"max_tokens": 5})
    Traceback (most recent call last):
    ...
    ValueError: max_tokens=5: the Responses API (api='responses') takes at least 16 output tokens (max_output_tokens)
    """
    refused = sorted(UNSUPPORTED & params.keys())
    if refused:
        msg = (
            f"{', '.join(refused)} {'has' if len(refused) == 1 else 'have'} no "
            "equivalent in the Responses API (api='responses'): leave "
            f"{'it' if len(refused) == 1 else 'them'} out, or use api='chat'"
        )
        raise ValueError(msg)
    out: dict[str, Any] = {}
    include: list[Any] = []  # a new list: the job's own is never changed
    for key, value in params.items():
        if key in ("max_tokens", "max_completion_tokens"):
            if isinstance(value, int) and value < MIN_OUTPUT_TOKENS:
                msg = (
                    f"{key}={value}: the Responses API (api='responses') takes at "
                    f"least {MIN_OUTPUT_TOKENS} output tokens (max_output_tokens)"
                )
                raise ValueError(msg)
            out["max_output_tokens"] = value
        elif key == "reasoning_effort":
            out.setdefault("reasoning", {})["effort"] = value
        elif key == "response_format":
            out.setdefault("text", {})["format"] = _text_format(value)
        elif key == "verbosity":
            out.setdefault("text", {})["verbosity"] = value
        elif key == "logprobs":  # asked for by an include, not a flag
            if value:
                include.append(LOGPROBS_INCLUDE)
        elif key == "include":  # the job's own (extra_body), kept beside it
            given = value if isinstance(value, list | tuple) else [value]
            include[:0] = [i for i in given if i is not None and i not in include]
        else:
            out[key] = value
    if include:
        out["include"] = list(dict.fromkeys(include))
    out.setdefault("store", False)
    return out


def responses_input(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat ``messages`` as the Responses API's ``input`` (the same list when all text).

    A content that is a string goes as it is. A list of parts (text and images, as
    :func:`polars_azurechat.messages` builds for ``images=``) is renamed part by part:
    ``{"type": "text"}`` is ``input_text`` (an assistant's own turn: ``output_text``),
    ``{"type": "image_url", "image_url": {"url", "detail"}}`` is ``input_image`` with
    the URL and the detail beside the type.

    Examples
    --------
    >>> plain = [{"role": "user", "content": "hi"}]
    >>> responses_input(plain) is plain
    True
    >>> parts = [
    ...     {"type": "text", "text": "What is it?"},
    ...     {
    ...         "type": "image_url",
    ...         "image_url": {"url": "https://x/a.png", "detail": "low"},
    ...     },
    ... ]
    >>> responses_input([{"role": "user", "content": parts}])[0]["content"]
    [{'type': 'input_text', 'text': 'What is it?'}, {'type': 'input_image', 'image_url': 'https://x/a.png', 'detail': 'low'}]
    """
    if all(isinstance(m.get("content"), str) for m in messages):
        return messages
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            text = "output_text" if message.get("role") == "assistant" else "input_text"
            message = {**message, "content": [_part(p, text) for p in content]}
        out.append(message)
    return out


def _part(part: Any, text: str) -> Any:
    """One chat content part as the Responses API's (an unknown one as it is)."""
    if not isinstance(part, Mapping):
        return part
    kind = part.get("type")
    if kind == "text":
        return {"type": text, "text": part.get("text")}
    image = part.get("image_url")
    if kind == "image_url" and isinstance(image, Mapping):
        return {
            "type": "input_image",
            "image_url": image.get("url"),
            "detail": image.get("detail") or "auto",
        }
    return part


def _text_format(response_format: Any) -> Any:
    """``response_format`` as ``text.format``: the ``json_schema`` object flattened."""
    if not isinstance(response_format, Mapping):
        return response_format
    if response_format.get("type") == "json_schema":
        inner = response_format.get("json_schema") or {}
        return {"type": "json_schema", **inner}
    return dict(response_format)


def parse_response(raw: bytes, headers: Mapping[str, str]) -> Any:
    """Read a Responses API answer as a :class:`~.http.Completion`.

    The text is the ``output_text`` parts of the ``message`` items, joined; a
    ``refusal`` part is the refusal. ``status`` ``completed`` is ``stop``;
    ``incomplete`` takes its reason (``max_output_tokens`` is ``length``). A body that
    is not a response is a :class:`~polars_azurechat.errors.MalformedResponseError`.
    """
    from polars_azurechat.transport.http import Completion, _int_header, _prompt_flags
    from polars_azurechat.transport.status import flagged

    try:
        body = json.loads(raw)
        if body.get("object") != "response":
            raise TypeError("not a response object")  # noqa: TRY301
        texts: list[str] = []
        tokens: list[Any] | None = None  # the parts' logprobs, when any part has some
        refusal = None
        for item in body.get("output") or []:
            if item.get("type") != "message":
                continue  # reasoning summaries, tool calls
            for part in item.get("content") or []:
                if part.get("type") == "output_text":
                    texts.append(str(part["text"]))
                    if part.get("logprobs"):
                        tokens = (tokens or []) + list(part["logprobs"])
                elif part.get("type") == "refusal":
                    refusal = str(part.get("refusal") or "")
        status = body.get("status")
        if status == "completed":
            finish: str | None = "stop"
        elif status == "incomplete":
            reason = (body.get("incomplete_details") or {}).get("reason")
            finish = _FINISH.get(str(reason), str(reason or "incomplete"))
        else:
            finish = str(status) if status is not None else None
        filters = _content_filters(body.get("content_filters"))
        usage = body.get("usage") or {}
        out_details = usage.get("output_tokens_details") or {}
        in_details = usage.get("input_tokens_details") or {}
        return Completion(
            content="".join(texts) if texts or refusal is None else None,
            finish_reason=finish,
            prompt_tokens=usage.get("input_tokens"),
            completion_tokens=usage.get("output_tokens"),
            remaining_requests=_int_header(headers, "x-ratelimit-remaining-requests"),
            remaining_tokens=_int_header(headers, "x-ratelimit-remaining-tokens"),
            model=body.get("model"),
            limit_requests=_int_header(headers, "x-ratelimit-limit-requests"),
            limit_tokens=_int_header(headers, "x-ratelimit-limit-tokens"),
            refusal=refusal,
            request_id=headers.get("apim-request-id") or headers.get("x-request-id"),
            response_id=body.get("id"),
            reasoning_tokens=out_details.get("reasoning_tokens"),
            cached_tokens=in_details.get("cached_tokens"),
            service_tier=body.get("service_tier"),
            logprobs=None if tokens is None else token_logprobs({"content": tokens}),
            filtered=tuple(
                sorted({n for f in filters["completion"] for n in flagged(f)})
            ),
            prompt_filter=_prompt_flags(
                [{"content_filter_results": f} for f in filters["prompt"]]
            ),
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        msg = f"200 with a body that is not a response ({type(exc).__name__})"
        raise MalformedResponseError(msg) from exc


def _content_filters(items: Any) -> dict[str, list[Any]]:
    """Azure's ``content_filters`` of a response: each source's filter results.

    Azure's Responses API gives the prompt's and the output's filter results as one
    top-level list (``[{"blocked", "source_type": "prompt" | "completion",
    "content_filter_results"}, ...]``), where chat completions has
    ``prompt_filter_results`` and each choice's ``content_filter_results``. OpenAI's
    own API sends none (an empty reading).

    Examples
    --------
    >>> jb = {"jailbreak": {"filtered": False, "detected": True}}
    >>> _content_filters([{"source_type": "prompt", "content_filter_results": jb}])
    {'prompt': [{'jailbreak': {'filtered': False, 'detected': True}}], 'completion': []}
    """
    out: dict[str, list[Any]] = {"prompt": [], "completion": []}
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, Mapping):
            continue
        source = item.get("source_type")
        if source in out:
            out[str(source)].append(item.get("content_filter_results"))
    return out
