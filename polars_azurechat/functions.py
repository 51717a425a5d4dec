"""The typed API: :func:`complete` for expressions, :func:`complete_many` for lists.

Every entry point takes the options of :class:`~polars_azurechat.options.ChatOptions`
(their signatures and docs are generated from it) and builds a :class:`Completer`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, Unpack, overload

import polars as pl

from polars_azurechat import _interrupt
from polars_azurechat._convert import (
    check_dtype,
    results_to_series,
    rows_to_requests,
    series_to_requests,
)
from polars_azurechat._types import ChatRequest, ChatResult, result_dtype
from polars_azurechat.config import ENV_DEPLOYMENT, ChatConfig
from polars_azurechat.errors import (
    AzureChatError,
    BatchFailedError,
    BatchIncompleteError,
    CompletionFailed,
    ConfigurationError,
    RowError,
    remember_for_polars,
)
from polars_azurechat.options import (
    ChatOptions,
    ChatOptionsDict,
    ChatOptionsDictNoOutput,
    options_doc,
    typed_body,
    with_options,
)
from polars_azurechat.summary import (
    RunSummary,
    SpendingCap,
    batch_price,
    estimate_cost,
    price_for,
)

if TYPE_CHECKING:
    import openai

    from polars_azurechat._batch import BatchProgress, BatchRunner
    from polars_azurechat._batch_state import BatchStateStore
    from polars_azurechat._engine import AnswerCache, ChatEngine, Run, RunStats
    from polars_azurechat._pool import Pool
    from polars_azurechat._ratelimit import RateLimiter
    from polars_azurechat._schema import OutputSchema
    from polars_azurechat._transport import ChatTransport

__all__ = ["Completer", "complete", "complete_many"]

logger = logging.getLogger(__name__)

#: Rows converted and answered at a time within one Polars chunk (bounds memory).
SLICE_ROWS = 8192
#: Slices of one chunk answered at once (so one slow row does not idle the engine).
SLICES_IN_FLIGHT = 3

Rows = Iterable[str | Sequence[Mapping[str, Any]] | None]


@with_options(before=("expr", "config", "client", "options"))
def complete(
    expr: str | pl.Expr,
    *,
    config: ChatConfig | None = None,
    client: openai.AzureOpenAI | None = None,
    options: ChatOptions | None = None,
    **params: Unpack[ChatOptionsDict],
) -> pl.Expr:
    """Answer every row of a column of chat messages (or prompts) with Azure OpenAI.

    Parameters
    ----------
    expr
        A column name or expression: ``List(Struct{role, content})`` (extra struct fields
        are ignored) or ``String`` prompts.
    config
        Endpoint and credential; default :meth:`ChatConfig.from_env` (arguments, then
        environment, then ``.env``), resolved now so a missing setting fails before any
        request.
    client
        Your own ``openai.AzureOpenAI`` client, used instead of the built-in HTTP
        transport (for proxies or a custom ``http_client``). It is used with
        ``max_retries=0`` (the engine retries) and costs ~2.5 ms CPU per request against
        ~0.15 ms for the built-in transport. Excludes ``config``.
    options
        A :class:`ChatOptions` to start from; keywords below change it.
    {options}
    **params
        Chat-completions body fields: ``max_tokens``, ``temperature``, ``top_p``,
        ``seed``, ``stop``, ``response_format``, ... (checked against the fields the
        API knows; custom ones go in ``extra_body={...}``). ``response_format`` may
        be the answer's type: a pydantic model, a JSON-schema dict or a ``pl.Struct``
        (typed answers: Azure's strict structured outputs; each answer is parsed and
        validated, an invalid one is sent again as an attempt, then fails with
        :class:`SchemaValidationError`; a refusal is a :class:`RefusalError`, a
        truncated answer a :class:`TruncatedError`). ``{"type": "json_object"}``
        keeps String answers.

    Returns
    -------
    pl.Expr
        String (``output="content"``), or the typed answer's Struct with a schema
        ``response_format``; Struct (``output="struct"``): content, finish_reason,
        usage, attempts, error, ``parsed`` (typed answers), and provenance
        (request_id, model, system_fingerprint, deployment, latency_ms,
        content_filter). The dtype is known before any request.

    Raises
    ------
    ConfigurationError
        A setting is missing (the message names the environment variable).
    ValueError, TypeError
        An option or keyword is invalid or unknown (checked now, before any request).
    TypeError
        At run time, when the column's dtype is neither String nor a list of messages.
    AuthenticationError, NotFoundError
        At run time, at the first 401/403/404: the run stops at once.
    CompletionFailed
        At run time, with ``on_error="raise"``, after all rows ran.

    Notes
    -----
    - Row ``i``'s answer is always row ``i``'s; null rows stay null and send nothing.
    - Polars may hand the column over in chunks, from several threads at once; one job
      per expression keeps ``max_concurrency`` and the quota across all of them, and
      across collects. Each collect is a run with its own ``deadline_s``.
    - With ``on_error="raise"`` the row indices are positions within the chunk that
      failed.
    - Under ``group_by``/``over`` the function sees the whole column, not each group.
    - With ``mode="batch"`` the expression gathers the whole column (Polars hands it
      over at once, streaming engine included): one collect is one set of batches,
      and the collect returns when they have ended.
    - Each use of the expression in a query sends its requests again (Polars does not
      deduplicate Python functions): compute it once with ``with_columns`` and reuse the
      column, or set ``cache``.

    Examples
    --------
    >>> import polars as pl
    >>> import polars_azurechat as pac
    >>> df = pl.DataFrame({"prompt": ["What is 53 + 53?", "What is 6 * 7?", None]})
    >>> df.with_columns(answer=pac.complete("prompt", max_tokens=20))
    shape: (3, 2)
    ┌──────────────────┬────────┐
    │ prompt           ┆ answer │
    │ ---              ┆ ---    │
    │ str              ┆ str    │
    ╞══════════════════╪════════╡
    │ What is 53 + 53? ┆ 106    │
    │ What is 6 * 7?   ┆ 42     │
    │ null             ┆ null   │
    └──────────────────┴────────┘

    Typed answers: give the answer's type as ``response_format``; the column is a
    Struct of its fields (``unnest`` it for columns):

    >>> from typing import Literal
    >>> from pydantic import BaseModel
    >>> class Sum(BaseModel):
    ...     total: int
    ...     size: Literal["small", "large"]
    >>> typed = pac.complete("prompt", response_format=Sum, max_tokens=50)
    >>> out = df.select(answer=typed)
    >>> out.schema["answer"]
    Struct({'total': Int64, 'size': Enum(categories=['small', 'large'])})
    >>> out.unnest("answer")["total"].to_list()
    [106, 42, None]
    """
    return Completer(config=config, client=client, options=options, **params).expr(expr)


@overload
def complete_many(
    rows: Rows,
    *,
    output: Literal["content"] = ...,
    config: ChatConfig | None = ...,
    client: openai.AzureOpenAI | None = ...,
    options: ChatOptions | None = ...,
    **params: Unpack[ChatOptionsDictNoOutput],
) -> list[str | None]: ...
@overload
def complete_many(
    rows: Rows,
    *,
    output: Literal["struct"],
    config: ChatConfig | None = ...,
    client: openai.AzureOpenAI | None = ...,
    options: ChatOptions | None = ...,
    **params: Unpack[ChatOptionsDictNoOutput],
) -> list[dict[str, Any] | None]: ...
@with_options(before=("rows", "config", "client", "options"))
def complete_many(
    rows: Rows,
    *,
    config: ChatConfig | None = None,
    client: openai.AzureOpenAI | None = None,
    options: ChatOptions | None = None,
    **params: Unpack[ChatOptionsDict],
) -> list[str | None] | list[dict[str, Any] | None]:
    """Answer a plain list of message lists (or prompts), in input order, without Polars.

    The same engine as :func:`complete`, for code that holds Python lists, as the original
    parallel-requests handler's users do. Arguments are those of :func:`complete`; the
    connections are closed when it returns.

    Parameters
    ----------
    rows
        Prompt strings, message lists (``[{"role": ..., "content": ...}, ...]``) or
        ``None``.
    config, client, options
        As for :func:`complete`.
    {options}
    **params
        Chat-completions body fields, as for :func:`complete`.

    Returns
    -------
    list
        One answer per row: a string (``output="content"``; a dict of the typed
        answer's fields with a schema ``response_format``) or a dict
        (``output="struct"``); ``None`` for a null or failed row.

    Examples
    --------
    >>> import polars_azurechat as pac
    >>> pac.complete_many(
    ...     [
    ...         [
    ...             {"role": "system", "content": "Answer with a number."},
    ...             {"role": "user", "content": "What is 53 + 53?"},
    ...         ],
    ...         "What is 100 + 100?",
    ...     ],
    ...     max_tokens=20,
    ... )
    ['106', '200']
    """
    with Completer(config=config, client=client, options=options, **params) as job:
        return job.run(rows)


class Completer:
    """A configured chat-completion job: its options, connections, quota and cache.

    :func:`complete` and :func:`complete_many` build one; build it yourself to read the
    :meth:`summary`, or to use one job (one concurrency bound, one quota, one connection
    pool) for several columns, lists and collects. Each collect, :meth:`run` call or CLI
    job is a *run* with its own deadline and counters; :meth:`summary` covers every run
    (``last_run=True``: the last one). Close it with :meth:`close` or a ``with`` block
    (or let it be garbage-collected).

    Parameters
    ----------
    config, client, options
        As for :func:`complete`. In batch mode the files and batches go through
        ``client`` (an ``openai.AzureOpenAI``), else through one built from
        ``config`` (its key, token, token provider or credential).
    {options}
    prices
        ``{model name prefix: (input, output)}`` in USD per million tokens, merged over
        :data:`polars_azurechat.summary.PRICES` for the cost estimate.
    **params
        Chat-completions body fields, as for :func:`complete`.

    Examples
    --------
    >>> import polars as pl
    >>> import polars_azurechat as pac
    >>> job = pac.Completer(max_tokens=20)
    >>> df = pl.DataFrame({"q": ["What is 1 + 1?", "What is 1 + 1?", "What is 2 + 3?"]})
    >>> df.select(job.expr("q"))["q"].to_list()
    ['2', '2', '5']
    >>> s = job.summary()
    >>> (s.answered, s.requests, s.deduplicated)
    (3, 2, 1)
    >>> job.close()

    Batch mode: the same rows through Azure's Batch API (a Global Batch deployment,
    half the price, answered within 24 h). The batches are recorded in the cache file
    before anything is sent, so a rerun after a crash attaches to them, and a rerun
    of a finished job sends nothing; ``max_cost_usd`` caps the job's spending:

    >>> with pac.Completer(
    ...     mode="batch", cache="answers.sqlite", max_tokens=20, batch_poll_s=0.2
    ... ) as job:
    ...     job.run(["What is 1 + 1?", "What is 2 + 3?"])
    ...     s = job.summary()
    ['2', '5']
    >>> (s.mode, s.batches, s.batch_answered, s.requests)
    ('batch', 1, 2, 0)
    """

    @with_options(before=("self", "config", "client", "options"), after=("prices",))
    def __init__(
        self,
        *,
        config: ChatConfig | None = None,
        client: openai.AzureOpenAI | None = None,
        options: ChatOptions | None = None,
        prices: Mapping[str, tuple[float, float]] | None = None,
        **params: Unpack[ChatOptionsDict],
    ) -> None:
        opts, body = ChatOptions.split(params, base=options)
        self.options = opts
        #: The typed answer's schema (``response_format=Model``), or ``None``.
        self.output_schema: OutputSchema | None
        self.output_schema, self.params = typed_body(body)
        if self.params.get("max_tokens") is None and opts.tokens_per_minute is not None:
            logger.warning(
                "tokens_per_minute is set but max_tokens is not: Azure then reserves the "
                "model's whole context per request; set max_tokens"
            )
        from polars_azurechat._engine import ChatEngine
        from polars_azurechat._redis import is_redis_url
        from polars_azurechat.cache import SqliteCache

        # the cache first: an unusable path is refused before anything else is built
        cache: AnswerCache | None = None
        if is_redis_url(opts.cache):
            from polars_azurechat._redis import RedisCache

            cache = RedisCache(str(opts.cache))
        elif opts.cache is not None:
            cache = SqliteCache(opts.cache)
        max_tokens = self.params.get(
            "max_tokens", self.params.get("max_completion_tokens")
        )
        if opts.deployments is not None:
            pool = _pool(opts, config, client, max_tokens)
        else:
            if client is None and config is None:
                config = ChatConfig.from_env()
            transport = _transport(opts, config, client, max_tokens)
            pool = _single(
                transport,
                _limiter(
                    opts.limiter,
                    transport,
                    opts.requests_per_minute,
                    opts.tokens_per_minute,
                ),
            )

        self._prices = dict(prices or {})
        self._config, self._client = config, client
        self._bar: _ProgressBar | None = None
        #: What to log once per run: failed rows (with on_error="null") and truncated
        #: answers (the CLI prints its summary instead).
        self._reports = {"failed": opts.on_error == "null", "truncated": True}
        self.engine: ChatEngine = ChatEngine(
            pool.primary.transport,
            pool=pool,
            params=self.params,
            max_concurrency=opts.max_concurrency,
            max_attempts=opts.max_attempts,
            deadline_s=opts.deadline_s,
            cache=cache,
            on_truncated=opts.on_truncated,
            schema=self.output_schema,
        )
        #: The spending cap (``max_cost_usd``), shared by every run of the job.
        self.spending_cap: SpendingCap | None = None
        if opts.max_cost_usd is not None:
            self.spending_cap = self.engine.spending_cap = _spending_cap(
                opts.max_cost_usd, self.engine.transport.deployment, self._prices
            )
        self._batch = _BatchMode() if opts.mode == "batch" else None
        _interrupt.install()  # Ctrl-C reaches the job even inside a Polars query
        engine = self.engine  # hooks must not hold the job (it would never die)
        if _show_progress(opts.progress):
            bar = self._bar = _ProgressBar(
                lambda: None if engine.last_run is None else engine.last_run.stats
            )
            engine.progress = bar.update
        engine.on_run_start = functools.partial(_run_started, self._bar)
        engine.on_run_end = functools.partial(_run_ended, self._bar, self._reports)

    def __repr__(self) -> str:
        t = self.engine.transport
        return (
            f"Completer(deployment={t.deployment!r}, host={t.endpoint_host!r}, "
            f"output={self.options.output!r}, on_error={self.options.on_error!r})"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the job's connections, cache and progress bar (it cannot be used after)."""
        if self._bar is not None:
            self._bar.close()
        if self._batch is not None:
            self._batch.close()
        self.engine.close()

    @property
    def last_error(self) -> BaseException | None:
        """The error the last run raised (the original, every attribute kept), or None.

        Polars re-creates an exception raised inside an expression from its message;
        this is the object the job raised.
        """
        run = self.engine.last_run
        return None if run is None else run.error

    def expr(self, column: str | pl.Expr) -> pl.Expr:
        """The expression answering every row of ``column`` (see :func:`complete`)."""
        column = pl.col(column) if isinstance(column, str) else column
        # batch mode gathers the column: Polars then hands it over whole (streaming
        # too), so one collect is one set of batches
        return column.map_batches(
            self._series,
            return_dtype=self._return_dtype,
            is_elementwise=self._batch is None,
        )

    @property
    def _return_dtype(self) -> pl.DataType:
        schema = self.output_schema
        if self.options.output == "struct":
            return result_dtype(None if schema is None else schema.dtype)
        return pl.String() if schema is None else schema.dtype

    def run(self, rows: Rows) -> list[Any]:
        """Answer a list of message lists or prompts as one run (see :func:`complete_many`)."""
        requests = rows_to_requests(list(rows), system=self.options.system)
        with self.engine.run_scope() as run:
            try:
                results = self._answer_all(requests)
                self._apply_policy(list(_failures(results)), len(results))
            except AzureChatError as exc:
                run.error = exc
                raise
        typed = self.output_schema is not None
        if self.options.output == "struct":
            return [None if r is None else r.as_row(typed=typed) for r in results]
        if typed:
            return [None if r is None else r.parsed for r in results]
        return [None if r is None else r.content for r in results]

    def _answer_all(self, requests: Sequence[Any]) -> list[ChatResult | None]:
        if self._batch is not None:
            return self._answer_batch(requests)
        if self._bar is not None:
            self._bar.add_total(len(requests))
        out: list[ChatResult | None] = []
        for _, results in self.engine.pipeline([(None, requests)]):
            out.extend(results)
        return out

    def summary(self, *, last_run: bool = False) -> RunSummary:
        """What this job did: across every run, or in the last one only.

        A run still waiting for more chunks of its query is ended first.
        """
        self.engine.finish()
        batch = self._batch
        if last_run:
            run = self.engine.last_run
            stats = _run_stats(run, self.engine.clock) if run is not None else None
            counts = (
                batch.counts.get(run.id)
                if batch is not None and run is not None
                else None
            )
            return self._summarize(stats, counts)
        return self._summarize(
            self.engine.stats, None if batch is None else batch.total()
        )

    def _summarize(
        self, st: RunStats | None, counts: _BatchCounts | None = None
    ) -> RunSummary:
        if st is None:
            from polars_azurechat._engine import RunStats

            st = RunStats()
        counts = counts or _BatchCounts()
        cap = self.spending_cap
        minutes = st.wall_s / 60 if st.wall_s > 0 else None
        pool, cache = self.engine.pool, self.engine.cache
        budgets = _budgets([r.limiter.learned() for r in pool.routes])
        model = st.model or self.engine.transport.deployment
        deployments: dict[str, dict[str, Any]] = {}
        if not pool.single:
            for route in pool.routes:
                learned = route.limiter.learned()
                deployments[route.name] = {
                    "tier": route.priority,
                    "requests": 0,
                    "rate_limited": 0,
                    "failed_attempts": 0,
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    **st.by_deployment.get(route.name, {}),
                    "requests_per_minute_quota": learned["requests_per_minute"],
                    "tokens_per_minute_quota": learned["tokens_per_minute"],
                    "circuit": route.breaker.state if route.breaker else "closed",
                }
        return RunSummary(
            rows=st.rows,
            answered=st.answered,
            failed=st.failed,
            null_rows=st.null_rows,
            cached=st.cached,
            deduplicated=st.deduplicated,
            requests=st.requests,
            retries=st.retries,
            rate_limited=st.rate_limited,
            failed_attempts=dict(st.failures_by_kind),
            prompt_tokens=st.prompt_tokens,
            completion_tokens=st.completion_tokens,
            wall_s=st.wall_s,
            requests_per_minute=st.requests / minutes if minutes else 0.0,
            tokens_per_minute=(
                (st.prompt_tokens + st.completion_tokens) / minutes if minutes else 0.0
            ),
            requests_per_minute_quota=budgets["requests_per_minute"],
            tokens_per_minute_quota=budgets["tokens_per_minute"],
            request_window_s=budgets["request_window_s"],
            token_window_s=budgets["token_window_s"],
            model=model,
            estimated_cost_usd=_cost(model, st, counts, self._prices),
            truncated=st.truncated,
            cache_broken=None if cache is None else cache.broken,
            deployments=deployments,
            mode=self.options.mode,
            batches=counts.batches,
            batch_lines=counts.lines,
            batch_answered=counts.answered,
            max_cost_usd=None if cap is None else cap.max_cost_usd,
            spent_usd=None if cap is None else cap.spent_usd,
            capped=0 if cap is None else cap.refused,
        )

    def _series(self, s: pl.Series) -> pl.Series:
        """The function handed to ``map_batches``: one chunk in, one chunk out.

        The chunk goes through the engine's pipeline in slices of :data:`SLICE_ROWS`
        rows, :data:`SLICES_IN_FLIGHT` at a time, so memory follows the slices, not the
        chunk, and a slice waiting for its slowest row does not idle the engine.
        """
        check_dtype(s.dtype)
        system, bar = self.options.system, self._bar
        if self._batch is not None:
            return self._batch_series(s)

        def slices() -> Iterator[tuple[int, list[Any]]]:
            for offset in range(0, len(s), SLICE_ROWS):
                part = s.slice(offset, SLICE_ROWS)
                if bar is not None:
                    bar.add_total(len(part))
                yield offset, series_to_requests(part, system=system)

        failed: list[tuple[int, ChatResult]] = []
        parts = []
        try:
            for offset, results in self.engine.pipeline(
                slices(), read_ahead=SLICES_IN_FLIGHT
            ):
                failed.extend((offset + i, r) for i, r in _failures(results))
                parts.append(
                    results_to_series(
                        results,
                        output=self.options.output,
                        name=s.name,
                        schema=self.output_schema,
                    )
                )
            self._apply_policy(failed, len(s))
        except AzureChatError as exc:
            self._failed(exc)
            raise
        if not parts:
            return pl.Series(s.name, [], dtype=self._return_dtype)
        out = parts[0] if len(parts) == 1 else pl.concat(parts, rechunk=False)
        if len(out) != len(s):  # pragma: no cover - a broadcast would misalign rows
            msg = f"internal error: {len(out)} results for {len(s)} rows"
            raise AssertionError(msg)
        return out

    def _failed(self, exc: AzureChatError) -> None:
        """A job-wide error: the run's error, and what Polars re-raises keeps it."""
        run = self.engine.last_run
        if run is not None and run.error is None:
            run.error = exc
        remember_for_polars(exc)

    # -- batch mode ---------------------------------------------------------------

    def _batch_series(self, s: pl.Series) -> pl.Series:
        """Batch mode's ``map_batches`` function: the whole column, one set of batches."""
        requests = series_to_requests(s, system=self.options.system)
        try:
            results = self._answer_batch(requests)
            self._apply_policy(list(_failures(results)), len(s))
        except AzureChatError as exc:
            self._failed(exc)
            raise
        return results_to_series(
            results, output=self.options.output, name=s.name, schema=self.output_schema
        )

    def _answer_batch(
        self, requests: Sequence[ChatRequest | None]
    ) -> list[ChatResult | None]:
        """Answer ``requests`` through Azure's Batch API, as (part of) one run.

        Null rows stay null, unsendable rows keep their input error, identical
        requests are sent once, cache hits first; under a spending cap, the rows
        whose worst case (at the batch price) does not fit fail with
        :class:`SpendingCapError`; the rest go to a
        :class:`~polars_azurechat._batch.BatchRunner` whose state is in the cache
        file. With ``batch_fallback="online"`` the rows it left unanswered go
        through the engine online, in the same run.
        """
        batch = self._batch
        assert batch is not None  # noqa: S101 - batch mode only
        engine = self.engine
        with batch.lock:  # one set of batches at a time per job
            run = engine._enter()
            try:
                return self._batch_run(run, requests)
            except KeyboardInterrupt:
                if run.interrupted is None:
                    run.interrupted = "Ctrl-C"
                cache = self.options.cache
                message = (
                    f"interrupted by {run.interrupted}: the batches submitted keep "
                    f"running on the server and are recorded in {cache}; run the same "
                    "job again to collect their answers (nothing is submitted twice), "
                    f"or 'polars-azurechat batches --cache {cache} --cancel' to cancel "
                    "them"
                )
                run.error = KeyboardInterrupt(message)
                raise run.error from None
            except BaseException as exc:
                if run.error is None and isinstance(exc, AzureChatError):
                    run.error = exc
                raise
            finally:
                engine._leave(run)

    def _batch_run(
        self, run: Run, requests: Sequence[ChatRequest | None]
    ) -> list[ChatResult | None]:
        from polars_azurechat import _tokens
        from polars_azurechat._retry import is_retryable

        batch = self._batch
        assert batch is not None  # noqa: S101 - batch mode only
        engine, bar, cap = self.engine, self._bar, self.spending_cap
        st = run.stats
        counts = batch.counts_for(run.id)
        if bar is not None:
            bar.add_total(len(requests))
        results: list[ChatResult | None] = [None] * len(requests)
        leaders: dict[str, int] = {}  # key -> first row asking it
        followers: list[tuple[int, str]] = []
        done = 0
        for i, req in enumerate(requests):
            if req is None:
                st.null_rows += 1
                done += 1
            elif req.error is not None:
                results[i] = unsendable = ChatResult(exception=req.error)
                st.count(unsendable)
                done += 1
            else:
                key = engine._key(req)
                if key in leaders:
                    followers.append((i, key))
                else:
                    leaders[key] = i
        answers: dict[str, ChatResult] = {}
        cache = engine.cache
        hits = engine._typed_hits(cache.get_many(leaders)) if cache and leaders else {}
        for key, hit in hits.items():
            results[leaders.pop(key)] = answers[key] = hit
            st.count(hit)
            st.cached += 1
            done += 1
        held: dict[str, float] = {}  # key -> worst case held under the cap
        if cap is not None:
            schema = self.output_schema
            extra = 0 if schema is None else schema.schema_tokens()
            max_tokens = self.params.get(
                "max_tokens", self.params.get("max_completion_tokens")
            )
            for key, i in list(leaders.items()):
                req = requests[i]
                assert req is not None  # noqa: S101 - leaders are sendable rows
                worst = cap.worst_case(
                    _tokens.prompt_tokens(req.messages) + extra, max_tokens, batch=True
                )
                refused = cap.reserve(worst)
                if refused is None:
                    held[key] = worst
                    continue
                results[leaders.pop(key)] = answers[key] = capped = ChatResult(
                    exception=refused
                )
                st.count(capped)
                done += 1
        if bar is not None:
            bar.update(done)
        fallback: list[str] = []
        if leaders:

            def on_results(chunk: Mapping[str, ChatResult]) -> None:
                for key, r in chunk.items():
                    if cache is not None and r.exception is None:
                        cache.put(key, r)
                    worst = held.pop(key, None)
                    if cap is not None and worst is not None:
                        spent = cap.cost(
                            r.prompt_tokens or 0, r.completion_tokens or 0, batch=True
                        )
                        cap.settle(worst, spent)
                if cache is not None:
                    cache.flush()

            shown = [0]

            def progress(p: BatchProgress) -> None:
                counts.batches = max(counts.batches, len(p.batches))
                counts.lines = max(counts.lines, p.lines)
                if bar is None:
                    return
                step = min(p.completed + p.failed, len(leaders)) - shown[0]
                if step > 0:
                    shown[0] += step
                    bar.update(step)
                bar.batch_status(_batch_text(p))

            runner = self._batch_runner(run, on_results, progress)
            out = runner.run(
                [(key, requests[i]) for key, i in leaders.items()],  # type: ignore[misc]
                cached=hits.keys(),
            )
            if cap is not None:  # rows that never reached a batch spent nothing
                for worst in held.values():
                    cap.settle(worst, 0.0)
                held.clear()
            online = self.options.batch_fallback == "online"
            for key, i in leaders.items():
                r = out[key]
                exc = r.exception
                if (
                    online
                    and exc is not None
                    and (
                        isinstance(exc, BatchIncompleteError | BatchFailedError)
                        or is_retryable(exc)
                    )
                ):
                    fallback.append(key)
                    continue
                results[i] = answers[key] = r
                st.count(r)
                st.prompt_tokens += r.prompt_tokens or 0
                st.completion_tokens += r.completion_tokens or 0
                counts.prompt_tokens += r.prompt_tokens or 0
                counts.completion_tokens += r.completion_tokens or 0
                if r.exception is None:
                    counts.answered += 1
                if r.model and st.model is None:
                    st.model = r.model
            if bar is not None:
                bar.update(len(leaders) - len(fallback) - shown[0])
        if fallback:
            logger.info(
                "batch mode: %d requests a batch left unanswered are sent online "
                "(batch_fallback='online')",
                len(fallback),
            )
            again = [requests[leaders[key]] for key in fallback]
            for _, online_results in engine.pipeline([(None, again)]):
                for key, sent in zip(fallback, online_results, strict=True):
                    assert sent is not None  # noqa: S101 - sendable rows
                    results[leaders[key]] = answers[key] = sent
        for i, key in followers:
            results[i] = follower = dataclasses.replace(answers[key], attempts=0)
            st.count(follower)
            st.deduplicated += 1
        if bar is not None and followers:
            bar.update(len(followers))
        return results

    def _batch_runner(
        self,
        run: Run,
        on_results: Callable[[Mapping[str, ChatResult]], None],
        progress: Callable[[BatchProgress], None],
    ) -> BatchRunner:
        from polars_azurechat._batch import BatchRunner
        from polars_azurechat._batch_state import BatchStateStore

        batch, opts = self._batch, self.options
        assert batch is not None  # noqa: S101 - batch mode only
        assert opts.cache is not None  # noqa: S101 - checked by ChatOptions
        if batch.state is None:
            batch.state = BatchStateStore(opts.cache)
        if batch.client is None:
            assert self._config is not None or self._client is not None  # noqa: S101
            batch.client = self._client or _batch_client(self._config)  # type: ignore[arg-type]
        settings = dict(batch.settings)  # tests: sleep, clock, hook, max_lines, ...
        sleep = settings.pop("sleep", time.sleep)
        poll = opts.batch_poll_s
        settings.setdefault("file_poll_s", min(1.0, poll))
        return BatchRunner(
            batch.client,
            deployment=self.engine.transport.deployment,
            state=batch.state,
            params=self.params,
            enqueued_tokens_limit=opts.enqueued_tokens_limit,
            on_truncated=opts.on_truncated,
            poll_interval_s=poll,
            max_poll_interval_s=max(60.0, poll),
            progress=progress,
            on_results=on_results,
            sleep=functools.partial(_batch_sleep, run, sleep),
            schema=self.output_schema,
            **settings,
        )

    def _apply_policy(self, failed: list[tuple[int, ChatResult]], total: int) -> None:
        if not failed:
            return
        if self.options.on_error == "raise":
            errors = []
            for i, r in failed:
                err = RowError(i, r.error or "failed")
                err.__cause__ = r.exception
                errors.append(err)
            shown = ", ".join(str(i) for i, _ in failed[:20])
            more = f" (+{len(failed) - 20} more)" if len(failed) > 20 else ""
            msg = (
                f"{len(failed)} of {total} rows failed (rows {shown}{more}); "
                f"first: {failed[0][1].error}"
            )
            raise CompletionFailed(msg, errors)


