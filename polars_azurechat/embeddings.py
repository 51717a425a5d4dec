"""Embeddings: a String column (or a list of texts) to vectors, through the same engine.

:func:`embed` for expressions (also ``pl.col(c).chat.embed(...)``), :func:`embed_many`
for lists, :class:`Embedder` for a job of several columns, lists and collects. Texts
are packed many to a request (Azure's limits: 2,048 inputs, 8,192 tokens an input,
300,000 tokens a request), identical texts are sent once, and the vectors come back
in row order as an ``Array(Float32, n)`` column whose width is known before any
request: ``dimensions``, or the model's native size (from ``model=``, else from the
deployment's name: :data:`~polars_azurechat.engine.texts.EMBEDDING_MODELS`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack

import polars as pl

from polars_azurechat._handle import JobHandle
from polars_azurechat._types import ChatResult, OnError
from polars_azurechat.config import ChatConfig
from polars_azurechat.engine.texts import (
    MAX_INPUTS,
    REQUEST_TOKENS,
    EmbeddingSpec,
    TextsRequest,
    check_text_dtype,
    texts_to_requests,
    vectors_to_series,
)
from polars_azurechat.errors import AzureChatError, remember_for_polars
from polars_azurechat.functions import SLICES_IN_FLIGHT, slice_rows
from polars_azurechat.functions import _apply_policy as apply_policy
from polars_azurechat.functions import _failures as failures
from polars_azurechat.options import ChatOptions
from polars_azurechat.summary import Prices, RunSummary, SpendingCap, summarize

if TYPE_CHECKING:
    from polars_azurechat.deployments import Deployment
    from polars_azurechat.engine.core import ChatEngine
    from polars_azurechat.engine.progress import ProgressBar
    from polars_azurechat.engine.runs import Run
    from polars_azurechat.plan import Plan

__all__ = [
    "MAX_INPUTS",
    "REQUEST_TOKENS",
    "EmbedOptionsDict",
    "Embedder",
    "embed",
    "embed_many",
]

logger = logging.getLogger(__name__)

K = TypeVar("K")


class EmbedOptionsDict(TypedDict, total=False):
    """The job options an embeddings job takes (those of :class:`ChatOptions` that apply)."""

    deployment: str | None
    deployments: Sequence[Deployment] | None
    max_concurrency: int
    requests_per_minute: float | None
    tokens_per_minute: float | None
    max_attempts: int
    timeout_s: float | None
    deadline_s: float | None
    on_error: OnError
    cache: str | os.PathLike[str] | None
    limiter: str | None
    progress: bool | None
    max_cost_usd: float | None


_OPTIONS = EmbedOptionsDict.__optional_keys__


class Embedder(JobHandle):
    """A configured embeddings job: its options, connections, quota and cache.

    Parameters
    ----------
    dimensions
        The vectors' length, sent as ``dimensions`` (``text-embedding-3`` models);
        ``None``: the model's native size (1536 for ``text-embedding-3-small`` and
        ``ada-002``, 3072 for ``text-embedding-3-large``), not sent.
    model
        The model the deployment runs, when its name does not start with it (needed
        only without ``dimensions``: it gives the column's width).
    inputs_per_request
        Texts per request at most (Azure: 2,048).
    request_tokens
        Tokens per request at most, all its texts' together (Azure: 300,000).
    truncate
        ``True``: a text over 8,192 tokens is cut to its first 8,192; ``False``: its
        row fails with an :class:`~polars_azurechat.errors.InputError` saying so.
    config
        Endpoint and credential, as for :func:`polars_azurechat.complete` (Entra ID
        included).
    prices
        ``{model name prefix: (input, output)}`` in USD per million tokens, merged
        over :data:`polars_azurechat.summary.PRICES` (which has the three models), or
        ``{deployment: model}`` for a deployment named otherwise than its model.
    **params
        Job options, as for :func:`polars_azurechat.complete`: ``deployment``,
        ``deployments`` (a pool), ``max_concurrency``, ``requests_per_minute``,
        ``tokens_per_minute``, ``max_attempts``, ``timeout_s``, ``deadline_s``,
        ``on_error``, ``cache``, ``limiter``, ``progress``, ``max_cost_usd``.

    Notes
    -----
    A null text gives a null vector and sends nothing. A row that fails (an empty
    text, one over 8,192 tokens, a 400 for that input alone: a pack Azure refuses is
    split and sent again until only the refused input fails) is a null vector with
    ``on_error="null"`` (one warning per chunk counts them) and raises
    :class:`~polars_azurechat.errors.CompletionFailed` naming each row with
    ``on_error="raise"``. Chat-only options (``output``, ``system``, ``mode``,
    ``api``, body fields) are refused.

    Examples
    --------
    >>> import polars as pl
    >>> import polars_azurechat as pac
    >>> job = pac.Embedder(deployment="text-embedding-3-small", dimensions=4)
    >>> df = pl.DataFrame({"text": ["red apples", "red apples", None]})
    >>> out = df.select(job.expr("text"))
    >>> out.schema["text"], out["text"].null_count()
    (Array(Float32, shape=(4,)), 1)
    >>> s = job.summary()
    >>> (s.answered, s.deduplicated, s.requests, s.inputs)
    (2, 1, 1, 1)
    >>> job.close()
    """

    def __init__(
        self,
        *,
        dimensions: int | None = None,
        model: str | None = None,
        inputs_per_request: int = MAX_INPUTS,
        request_tokens: int = REQUEST_TOKENS,
        truncate: bool = False,
        config: ChatConfig | None = None,
        prices: Prices | None = None,
        **params: Unpack[EmbedOptionsDict],
    ) -> None:
        unknown = sorted(set(params) - _OPTIONS)
        if unknown:
            msg = (
                f"embeddings take no {unknown[0]!r}: their options are dimensions, "
                f"model, inputs_per_request, request_tokens, truncate, config, prices, "
                f"{', '.join(sorted(_OPTIONS))}"
            )
            raise TypeError(msg)
        opts = ChatOptions(**params)
        self.options = opts
        if opts.deployments is None and config is None:
            config = ChatConfig.from_env()
        name = (
            _primary(opts.deployments)
            if opts.deployments is not None
            else config.resolve_deployment(opts.deployment)  # type: ignore[union-attr]
        )
        #: the vectors' size, packing and truncation
        self.spec = EmbeddingSpec.build(
            deployment=name,
            model=model,
            dimensions=dimensions,
            inputs_per_request=inputs_per_request,
            request_tokens=request_tokens,
            truncate=truncate,
        )
        from polars_azurechat.engine.build import build_engine

        self._prices = dict(prices or {})
        self._model = model or name  # the price's name (by prefix)
        self.engine: ChatEngine
        #: The spending cap (``max_cost_usd``), shared by every run of the job.
        self.spending_cap: SpendingCap | None
        self.engine, self.spending_cap, _ = build_engine(
            opts, {}, None, config, None, self._prices, embedding=self.spec
        )
        from polars_azurechat.engine import interrupt as _interrupt
        from polars_azurechat.engine import progress

        _interrupt.install()
        reports = {"failed": False, "truncated": False}  # said per chunk, below
        self._bar: ProgressBar | None = progress.attach(
            self.engine, opts.progress, reports
        )

    def _described(self) -> str:
        return f"size={self.spec.size}"

    @property
    def dtype(self) -> pl.Array:
        """The column's dtype, ``Array(Float32, n)``: known before any request."""
        return pl.Array(pl.Float32, self.spec.size)

    @property
    def last_error(self) -> BaseException | None:
        """The error the last run raised (the original object), or ``None``."""
        run = self.engine.runs.last
        return None if run is None else run.error

    def expr(self, column: str | pl.Expr) -> pl.Expr:
        """The expression embedding every row of ``column`` (see :func:`embed`)."""
        column = pl.col(column) if isinstance(column, str) else column
        return column.map_batches(
            self._series, return_dtype=self.dtype, is_elementwise=True
        )

    def run(self, texts: Iterable[str | None]) -> pl.Series:
        """Embed a list of texts as one run; the vectors in order, as a Series."""
        requests = texts_to_requests(list(texts), truncate=self.spec.truncate)
        with self.engine.runs.scope() as run:
            try:
                results = [r for _, rs in self._answer([(0, requests)]) for r in rs]
                self._policy(list(failures(results)), len(results))
            except AzureChatError as exc:
                run.error = exc
                raise
        return vectors_to_series(results, self.spec.size, "embedding")

    def summary(self, *, last_run: bool = False) -> RunSummary:
        """What this job did (as :meth:`polars_azurechat.Completer.summary`).

        ``requests`` counts embeddings requests, ``inputs`` the texts they carried,
        ``prompt_tokens`` their tokens; the cost is at the model's input price.
        """
        runs = self.engine.runs
        runs.finish()
        st = runs.stats
        if last_run:
            from polars_azurechat.engine.core import RunStats

            last = runs.last
            st = RunStats() if last is None else last.stats.copy()
            if last is not None:
                st.wall_s = last.busy_s(self.engine.clock())
        from polars_azurechat.batch.mode import BatchCounts

        engine = self.engine
        return summarize(
            st,
            BatchCounts(),
            pool=engine.pool,
            cache=engine.cache,
            deployment=engine.transport.deployment,
            prices=self._prices,
            cap=self.spending_cap,
            mode="online",
        )

    def plan(
        self, texts: pl.Series | Iterable[str | None], *, latency_s: float = 1.0
    ) -> Plan:
        """Estimate embedding ``texts`` without sending anything: tokens, cost, time.

        Identical texts count once and the rest are packed as the job packs them;
        the cost is the tokens at the model's input price, and the wall time is
        bound by the job's ``max_concurrency`` and quota, ``latency_s`` a request
        (as :func:`polars_azurechat.plan`).

        Examples
        --------
        >>> import polars_azurechat as pac
        >>> job = pac.Embedder(
        ...     deployment="text-embedding-3-small", dimensions=4, inputs_per_request=2
        ... )
        >>> p = job.plan(["red apples", "red apples", "pears", "plums", None, ""])
        >>> p.requests, p.request_tokens, p.rows["prompt_tokens"].to_list()
        (2, 6, [2, 2, 2, 2, None, None])
        >>> print(p)  # doctest: +NORMALIZE_WHITESPACE
        rows:      6 (2 requests; 1 cannot be sent, 0 over the context)
        tokens:    8 prompt, 6 counted against the quota
        cost:      $0.0000 (text-embedding-3-small, input tokens only)
        wall:      ~1.0 s (bound by concurrency)
        >>> job.close()
        """
        from polars_azurechat.plan import plan_embeddings

        return plan_embeddings(
            self.requests(texts),
            opts=self.options,
            inputs_per_request=self.spec.inputs_per_request,
            request_tokens=self.spec.request_tokens,
            model=self._model,
            latency_s=latency_s,
            prices=self._prices,
        )

    def requests(
        self, texts: pl.Series | Iterable[str | None]
    ) -> list[TextsRequest | None]:
        """The job's requests for ``texts`` (a String column, or a list of texts).

        ``None`` for a null text; an empty or over-long text (without ``truncate``)
        carries its input error, and fails alone when answered.

        Examples
        --------
        >>> import polars_azurechat as pac
        >>> job = pac.Embedder(deployment="text-embedding-3-small", dimensions=4)
        >>> [r is None for r in job.requests(["red apples", None])]
        [False, True]
        >>> job.close()
        """
        if isinstance(texts, pl.Series):
            check_text_dtype(texts.dtype)
            texts = texts.to_list()
        return texts_to_requests(list(texts), truncate=self.spec.truncate)

    def answer_batches(
        self,
        batches: Iterable[tuple[K, Sequence[Any]]],
        *,
        read_ahead: int = SLICES_IN_FLIGHT,
    ) -> Iterator[tuple[K, list[ChatResult | None]]]:
        """Answer batches of requests; yield ``(key, results)`` in input order.

        As :meth:`polars_azurechat.Completer.answer_batches` online: at most
        ``read_ahead`` batches are being answered at once (the next ones are not
        read until an earlier one is yielded), so memory follows the read-ahead,
        not the input. Use it inside :meth:`run_scope` to make the batches one run;
        :func:`~polars_azurechat.engine.texts.vectors_to_series` (or
        ``results``' ``content``, each vector's base64) gives the vectors.

        Parameters
        ----------
        batches
            ``(key, requests)`` pairs (the requests from :meth:`requests`); the key
            is handed back with the results.
        read_ahead
            Batches being answered at once.

        Yields
        ------
        tuple
            ``(key, results)``: one :class:`~polars_azurechat._types.ChatResult` per
            request (``None`` for a ``None`` request; a failed row has ``error``).

        Examples
        --------
        >>> import polars_azurechat as pac
        >>> job = pac.Embedder(deployment="text-embedding-3-small", dimensions=4)
        >>> batches = [("a", job.requests(["red apples", ""])), ("b", [None])]
        >>> with job.run_scope():
        ...     out = [
        ...         (k, [r and r.error is None for r in rs])
        ...         for k, rs in job.answer_batches(batches)
        ...     ]
        >>> out
        [('a', [True, False]), ('b', [None])]
        >>> job.close()
        """
        bar = self._bar

        def counted() -> Iterator[tuple[K, Sequence[Any]]]:
            for key, requests in batches:
                if bar is not None:
                    bar.add_total(len(requests))
                yield key, requests

        yield from self.engine.pipeline(counted(), read_ahead=read_ahead)

    def run_scope(self) -> contextlib.AbstractContextManager[Run]:
        """One explicit run: every batch answered inside belongs to it."""
        return self.engine.runs.scope()

    def expect_rows(self, n: int) -> None:
        """Tell the progress bar the run's row count ahead (e.g. from a file's footer)."""
        if self._bar is not None:
            self._bar.known_total = n

    @property
    def shows_progress(self) -> bool:
        """The job draws a progress bar."""
        return self._bar is not None

    def _answer(
        self, batches: Iterable[tuple[int, Sequence[Any]]]
    ) -> Iterator[tuple[int, list[ChatResult | None]]]:
        return self.answer_batches(batches, read_ahead=SLICES_IN_FLIGHT)

    def _policy(self, failed: list[tuple[int, ChatResult]], total: int) -> None:
        apply_policy(self.options.on_error, failed, total)
        if failed:
            logger.warning(
                "chat.embed: %d of %d rows failed and are null (first: %s); "
                "on_error='raise' names each row's error",
                len(failed),
                total,
                failed[0][1].error,
            )

    def _series(self, s: pl.Series) -> pl.Series:
        """The function handed to ``map_batches``: one chunk in, its vectors out."""
        check_text_dtype(s.dtype)
        truncate, size = self.spec.truncate, self.spec.size

        rows = slice_rows(s)

        def slices() -> Iterator[tuple[int, list[Any]]]:
            for offset in range(0, len(s), rows):
                part = s.slice(offset, rows).to_list()
                yield offset, texts_to_requests(part, truncate=truncate)

        failed: list[tuple[int, ChatResult]] = []
        parts = []
        try:
            for offset, results in self._answer(slices()):
                failed.extend((offset + i, r) for i, r in failures(results))
                parts.append(vectors_to_series(results, size, s.name))
            self._policy(failed, len(s))
        except AzureChatError as exc:
            run = self.engine.runs.last
            if run is not None and run.error is None:
                run.error = exc
            remember_for_polars(exc)
            raise
        if not parts:
            return pl.Series(s.name, [], dtype=self.dtype)
        return parts[0] if len(parts) == 1 else pl.concat(parts, rechunk=False)


def _primary(deployments: Sequence[Deployment]) -> str:
    """The pool's first deployment (lowest tier, first listed): it names the model."""
    return min(deployments, key=lambda d: d.priority).name


def embed(
    expr: str | pl.Expr,
    *,
    dimensions: int | None = None,
    model: str | None = None,
    inputs_per_request: int = MAX_INPUTS,
    request_tokens: int = REQUEST_TOKENS,
    truncate: bool = False,
    config: ChatConfig | None = None,
    **params: Unpack[EmbedOptionsDict],
) -> pl.Expr:
    """Embed every row of a String column with Azure OpenAI: ``Array(Float32, n)``.

    Parameters
    ----------
    expr
        A column name or expression of String texts.
    dimensions, model, inputs_per_request, request_tokens, truncate, config
        As for :class:`Embedder`.
    **params
        Job options, as for :class:`Embedder` (``deployment``, ``cache``, ...).

    Returns
    -------
    pl.Expr
        ``Array(Float32, n)``, ``n`` = ``dimensions`` or the model's native size:
        known before any request (``collect_schema()`` sends nothing). Row ``i``'s
        vector is row ``i``'s text's; a null text gives a null vector.

    Raises
    ------
    ValueError, TypeError
        An option is invalid, or the vectors' size is not known (checked now).
    TypeError
        At run time, when the column is not String.
    CompletionFailed
        At run time, with ``on_error="raise"``, after all rows ran.

    Examples
    --------
    >>> import polars as pl
    >>> import polars_azurechat as pac
    >>> df = pl.DataFrame({"text": ["red apples", "green apples", None]})
    >>> out = df.with_columns(
    ...     v=pac.embed("text", deployment="text-embedding-3-small", dimensions=256)
    ... )
    >>> out.schema["v"]
    Array(Float32, shape=(256,))
    >>> out["v"].arr.len().to_list()
    [256, 256, None]
    """
    job = Embedder(
        dimensions=dimensions,
        model=model,
        inputs_per_request=inputs_per_request,
        request_tokens=request_tokens,
        truncate=truncate,
        config=config,
        **params,
    )
    return job.expr(expr)


def embed_many(
    texts: Iterable[str | None],
    *,
    dimensions: int | None = None,
    model: str | None = None,
    inputs_per_request: int = MAX_INPUTS,
    request_tokens: int = REQUEST_TOKENS,
    truncate: bool = False,
    config: ChatConfig | None = None,
    **params: Unpack[EmbedOptionsDict],
) -> list[list[float] | None]:
    """Embed a plain list of texts, in input order, without Polars in your code.

    Parameters
    ----------
    texts
        Strings, or ``None`` (a ``None`` vector).
    dimensions, model, inputs_per_request, request_tokens, truncate, config
        As for :class:`Embedder`.
    **params
        Job options, as for :class:`Embedder`.

    Returns
    -------
    list
        One vector (a list of floats) per text; ``None`` for a null or failed row.

    Examples
    --------
    >>> import polars_azurechat as pac
    >>> vs = pac.embed_many(
    ...     ["red apples", None], deployment="text-embedding-3-small", dimensions=3
    ... )
    >>> len(vs[0]), vs[1]
    (3, None)
    """
    with Embedder(
        dimensions=dimensions,
        model=model,
        inputs_per_request=inputs_per_request,
        request_tokens=request_tokens,
        truncate=truncate,
        config=config,
        **params,
    ) as job:
        return job.run(texts).to_list()
