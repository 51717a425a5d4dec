"""The ``chat`` namespace: ``pl.col("messages").chat.complete(...)``. It only forwards."""

from __future__ import annotations

import os
from typing import Any

import openai
import polars as pl

from polars_azurechat import functions
from polars_azurechat._types import OnError, OutputKind
from polars_azurechat.config import ChatConfig

__all__ = ["ChatNamespace"]


@pl.api.register_expr_namespace("chat")
class ChatNamespace:
    """Chat completions for an expression (see :func:`polars_azurechat.complete`)."""

    def __init__(self, expr: pl.Expr) -> None:
        self._expr = expr

    def complete(
        self,
        *,
        deployment: str | None = None,
        config: ChatConfig | None = None,
        system: str | None = None,
        output: OutputKind = "content",
        max_concurrency: int = 64,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        max_attempts: int = 6,
        timeout_s: float = 60.0,
        deadline_s: float | None = None,
        on_error: OnError = "null",
        cache: str | os.PathLike[str] | None = None,
        progress: bool = False,
        client: openai.AzureOpenAI | None = None,
        **params: Any,
    ) -> pl.Expr:
        """Answer every row with Azure OpenAI; see :func:`polars_azurechat.complete`.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_azurechat
        >>> df = pl.DataFrame(
        ...     {
        ...         "messages": [
        ...             [{"role": "user", "content": "What is 53 + 53?"}],
        ...             [
        ...                 {"role": "system", "content": "Be brief."},
        ...                 {"role": "user", "content": "What is 2 - 5?"},
        ...             ],
        ...         ]
        ...     }
        ... )
        >>> df.select(pl.col("messages").chat.complete(max_tokens=20))
        shape: (2, 1)
        ┌──────────┐
        │ messages │
        │ ---      │
        │ str      │
        ╞══════════╡
        │ 106      │
        │ -3       │
        └──────────┘
        """
        return functions.complete(
            self._expr,
            deployment=deployment,
            config=config,
            system=system,
            output=output,
            max_concurrency=max_concurrency,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            deadline_s=deadline_s,
            on_error=on_error,
            cache=cache,
            progress=progress,
            client=client,
            **params,
        )