Completer.__doc__ = (Completer.__doc__ or "").replace("{options}", options_doc())


def _cost(
    model: str | None,
    st: RunStats,
    counts: _BatchCounts,
    prices: Mapping[str, tuple[float, float]],
) -> float | None:
    """The run's cost: online tokens at the online price, batch ones at the batch price."""
    online = estimate_cost(
        model,
        st.prompt_tokens - counts.prompt_tokens,
        st.completion_tokens - counts.completion_tokens,
        prices,
    )
    price = price_for(model, prices)
    if online is None or price is None:
        return None
    cheap = batch_price(price)
    return (
        online
        + (counts.prompt_tokens * cheap[0] + counts.completion_tokens * cheap[1])
        / 1_000_000
    )


def _spending_cap(
    max_cost_usd: float, deployment: str, prices: Mapping[str, tuple[float, float]]
) -> SpendingCap:
    """The job's cap, priced by its deployment's name (refused without a price)."""
    price = price_for(deployment, prices)
    if price is None:
        msg = (
            f"max_cost_usd needs the price of deployment {deployment!r}, and its name "
            "starts with no model of the price table (polars_azurechat.summary.PRICES): "
            f"give Completer(prices={{{deployment!r}: (input, output)}}) in USD per "
            "million tokens"
        )
        raise ConfigurationError(msg)
    return SpendingCap(max_cost_usd, price, deployment)


