"""What a batch is made of, checked: its create request and its input file's lines.

A create request (``POST /openai/batches``) names a processed ``batch`` file, the
``/chat/completions`` or ``/embeddings`` endpoint (either with a ``/v1`` prefix), or
``/v1/responses`` (on the v1 API only, as Azure's Global Batch takes it), the ``24h``
window and at most 16 short metadata pairs;
otherwise it is refused (:func:`request_problem`). The batch (``emulator/_batch.py``)
then takes the valid lines of its input file: each a JSON object with a string
``custom_id``, ``"method": "POST"``, a known ``url`` that is the batch's endpoint (a
line of another one is ``url_mismatch``, an unknown one ``invalid_url``) and an object
``body``, every line naming the first line's model, no ``custom_id`` twice. Whatever is wrong is
recorded as a problem (``{"code", "message", "param", "line"}``; the first 50), and
the batch fails validation with them. A line's directives (``[emu:batch_slow=N]``,
``[emu:batch_expire]``) set how long it takes to answer and whether it is answered.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Literal

from polars_azurechat.emulator._answers import parse_directives
from polars_azurechat.emulator._responses import chat_body
from polars_azurechat.emulator._vision import text_of

if TYPE_CHECKING:
    from polars_azurechat.emulator._files import File
    from polars_azurechat.emulator._tokens import Estimator

__all__ = ["RESPONSES", "Line", "api_of", "endpoint_of", "read_file", "request_problem"]

_CHAT = "/chat/completions"
_EMBEDDINGS = "/embeddings"
#: The Responses API's endpoint (Azure's Global Batch takes it on the v1 API only).
RESPONSES = "/v1/responses"


def endpoint_of(url: Any) -> str | None:
    """The endpoint ``url`` names, or ``None``.

    ``/chat/completions`` and ``/embeddings`` (either with a ``/v1`` prefix), and
    ``/v1/responses``.
    """
    for endpoint in (_CHAT, _EMBEDDINGS):
        if url in (endpoint, "/v1" + endpoint):
            return endpoint
    if url == RESPONSES:
        return RESPONSES
    return None


def api_of(endpoint: str) -> Literal["chat", "embeddings", "responses"]:
    """What a batch's lines ask for, by its (valid) ``endpoint``.

    Examples
    --------
    >>> api_of("/chat/completions"), api_of("/v1/embeddings"), api_of("/v1/responses")
    ('chat', 'embeddings', 'responses')
    """
    kind = endpoint_of(endpoint)
    return (
        "embeddings"
        if kind == _EMBEDDINGS
        else "responses"
        if kind == RESPONSES
        else "chat"
    )


def request_problem(
    body: Mapping[str, Any], file: File | None, now: float, *, v1: bool = True
) -> str | None:
    """Why a create request cannot make a batch of ``file`` at ``now`` (``None``: it can).

    Parameters
    ----------
    body
        The request's JSON body.
    file
        The input file it names, if it exists.
    now
        The time on the clock.
    v1
        The request came by the v1 API (``/openai/v1/batches``), the only one that
        takes ``/v1/responses`` batches.
    """
    file_id = body.get("input_file_id")
    if file is None:
        return f"The input file '{file_id}' does not exist."
    if file.purpose != "batch":
        return f"The input file '{file_id}' was not uploaded for 'batch'."
    if now < file.ready:
        return (
            f"The input file '{file_id}' is not processed yet (status 'pending'); "
            "wait until it is 'processed'."
        )
    endpoint = endpoint_of(body.get("endpoint"))
    if endpoint is None:
        return f"The endpoint '{body.get('endpoint')}' is not supported."
    if endpoint == RESPONSES and not v1:
        return (
            f"The endpoint '{RESPONSES}' is supported on the v1 API only "
            "(/openai/v1/batches, without an api-version)."
        )
    if body.get("completion_window") != "24h":
        return "The completion_window must be '24h'."
    if not _metadata_ok(body.get("metadata")):
        return (
            "metadata must be at most 16 string pairs (keys up to 64 characters, "
            "values up to 512)."
        )
    return None


@dataclasses.dataclass
class Line:
    """A valid line of a batch input file."""

    custom_id: str
    body: Any
    seconds: float  # time to answer it, on the clock
    expire: bool  # never answered: the batch expires


def read_file(
    data: bytes,
    endpoint: str,
    *,
    max_bytes: int,
    max_lines: int,
    line_s: float,
    estimate: Estimator,
    deployments: Collection[str] | None,
) -> tuple[list[Line], int, str | None, list[dict[str, Any]]]:
    """The valid lines of a batch input file, their prompts' tokens, model and problems.

    Parameters
    ----------
    data
        The input file's content.
    endpoint
        The batch's endpoint, which every line's ``url`` must match.
    max_bytes, max_lines
        The largest file a batch takes.
    line_s
        Seconds to answer one line (``[emu:batch_slow=N]`` adds ``N``).
    estimate
        Estimates the prompt tokens of a line.
    deployments
        The deployments that exist (``None``: any).

    Returns
    -------
    tuple
        The valid lines, the tokens of their prompts, the model the first line names
        (``None`` without one) and the problems recorded, in the file's order.
    """
    problems: list[dict[str, Any]] = []
    lines: list[Line] = []
    tokens = 0
    model: str | None = None
    raw = data.splitlines()
    while raw and not raw[-1].strip():
        raw.pop()
    if _file_fits(data, raw, problems, max_bytes, max_lines):
        lines, tokens, model = _read_lines(raw, endpoint, problems, estimate, line_s)
        if model is not None and deployments is not None and model not in deployments:
            _problem(
                problems,
                "model_not_found",
                f"The deployment '{model}' does not exist.",
            )
    return lines, tokens, model, problems


def _file_fits(
    data: bytes,
    raw: list[bytes],
    problems: list[dict[str, Any]],
    max_bytes: int,
    max_lines: int,
) -> bool:
    """Whether a file (``data``; ``raw``: its lines) fits a batch; records why not."""
    if len(data) > max_bytes:
        _problem(
            problems,
            "file_too_large",
            f"The input file is {len(data)} bytes; a batch file may be at "
            f"most {max_bytes} bytes.",
        )
    elif not raw:
        _problem(problems, "empty_batch", "The input file has no requests.")
    elif len(raw) > max_lines:
        _problem(
            problems,
            "too_many_tasks",
            f"The input file has {len(raw)} requests; a batch takes at most "
            f"{max_lines}.",
        )
    else:
        return True
    return False


def _read_lines(
    raw: list[bytes],
    endpoint: str,
    problems: list[dict[str, Any]],
    estimate: Estimator,
    line_s: float,
) -> tuple[list[Line], int, str | None]:
    """The valid lines of a file, their prompts' tokens and the model they name."""
    lines: list[Line] = []
    tokens = 0
    model: str | None = None
    seen: set[str] = set()
    for number, text in enumerate(raw, start=1):
        request = _line_request(text, number, endpoint, problems)
        if request is None:
            continue
        custom_id, body = request
        line_model = body.get("model")
        if model is None:
            model = str(line_model)
        elif line_model != model:
            _problem(
                problems,
                "model_mismatch",
                f"Line {number} names the model '{line_model}' but line 1 "
                f"names '{model}': every line of a file must name the same "
                "deployment.",
                number,
            )
            continue
        if custom_id in seen:
            _problem(
                problems,
                "duplicate_custom_id",
                f"The custom_id '{custom_id}' of line {number} is not unique.",
                number,
            )
            continue
        seen.add(custom_id)
        pairs, last_user, messages = _pairs(body)
        if pairs:
            tokens += estimate.messages(messages)
        else:  # an embeddings line: its inputs (directives in any of them)
            texts = _inputs(body)
            tokens += sum(estimate.text(text) for text in texts)
            last_user = "\n".join(texts)
        lines.append(_line(custom_id, body, last_user, line_s))
    return lines, tokens, model


