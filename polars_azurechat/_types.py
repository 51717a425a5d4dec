"""Shared types and dtypes. Not meant for outside use."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import polars as pl

from polars_azurechat.errors import AzureChatError

OutputKind = Literal["content", "struct"]
OnError = Literal["null", "raise"]

#: Roles a message may carry.
ROLES = frozenset({"system", "user", "assistant", "developer"})

#: The fields of ``output="struct"`` before provenance (their names never change).
BASE_FIELDS: dict[str, pl.DataType] = {
    "content": pl.String(),
    "finish_reason": pl.String(),
    "prompt_tokens": pl.Int64(),
    "completion_tokens": pl.Int64(),
    "attempts": pl.Int32(),
    "error": pl.String(),
}
#: Provenance of ``output="struct"``: who answered, and how (null when no request was
#: answered for the row: a cache hit, a row that failed before an answer).
PROVENANCE_FIELDS: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "model": pl.String(),
    "system_fingerprint": pl.String(),
    "deployment": pl.String(),
    "latency_ms": pl.Float64(),
    "content_filter": pl.List(pl.String()),
    "response_id": pl.String(),
    "reasoning_tokens": pl.Int64(),
    "cached_tokens": pl.Int64(),
    "service_tier": pl.String(),
    "prompt_filter": pl.List(pl.String()),
}
#: ``finish_reason`` of an answer a reasoning model left empty: its reasoning used the
#: whole ``max_completion_tokens`` (Azure says ``length``, with no text).
REASONING_LENGTH = "reasoning_length"


def result_dtype(parsed: pl.DataType | None = None) -> pl.Struct:
    """The dtype of ``output="struct"``; ``parsed`` is a typed answer's Struct, if any.

    Examples
    --------
    >>> list(result_dtype(pl.Struct({"n": pl.Int64})).to_schema())[:8]
    ['content', 'finish_reason', 'prompt_tokens', 'completion_tokens', 'attempts', 'error', 'parsed', 'request_id']
    """
    fields = dict(BASE_FIELDS)
    if parsed is not None:
        fields["parsed"] = parsed
    fields.update(PROVENANCE_FIELDS)
    return pl.Struct(fields)


RESULT_DTYPE = result_dtype()


@dataclasses.dataclass(slots=True)
class ChatRequest:
    """One row's request: its messages, or the input error that keeps it from being sent.

    A message's ``content`` is a string or a list of parts (text and images).
    """

    messages: list[dict[str, Any]]
    error: AzureChatError | None = None


@dataclasses.dataclass(slots=True)
class ChatResult:
    """One row's outcome: an answer, or the error that explains why there is none."""

    content: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int = 0
    exception: AzureChatError | None = None
    cached: bool = False
    #: the typed answer (``response_format=...``), parsed and validated
    parsed: dict[str, Any] | None = None
    request_id: str | None = None
    model: str | None = None
    system_fingerprint: str | None = None
    deployment: str | None = None
    latency_ms: float | None = None
    #: content-filter categories flagged on the answer (``()``: none)
    content_filter: tuple[str, ...] | None = None
    #: the Responses API's response id
    response_id: str | None = None
    #: of ``completion_tokens``, those the model spent reasoning
    reasoning_tokens: int | None = None
    #: of ``prompt_tokens``, those Azure read from its prompt cache (billed lower)
    cached_tokens: int | None = None
    #: the processing tier that answered (``default``, ``flex``, ``priority``)
    service_tier: str | None = None
    #: the prompt's flagged filter categories (``"jailbreak:detected"``, ...)
    prompt_filter: tuple[str, ...] | None = None
    #: the answer's ``(token, logprob)`` pairs (``logprobs=True``; cached with it)
    logprobs: tuple[tuple[str, float], ...] | None = None

    @property
    def error(self) -> str | None:
        """A one-line reason for the failure (class name and message), or ``None``."""
        if self.exception is None:
            return None
        return f"{type(self.exception).__name__}: {self.exception}"

    def as_row(self, *, typed: bool = False) -> dict[str, Any]:
        """The struct value for ``output="struct"`` (with ``parsed`` when ``typed``)."""
        row: dict[str, Any] = {
            "content": self.content,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "attempts": self.attempts,
            "error": self.error,
        }
        if typed:
            row["parsed"] = self.parsed
        row.update(
            request_id=self.request_id,
            model=self.model,
            system_fingerprint=self.system_fingerprint,
            deployment=self.deployment,
            latency_ms=self.latency_ms,
            content_filter=(
                None if self.content_filter is None else list(self.content_filter)
            ),
            response_id=self.response_id,
            reasoning_tokens=self.reasoning_tokens,
            cached_tokens=self.cached_tokens,
            service_tier=self.service_tier,
            prompt_filter=(
                None if self.prompt_filter is None else list(self.prompt_filter)
            ),
        )
        return row