@dataclasses.dataclass
class _BatchCounts:
    """Batch mode's counters of one run: batches followed, lines, rows, tokens."""

    batches: int = 0
    lines: int = 0
    answered: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: _BatchCounts) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class _BatchMode:
    """What a job in batch mode keeps: its state store, client, counters, lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state: BatchStateStore | None = None
        self.client: Any = None
        #: BatchRunner keywords (tests: sleep, clock, hook, max_lines, max_bytes)
        self.settings: dict[str, Any] = {}
        self.counts: dict[int, _BatchCounts] = {}

    def counts_for(self, run_id: int) -> _BatchCounts:
        return self.counts.setdefault(run_id, _BatchCounts())

    def total(self) -> _BatchCounts:
        out = _BatchCounts()
        for c in self.counts.values():
            out.add(c)
        return out

    def close(self) -> None:
        if self.state is not None:
            self.state.close()
            self.state = None


def _batch_text(p: BatchProgress) -> str:
    """The bar's batch part: batches by status, and request counts."""
    statuses: dict[str, int] = {}
    for b in p.batches:
        statuses[b.status] = statuses.get(b.status, 0) + 1
    shown = " ".join(f"{status}={n}" for status, n in sorted(statuses.items()))
    return f"batches: {shown}; requests {p.completed + p.failed:,}/{p.lines:,}" + (
        f" ({p.failed:,} failed)" if p.failed else ""
    )


