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

RESULT_DTYPE = pl.Struct(
    {
        "content": pl.String,
        "finish_reason": pl.String,
        "prompt_tokens": pl.Int64,
        "completion_tokens": pl.Int64,
        "attempts": pl.Int32,
        "error": pl.String,
    }
)


@dataclasses.dataclass(slots=True)
class ChatRequest:
    """One row's request: its messages, or the input error that keeps it from being sent."""

    messages: list[dict[str, str]]
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

    @property
    def error(self) -> str | None:
        """A one-line reason for the failure (class name and message), or ``None``."""
        if self.exception is None:
            return None
        return f"{type(self.exception).__name__}: {self.exception}"

    def as_row(self) -> dict[str, Any]:
        """The struct value for ``output="struct"``."""
        return {
            "content": self.content,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "attempts": self.attempts,
            "error": self.error,
        }