def _line(custom_id: str, body: dict[str, Any], last_user: str, line_s: float) -> Line:
    """A valid line, its time to answer and expiry set by its directives."""
    directives = parse_directives(last_user)
    try:
        slow = float(directives.get("batch_slow") or 0)
    except ValueError:
        slow = 0.0
    return Line(
        custom_id=custom_id,
        body=body,
        seconds=line_s + max(0.0, slow),
        expire="batch_expire" in directives,
    )


def _problem(
    problems: list[dict[str, Any]], code: str, message: str, line: int | None = None
) -> None:
    """Record a validation problem of a batch file (the first 50 are kept)."""
    if len(problems) < 50:
        problems.append({"code": code, "message": message, "param": None, "line": line})


def _line_request(
    text: bytes, number: int, endpoint: str, problems: list[dict[str, Any]]
) -> tuple[str, dict[str, Any]] | None:
    """A line's ``custom_id`` and body, or ``None`` (the problem recorded)."""
    try:
        item = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        _problem(problems, "invalid_json_line", f"Line {number} is not JSON.", number)
        return None
    if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
        _problem(
            problems,
            "invalid_request",
            f"Line {number} has no string 'custom_id'.",
            number,
        )
        return None
    body = item.get("body")
    if item.get("method") != "POST" or not isinstance(body, dict):
        _problem(
            problems,
            "invalid_request",
            f"Line {number} must have method 'POST' and an object 'body'.",
            number,
        )
        return None
    url = endpoint_of(item.get("url"))
    if url is None:
        _problem(
            problems,
            "invalid_url",
            f"The url '{str(item.get('url'))[:100]}' of line {number} is not a "
            "supported endpoint.",
            number,
        )
        return None
    if url != endpoint_of(endpoint):
        _problem(
            problems,
            "url_mismatch",
            f"The url '{item.get('url')}' of line {number} does not match "
            f"the batch's endpoint '{endpoint}'.",
            number,
        )
        return None
    return item["custom_id"], body


def _pairs(
    body: Mapping[str, Any],
) -> tuple[list[tuple[str, str]], str, list[Any]]:
    """A body's ``(role, text)`` pairs, last user message ('' if unreadable), messages.

    A Responses API body is read as the chat body it is equivalent to (its
    ``instructions`` and ``input``), as its online route reads it.
    """
    if "messages" not in body and "input" in body:
        body = chat_body(body)[0] or {}
    try:
        pairs = [(str(m["role"]), text_of(m["content"])) for m in body["messages"]]
    except (KeyError, TypeError):
        return [], "", []
    last_user = next(
        (content for role, content in reversed(pairs) if role == "user"),
        pairs[-1][1] if pairs else "",
    )
    return pairs, last_user, body["messages"]


def _inputs(body: Mapping[str, Any]) -> list[str]:
    """An embeddings body's input texts (those that are strings)."""
    given = body.get("input")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list):
        return []
    return [text for text in texts if isinstance(text, str)]


def _metadata_ok(metadata: Any) -> bool:
    if metadata is None:
        return True
    return (
        isinstance(metadata, dict)
        and len(metadata) <= 16
        and all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
            for k, v in metadata.items()
        )
    )