def _batch_sleep(run: Run, sleep: Callable[[float], None], seconds: float) -> None:
    """Wait between polls; a Ctrl-C (or SIGTERM) that stopped the run ends the wait."""
    if sleep is not time.sleep:
        if run.interrupted is not None:
            raise KeyboardInterrupt(run.interrupted)
        sleep(seconds)
        return
    end = time.monotonic() + seconds
    while True:
        if run.interrupted is not None:
            raise KeyboardInterrupt(run.interrupted)
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.25))


def _batch_client(config: ChatConfig) -> Any:
    """An ``openai.AzureOpenAI`` client of ``config`` for the files and batches APIs.

    A key or a fixed token is passed as is; a token provider or an azure-identity
    credential gives the client a provider whose tokens are kept fresh by the same
    code as the online path's (:class:`~polars_azurechat._auth.TokenAuth`).
    """
    import openai

    kwargs: dict[str, Any] = {
        "azure_endpoint": config.azure_endpoint,
        "api_version": config.api_version,
    }
    if config.api_key:
        kwargs["api_key"] = config.api_key
    elif config.azure_ad_token:
        kwargs["azure_ad_token"] = config.azure_ad_token
    else:
        kwargs["azure_ad_token_provider"] = functools.partial(
            _entra_token, config.auth()
        )
    return openai.AzureOpenAI(**kwargs)


