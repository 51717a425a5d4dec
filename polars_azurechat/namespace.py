"""The ``chat`` namespace: ``pl.col("messages").chat.complete(...)``. It only forwards."""

from __future__ import annotations

from typing import TYPE_CHECKING, Unpack

import polars as pl

from polars_azurechat import embeddings, functions
from polars_azurechat.options import ChatOptionsDict, with_options

if TYPE_CHECKING:
    import openai

    from polars_azurechat.config import ChatConfig
    from polars_azurechat.embeddings import EmbedOptionsDict
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

    def embed(
        self,
        *,
        dimensions: int | None = None,
        model: str | None = None,
        inputs_per_request: int = embeddings.MAX_INPUTS,
        request_tokens: int = embeddings.REQUEST_TOKENS,
        truncate: bool = False,
        config: ChatConfig | None = None,
        **params: Unpack[EmbedOptionsDict],
    ) -> pl.Expr:
        """Embed every row (String texts); see :func:`polars_azurechat.embed`.

        Parameters
        ----------
        dimensions, model, inputs_per_request, request_tokens, truncate, config
            As for :class:`polars_azurechat.Embedder`.
        **params
            Job options (``deployment``, ``cache``, ``max_concurrency``, ...).

        Returns
        -------
        pl.Expr
            ``Array(Float32, n)`` vectors, one per row (null for a null text).

        Examples
        --------
        >>> import polars as pl
        >>> import polars_azurechat
        >>> lf = pl.LazyFrame({"text": ["red apples", "stock market"]})
        >>> q = lf.select(
        ...     pl.col("text").chat.embed(
        ...         deployment="text-embedding-3-small", dimensions=8
        ...     )
        ... )
        >>> q.collect_schema()["text"]
        Array(Float32, shape=(8,))
        >>> q.collect().height
        2
        """
        return embeddings.embed(
            self._expr,
            dimensions=dimensions,
            model=model,
            inputs_per_request=inputs_per_request,
            request_tokens=request_tokens,
            truncate=truncate,
            config=config,
            **params,
        )
