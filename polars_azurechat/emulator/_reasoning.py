"""Reasoning deployments (o1, o3, o4-mini, gpt-5, ...): what they refuse, what they spend.

Azure's reasoning models take ``max_completion_tokens`` (its budget covers the hidden
reasoning and the visible answer) and ``reasoning_effort``; they refuse the sampling
parameters of the older models with a 400 naming the parameter:

- ``max_tokens``: ``unsupported_parameter``, "Unsupported parameter: 'max_tokens' is
  not supported with this model. Use 'max_completion_tokens' instead.";
- ``temperature`` other than 1: ``unsupported_value``, "Unsupported value:
  'temperature' does not support 0.7 with this model. Only the default (1) value is
  supported.";
- ``top_p``, ``presence_penalty``, ``frequency_penalty``, ``logit_bias``,
  ``top_logprobs``, and ``logprobs`` set true: ``unsupported_parameter``,
  "Unsupported parameter: 'top_p' is not supported with this model.".

A model that does not reason refuses ``reasoning_effort`` the same way; an effort
that is not ``minimal``, ``low``, ``medium`` or ``high`` is ``invalid_value`` for every
model, and ``minimal`` is only the GPT-5 series' (an o-series model answers
``unsupported_value``).

A deployment reasons when its ``reasoning`` setting says so, or, left ``None``, when
its ``model`` is named as Azure's reasoning models are (``o1*``, ``o3*``, ``o4*``,
``gpt-5*``, but not ``gpt-5-chat``). Its reasoning tokens are deterministic: a base per
effort (:data:`BASE_TOKENS`) times a factor in ``[1, 1.5)`` from a hash of the prompt,
so a higher effort always spends more.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from polars_azurechat.emulator._body import invalid
from polars_azurechat.emulator._settings import EmulatorSettings

__all__ = [
    "BASE_TOKENS",
    "DEFAULT_EFFORT",
    "EFFORTS",
    "effort_of",
    "is_reasoning",
    "reasoning_problem",
    "reasoning_tokens",
]

#: The reasoning efforts, least first.
EFFORTS = ("minimal", "low", "medium", "high")
#: The effort of a request that names none (Azure's default).
DEFAULT_EFFORT = "medium"
#: Reasoning tokens of each effort before the prompt's factor in ``[1, 1.5)``.
BASE_TOKENS = {"minimal": 0, "low": 128, "medium": 384, "high": 1152}

_REASONING_MODEL = re.compile(r"(o1|o3|o4|gpt-5)(?!.*-chat)", re.IGNORECASE)
_O_SERIES = re.compile(r"o\d", re.IGNORECASE)
#: Parameters a reasoning model refuses whatever their value.
_UNSUPPORTED = (
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "top_logprobs",
)


def is_reasoning(settings: EmulatorSettings) -> bool:
    """Whether a deployment with ``settings`` runs a reasoning model.

    Examples
    --------
    >>> is_reasoning(EmulatorSettings(model="o4-mini"))
    True
    >>> is_reasoning(EmulatorSettings(model="gpt-5-chat"))
    False
    >>> is_reasoning(EmulatorSettings(model="my-model", reasoning=True))
    True
    """
    if settings.reasoning is not None:
        return settings.reasoning
    return _REASONING_MODEL.match(settings.model) is not None


def _shown(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _unsupported(param: str, extra: str = "") -> web.Response:
    return invalid(
        f"Unsupported parameter: '{param}' is not supported with this model.{extra}",
        param=param,
        code="unsupported_parameter",
    )


def _effort_problem(effort: Any, settings: EmulatorSettings) -> web.Response | None:
    if not isinstance(effort, str):
        return invalid(
            "Invalid type for 'reasoning_effort': expected one of 'minimal', 'low', "
            "'medium', or 'high', but got a value of another type instead.",
            param="reasoning_effort",
            code="invalid_type",
        )
    if effort not in EFFORTS:
        return invalid(
            f"Invalid value: '{effort[:40]}'. Supported values are: {_shown(EFFORTS)}.",
            param="reasoning_effort",
            code="invalid_value",
        )
    if effort == "minimal" and _O_SERIES.match(settings.model):
        return invalid(
            "Unsupported value: 'reasoning_effort' does not support 'minimal' with "
            f"this model. Supported values are: {_shown(EFFORTS[1:])}.",
            param="reasoning_effort",
            code="unsupported_value",
        )
    return None


def reasoning_problem(
    body: Mapping[str, Any], settings: EmulatorSettings
) -> web.Response | None:
    """Azure's 400 for what a body asks that the deployment's model does not take.

    Parameters
    ----------
    body
        A chat-completions body (its types already checked).
    settings
        The deployment's settings.

    Examples
    --------
    >>> o4 = EmulatorSettings(model="o4-mini")
    >>> print(reasoning_problem({"max_tokens": 5}, o4).text)  # doctest: +ELLIPSIS
    {"error": {"code": "unsupported_parameter", "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.", ...
    >>> reasoning_problem({"temperature": 1, "max_completion_tokens": 9}, o4) is None
    True
    """
    effort = body.get("reasoning_effort")
    if not is_reasoning(settings):
        if effort is not None:
            return _unsupported("reasoning_effort")
        return None
    if effort is not None:
        problem = _effort_problem(effort, settings)
        if problem is not None:
            return problem
    if body.get("max_tokens") is not None:
        return _unsupported("max_tokens", " Use 'max_completion_tokens' instead.")
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        return invalid(
            f"Unsupported value: 'temperature' does not support "
            f"{json.dumps(temperature)} with this model. Only the default (1) value "
            "is supported.",
            param="temperature",
            code="unsupported_value",
        )
    for name in _UNSUPPORTED:
        if body.get(name) is not None:
            return _unsupported(name)
    if body.get("logprobs"):
        return _unsupported("logprobs")
    return None


def effort_of(body: Mapping[str, Any]) -> str:
    """The reasoning effort a (checked) body asks for, or :data:`DEFAULT_EFFORT`."""
    effort = body.get("reasoning_effort")
    return effort if isinstance(effort, str) else DEFAULT_EFFORT


def reasoning_tokens(effort: str, prompt: str) -> int:
    """The reasoning tokens a model spends on ``prompt`` at ``effort``.

    Examples
    --------
    >>> [reasoning_tokens(e, "What is 2 + 2?") for e in EFFORTS]
    [0, 176, 528, 1584]
    """
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
    factor = 1 + (digest[0] % 32) / 64  # in [1, 1.5)
    return round(BASE_TOKENS[effort] * factor)