def _entra_token(auth: Any) -> str:
    from polars_azurechat import _loop

    headers = _loop.call(auth.headers())
    return str(headers["Authorization"]).removeprefix("Bearer ")


def _run_started(bar: _ProgressBar | None, run: Run) -> None:
    if bar is not None:
        bar.start_run()


def _run_ended(bar: _ProgressBar | None, reports: dict[str, bool], run: Run) -> None:
    """The run is over: close its bar (at 100%), say once what went wrong."""
    if bar is not None:
        bar.close()
    st = run.stats
    total = st.rows + st.null_rows
    if reports["failed"] and st.failed:
        logger.warning(
            "chat.complete: %d of %d rows failed and are null (first: %s); "
            "output='struct' gives each row's error",
            st.failed,
            total,
            st.first_error,
        )
    if reports["truncated"] and st.truncated:
        logger.warning(
            "chat.complete: %d of %d answers were cut at max_tokens "
            "(finish_reason 'length'); raise max_tokens, or pass on_truncated='error'",
            st.truncated,
            total,
        )


def _transport(
    opts: ChatOptions, config: ChatConfig | None, client: Any, max_tokens: Any
) -> ChatTransport:
    timeout_s = opts.attempt_timeout_s(max_tokens)
    if client is not None:
        from polars_azurechat._transport import SdkTransport

        if config is not None:
            msg = "give config= or client=, not both"
            raise ValueError(msg)
        import os

        deployment = opts.deployment or os.environ.get(ENV_DEPLOYMENT)
        if not deployment:
            msg = f"no deployment: pass deployment= or set {ENV_DEPLOYMENT}"
            raise ConfigurationError(msg)
        return SdkTransport(client, deployment=deployment, timeout_s=timeout_s)
    from polars_azurechat._transport import Transport

    assert config is not None  # noqa: S101 - resolved by the caller
    return Transport(
        endpoint=config.azure_endpoint,
        deployment=config.resolve_deployment(opts.deployment),
        api_version=config.api_version,
        auth=config.auth(),
        timeout_s=timeout_s,
    )


