"""The ``chat`` namespace: ``pl.col("messages").chat.complete(...)``. It only forwards."""

from __future__ import annotations

from typing import TYPE_CHECKING, Unpack

import polars as pl

from polars_azurechat import functions
from polars_azurechat.options import ChatOptionsDict, with_options

if TYPE_CHECKING:
    import openai

    from polars_azurechat.config import ChatConfig
    from polars_azurechat.options import ChatOptions

__all__ = ["ChatNamespace"]


@pl.api.register_expr_namespace("chat")
class ChatNamespace:
    """Chat completions for an expression (see :func:`polars_azurechat.complete`)."""

    def __init__(self, expr: pl.Expr) -> None:
        self._expr = expr

    @with_options(before=("self", "config", "client", "options"))
    def complete(
        self,
        *,
        config: ChatConfig | None = None,
        client: openai.OpenAI | None = None,
        options: ChatOptions | None = None,
        **params: Unpack[ChatOptionsDict],
    ) -> pl.Expr:
        """Answer every row with Azure OpenAI; see :func:`polars_azurechat.complete`.

        Parameters
        ----------
        config, client, options
            As for :func:`polars_azurechat.complete`.
        {options}
        **params
            Chat-completions body fields (``max_tokens``, ``temperature``, ...);
            ``response_format`` may be the answer's type (a pydantic model, a
            JSON-schema dict or a ``pl.Struct``): typed answers.

        Returns
        -------
        pl.Expr
            The answers, one per row: String, or the typed answer's Struct.

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
            self._expr, config=config, client=client, options=options, **params
        )
