"""The chat-completions body fields a job may set, and their checks. Internal.

Keywords that are not options are body fields (``max_tokens``, ``temperature``,
``seed``, ...): :func:`check_body` refuses, before any request, a field the engine
owns, an unknown one (naming the closest match), a value JSON cannot carry and a value
outside the range Azure takes (every request of the job would get the same 400).
:mod:`polars_azurechat.options` gives these names to the rest of the package.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BODY_FIELDS",
    "REASONING_EFFORTS",
    "RESERVED_FIELDS",
    "check_body",
    "known_keywords",
]

#: The values of ``reasoning_effort`` (the models of today take a subset each).
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")

#: Chat-completions body fields a keyword may set (the openai SDK's
#: ``CompletionCreateParams``, less ``messages``/``model``/``n``/``stream`` which the
#: engine owns, plus Azure's ``data_sources``). A test keeps it equal to the SDK's list.
BODY_FIELDS = frozenset(
    {
        "audio",
        "data_sources",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "moderation",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)
#: Body fields the engine sets itself.
RESERVED_FIELDS = frozenset({"messages", "model", "n", "stream"})


def known_keywords() -> list[str]:
    """Every keyword a job takes: its options, the body fields and ``extra_body``."""
    from polars_azurechat.options import ChatOptions

    return [*ChatOptions.names(), *sorted(BODY_FIELDS), "extra_body"]


def check_body(body: Mapping[str, Any]) -> None:
    """Refuse body fields the engine owns, unknown fields and values JSON cannot carry."""
    for key in body:
        if key in RESERVED_FIELDS:
            msg = f"{key} cannot be passed as a parameter: the engine sets it"
            raise ValueError(msg)
        if key != "extra_body" and key not in BODY_FIELDS:
            close = difflib.get_close_matches(key, known_keywords(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            msg = (
                f"unknown keyword {key!r}{hint}; custom body fields go in "
                "extra_body={...}"
            )
            raise TypeError(msg)
    extra = body.get("extra_body")
    if extra is not None and not isinstance(extra, Mapping):
        msg = f"extra_body must be a mapping, got {type(extra).__name__}"
        raise TypeError(msg)
    from polars_azurechat.options import output_schema

    for key, value in body.items():
        if key == "response_format" and output_schema(value) is not None:
            continue  # a typed answer's type: checked (and made JSON) by OutputSchema
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            msg = f"parameter {key}={value!r} is not JSON-serialisable (or is NaN/inf)"
            raise ValueError(msg) from exc
    if (
        body.get("max_tokens") is not None
        and body.get("max_completion_tokens") is not None
    ):
        msg = (
            "max_tokens and max_completion_tokens are both given: give one "
            "(max_completion_tokens for reasoning models, which refuse max_tokens)"
        )
        raise ValueError(msg)
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        msg = (
            f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}, "
            f"got {effort!r}"
        )
        raise ValueError(msg)
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            msg = f"{key} must be a positive integer, got {value!r}"
            raise ValueError(msg)
    _check_bounds(body)


def _check_bounds(body: Mapping[str, Any]) -> None:
    """Refuse a bounded field out of its range, or of the wrong type."""
    for key, (low, high, whole) in _BOUNDED.items():
        value = body.get(key)
        if value is None:
            continue
        kinds = (int,) if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            kind = "an integer" if whole else "a number"
            msg = f"{key} must be {kind} from {low} to {high}, got {value!r}"
            raise TypeError(msg)
        if not low <= value <= high:
            msg = (
                f"{key} must be from {low} to {high} (Azure refuses it), got {value!r}"
            )
            raise ValueError(msg)
    if body.get("logprobs") is not None and not isinstance(body["logprobs"], bool):
        msg = f"logprobs must be True or False, got {body['logprobs']!r}"
        raise TypeError(msg)
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        msg = "top_logprobs needs logprobs=True (Azure refuses it alone)"
        raise ValueError(msg)


#: Body fields Azure bounds, as the chat-completions reference gives them:
#: ``(lowest, highest, integer only)``. Out of range, every request of a job gets the
#: same 400: refused before any request instead.
_BOUNDED: dict[str, tuple[float, float, bool]] = {
    "temperature": (0, 2, False),
    "top_p": (0, 1, False),
    "presence_penalty": (-2, 2, False),
    "frequency_penalty": (-2, 2, False),
    "top_logprobs": (0, 20, True),
}