def _budgets(learned: list[dict[str, float | None]]) -> dict[str, float | None]:
    """The budgets of a pool: sums per minute (unknown if one is); windows if alike."""
    if len(learned) == 1:
        return learned[0]
    out: dict[str, float | None] = {}
    for key in learned[0]:
        values = [d[key] for d in learned]
        if key.endswith("_window_s"):
            out[key] = values[0] if len(set(values)) == 1 else None
        else:
            known = [v for v in values if v is not None]
            out[key] = sum(known) if len(known) == len(values) else None
    return out


def _limiter(
    url: str | None,
    transport: ChatTransport,
    requests_per_minute: float | None,
    tokens_per_minute: float | None,
) -> RateLimiter:
    """The deployment's limiter: this process's own, or one shared through Redis."""
    from polars_azurechat._ratelimit import RateLimiter

    if url is None:
        return RateLimiter(
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
        )
    from polars_azurechat._redis import shared_limiter

    return shared_limiter(
        url,
        scope=f"{transport.endpoint_host}/{transport.deployment}",
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
    )


def _single(transport: ChatTransport, limiter: RateLimiter) -> Pool:
    import asyncio

    from polars_azurechat._pool import Pool, Route

    route = Route(transport.deployment, transport, limiter)
    return Pool([route], clock=time.monotonic, sleep=asyncio.sleep)


