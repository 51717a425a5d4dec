"""The ``chat`` namespace: ``pl.col("messages").chat.complete(...)``. It only forwards."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Unpack

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

    # -- tasks (polars_azurechat.tasks): one call each, a prompt and a typed answer

    def classify(self, labels: Any, **kwargs: Any) -> pl.Expr:
        """Put each row's text in one of ``labels``; see :func:`polars_azurechat.tasks.classify`.

        Parameters
        ----------
        labels
            The labels (a list, a ``{label: description}`` dict, an Enum).
        **kwargs
            As for :func:`polars_azurechat.tasks.classify`.

        Returns
        -------
        pl.Expr
            An ``Enum`` of the labels (``confidence=True``: ``Struct{label,
            confidence}``).

        Examples
        --------
        >>> import polars as pl
        >>> import polars_azurechat
        >>> df = pl.DataFrame(
        ...     {"ticket": ["My invoice is wrong", "Where is my parcel?"]}
        ... )
        >>> topic = pl.col("ticket").chat.classify(["invoice", "parcel"], max_tokens=20)
        >>> df.select(topic)["ticket"].to_list()
        ['invoice', 'parcel']
        """
        from polars_azurechat import tasks

        return tasks.classify(self._expr, labels, **kwargs)

    def filter(self, condition: str, **kwargs: Any) -> pl.Expr:
        """Whether each row's text meets ``condition``; see :func:`polars_azurechat.tasks.filter`.

        Parameters
        ----------
        condition
            What a row must meet, in words.
        **kwargs
            As for :func:`polars_azurechat.tasks.filter`.

        Returns
        -------
        pl.Expr
            ``Boolean``, for ``.filter()``.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_azurechat
        >>> df = pl.DataFrame({"ticket": ["Refund me now", "Great app"]})
        >>> df.filter(pl.col("ticket").chat.filter("wants a refund", max_tokens=20))
        shape: (1, 1)
        ┌───────────────┐
        │ ticket        │
        │ ---           │
        │ str           │
        ╞═══════════════╡
        │ Refund me now │
        └───────────────┘
        """
        from polars_azurechat import tasks

        return tasks.filter(self._expr, condition, **kwargs)

    def extract(self, schema: Any, **kwargs: Any) -> pl.Expr:
        """The fields of ``schema`` from each row; see :func:`polars_azurechat.tasks.extract`.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_azurechat
        >>> df = pl.DataFrame({"note": ["What is 6 x 7?"]})
        >>> df.select(pl.col("note").chat.extract(pl.Struct({"n": pl.Int64})))["note"][
        ...     0
        ... ]
        {'n': 42}
        """
        from polars_azurechat import tasks

        return tasks.extract(self._expr, schema, **kwargs)

    def sentiment(self, **kwargs: Any) -> pl.Expr:
        """Each row's sentiment; see :func:`polars_azurechat.tasks.sentiment`.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_azurechat
        >>> df = pl.DataFrame({"review": ["Negative: it broke"]})
        >>> df.select(pl.col("review").chat.sentiment())["review"].to_list()
        ['negative']
        """
        from polars_azurechat import tasks

        return tasks.sentiment(self._expr, **kwargs)

    def summarize(self, **kwargs: Any) -> pl.Expr:
        """A summary of each row; see :func:`polars_azurechat.tasks.summarize`.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_azurechat
        >>> df = pl.DataFrame({"text": ["A long story about a late parcel"]})
        >>> df.select(pl.col("text").chat.summarize(max_words=10)).dtypes
        [String]
        """
        from polars_azurechat import tasks

        return tasks.summarize(self._expr, **kwargs)

    def translate(self, to: str, **kwargs: Any) -> pl.Expr:
        """Each row translated into ``to``; see :func:`polars_azurechat.tasks.translate`.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_azurechat
        >>> df = pl.DataFrame({"text": ["Good morning"]})
        >>> df.select(pl.col("text").chat.translate("French")).dtypes
        [String]
        """
        from polars_azurechat import tasks

        return tasks.translate(self._expr, to, **kwargs)