def _pool(
    opts: ChatOptions, config: ChatConfig | None, client: Any, max_tokens: Any
) -> Pool:
    """The routes of ``opts.deployments``: their transports and limiters.

    Deployments without their own credential share the job's (one token cache).
    """
    import asyncio

    from polars_azurechat._pool import Pool, Route
    from polars_azurechat._transport import SdkTransport, Transport

    deployments = opts.deployments or ()
    timeout_s = opts.attempt_timeout_s(max_tokens)
    routes = []
    shared_auth = None
    for d in deployments:
        if client is not None:
            if config is not None:
                msg = "give config= or client=, not both"
                raise ValueError(msg)
            if d.endpoint is not None or d.has_credential:
                msg = (
                    f"Deployment {d.name!r}: with client=, deployments take the client's "
                    "endpoint and credential (give config= to set them per deployment)"
                )
                raise ConfigurationError(msg)
            transport: ChatTransport = SdkTransport(
                client, deployment=d.name, timeout_s=timeout_s
            )
            cfg = None
        else:
            if config is None and (d.endpoint is None or not d.has_credential):
                config = ChatConfig.from_env()
            cfg = d.config(config)
            if d.has_credential:
                auth = cfg.auth()
            else:
                assert config is not None  # noqa: S101 - read above
                shared_auth = shared_auth or config.auth()
                auth = shared_auth
            transport = Transport(
                endpoint=cfg.azure_endpoint,
                deployment=d.name,
                api_version=cfg.api_version,
                auth=auth,
                timeout_s=timeout_s,
            )
        limiter = _limiter(
            opts.limiter,
            transport,
            d.requests_per_minute,
            d.tokens_per_minute,
        )
        routes.append(Route(d.name, transport, limiter, priority=d.priority))
    return Pool(routes, clock=time.monotonic, sleep=asyncio.sleep)


def _run_stats(run: Run, clock: Callable[[], float]) -> RunStats:
    st = run.stats.copy()
    st.wall_s = run.busy_s(clock())
    return st


def _failures(
    results: Sequence[ChatResult | None],
) -> Iterator[tuple[int, ChatResult]]:
    for i, r in enumerate(results):
        if r is not None and r.exception is not None:
            yield i, r


def _show_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class _ProgressBar:
    """One tqdm bar per run, shared by every chunk of it, that ends at 100%.

    Its total is the known row count (the CLI reads it from the Parquet footer) or
    grows as chunks arrive. The postfix shows the run's tokens/s, retries, 429s and
    failures.
    """

    def __init__(self, stats: Callable[[], RunStats | None]) -> None:
        self._lock = threading.Lock()
        self._bar: Any = None
        self._stats = stats
        self.known_total: int | None = None
        self._shown_at = 0.0
        self._batch_text: str | None = None

    def start_run(self) -> None:
        """A new run: the previous bar is closed; the next rows open a new one."""
        with self._lock:
            self._close()

    def add_total(self, n: int) -> None:
        """``n`` more rows are on their way."""
        from tqdm.auto import tqdm

        with self._lock:
            if self._bar is None:
                self._bar = tqdm(
                    total=self.known_total or 0,
                    unit="row",
                    desc="chat.complete",
                    dynamic_ncols=True,
                )
            bar = self._bar
            if self.known_total is None or bar.total < bar.n + n:
                bar.total = max(bar.total, bar.n) + n
            bar.refresh()

    def update(self, n: int) -> None:
        """``n`` rows are done (called on the loop)."""
        with self._lock:
            bar = self._bar
            if bar is None or n <= 0:
                return
            bar.update(n)
            now = time.monotonic()
            if now - self._shown_at >= 0.5 or bar.n >= (bar.total or 0):
                self._shown_at = now
                self._postfix()

    def batch_status(self, text: str) -> None:
        """Batch mode: show the batches' statuses and request counts."""
        with self._lock:
            self._batch_text = text
            if self._bar is not None:
                self._postfix()
                self._bar.refresh()

    def idle(self) -> None:
        """No batch is in flight: show the final state (every row so far is done)."""
        with self._lock:
            if self._bar is not None:
                self._postfix()
                self._bar.refresh()

    def close(self) -> None:
        """Close the bar."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._postfix()
            self._bar.close()
            self._bar = None
        self._batch_text = None

    def _postfix(self) -> None:
        st = self._stats()
        if st is None:
            return
        bar = self._bar
        if self._batch_text is not None:
            bar.set_postfix_str(f"{self._batch_text} failed={st.failed}", refresh=False)
            return
        elapsed = bar.format_dict.get("elapsed") or 0.0
        tokens = st.prompt_tokens + st.completion_tokens
        rate = tokens / elapsed if elapsed > 0 else 0.0
        per = ""
        if len(st.by_deployment) > 1:  # a pool: requests/429s/tokens per deployment
            per = " " + " ".join(
                f"{name}={c['requests']}/{c['rate_limited']}/"
                f"{c['prompt_tokens'] + c['completion_tokens']:,}"
                for name, c in st.by_deployment.items()
            )
        bar.set_postfix_str(
            f"tok/s={rate:,.0f} retries={st.retries} 429s={st.rate_limited} "
            f"failed={st.failed}{per}",
            refresh=False,
        )
