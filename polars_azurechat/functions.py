"""The typed API: :func:`complete` for expressions, :func:`complete_many` for lists.

Every entry point takes the options of :class:`~polars_azurechat.options.ChatOptions`
(their signatures and docs are generated from it) and builds a :class:`Completer`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Unpack, overload

import polars as pl

from polars_azurechat._handle import JobHandle
from polars_azurechat._types import ChatRequest, ChatResult, result_dtype
from polars_azurechat.config import ChatConfig
from polars_azurechat.engine.convert import (
    check_dtype,
    results_to_series,
    say_system_unsent,
    series_to_requests,
    to_requests,
)
from polars_azurechat.errors import (
    AzureChatError,
    CompletionFailed,
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
from polars_azurechat.report import Reports
from polars_azurechat.summary import (
    Prices,
    RunSummary,
    SpendingCap,
    summarize,
)

if TYPE_CHECKING:
    import openai

    from polars_azurechat.batch.mode import BatchCounts, BatchMode
    from polars_azurechat.engine.core import ChatEngine, Run, RunStats
    from polars_azurechat.engine.progress import ProgressBar
    from polars_azurechat.schema.output import OutputSchema

__all__ = ["Completer", "complete", "complete_many"]

logger = logging.getLogger(__name__)

K = TypeVar("K")

#: Rows converted and answered at a time within one Polars chunk (bounds memory).
SLICE_ROWS = 8192
#: ...and at most about this much of the column's data per slice: a photo a row is a
#: 67 KB data URL, and 8,192 of them were 550 MB of Python strings per slice.
SLICE_BYTES = 32 * 1024 * 1024
#: The fewest rows a slice is cut to (to keep the engine's concurrency fed).
MIN_SLICE_ROWS = 256
#: Slices of one chunk answered at once (so one slow row does not idle the engine).
SLICES_IN_FLIGHT = 3

Rows = Iterable[str | Sequence[Mapping[str, Any]] | None]


@with_options(before=("expr", "config", "client", "options"))
def complete(
    expr: str | pl.Expr,
    *,
    config: ChatConfig | None = None,
    client: openai.OpenAI | None = None,
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
        Your own ``openai.AzureOpenAI`` client (or an ``openai.OpenAI`` one whose
        ``base_url`` is the resource's v1 API), used instead of the built-in HTTP
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
    AuthenticationError, NotFoundError, UnsupportedParameterError
        At run time, at the first 401/403/404, or the first 400 every row would
        repeat (a parameter the deployment refuses): the run stops at once.
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
    client: openai.OpenAI | None = ...,
    options: ChatOptions | None = ...,
    **params: Unpack[ChatOptionsDictNoOutput],
) -> list[str | None]: ...
@overload
def complete_many(
    rows: Rows,
    *,
    output: Literal["struct"],
    config: ChatConfig | None = ...,
    client: openai.OpenAI | None = ...,
    options: ChatOptions | None = ...,
    **params: Unpack[ChatOptionsDictNoOutput],
) -> list[dict[str, Any] | None]: ...
@with_options(before=("rows", "config", "client", "options"))
def complete_many(
    rows: Rows,
    *,
    config: ChatConfig | None = None,
    client: openai.OpenAI | None = None,
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


class Completer(JobHandle, Reports):
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
        ``{model name prefix: (input, output)}`` (or ``(input, output, cached input)``)
        in USD per million tokens, merged over :data:`polars_azurechat.summary.PRICES`
        for the cost estimate and ``max_cost_usd``; or ``{deployment: model}`` for a
        deployment whose name does not start with its model's (``{"prod-mini":
        "gpt-4o-mini"}``): it is priced, and its images billed, as that model.
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
        client: openai.OpenAI | None = None,
        options: ChatOptions | None = None,
        prices: Prices | None = None,
        **params: Unpack[ChatOptionsDict],
    ) -> None:
        opts, body = ChatOptions.split(params, base=options)
        self.options = opts
        #: The typed answer's schema (``response_format=Model``), or ``None``.
        self.output_schema: OutputSchema | None
        self.output_schema, fields = typed_body(body)
        from polars_azurechat.engine.build import build_engine

        self._prices = dict(prices or {})
        self._bar: ProgressBar | None = None
        #: What to log once per run: failed rows (with on_error="null") and truncated
        #: answers (the CLI prints its summary instead).
        self._reports: dict[str, Any] = {"failed": opts.on_error == "null"}
        self.engine: ChatEngine
        #: The spending cap (``max_cost_usd``), shared by every run of the job.
        self.spending_cap: SpendingCap | None
        self.engine, self.spending_cap, config = build_engine(
            opts, fields, self.output_schema, config, client, self._prices
        )
        from polars_azurechat.engine import interrupt as _interrupt

        _interrupt.install()  # Ctrl-C reaches the job even inside a Polars query
        from polars_azurechat.engine import progress

        self._bar = progress.attach(self.engine, opts.progress, self._reports)
        self._batch: BatchMode | None = None
        if opts.mode == "batch":
            from polars_azurechat.batch.mode import BatchMode

            self._batch = BatchMode(
                self.engine,
                opts,
                config=config,
                client=client,
                cap=self.spending_cap,
                bar=self._bar,
            )

    def _described(self) -> str:
        o = self.options
        return f"output={o.output!r}, on_error={o.on_error!r}"

    def _close_more(self) -> None:
        if self._batch is not None:
            self._batch.close()

    @property
    def last_error(self) -> BaseException | None:
        """The error the last run raised (the original, every attribute kept), or None.

        Polars re-creates an exception raised inside an expression from its message;
        this is the object the job raised.
        """
        run = self.engine.runs.last
        return None if run is None else run.error

    def expr(self, column: str | pl.Expr) -> pl.Expr:
        """The expression answering every row of ``column`` (see :func:`complete`)."""
        column = pl.col(column) if isinstance(column, str) else column
        # batch mode gathers the column: Polars then hands it over whole (streaming
        # too), so one collect is one set of batches
        return column.map_batches(
            self._series,
            return_dtype=self._return_dtype,
            is_elementwise=self._batch is None and self._elementwise(),
        )

    def _elementwise(self) -> bool:
        """Whether Polars may treat the expression as row by row.

        A filter written after it is then applied before it (fewer rows sent), and it
        streams. A predicate is not: Polars would merge it with the filters before
        it, and send every row.
        """
        return True

    @property
    def _return_dtype(self) -> pl.DataType:
        schema = self.output_schema
        if self.options.output == "struct":
            return result_dtype(None if schema is None else schema.dtype)
        return pl.String() if schema is None else schema.dtype

    def run(self, rows: Rows) -> list[Any]:
        """Answer a list of message lists or prompts as one run (see :func:`complete_many`).

        ``rows`` may be a ``pl.Series`` of them (read with ``to_list``).
        """
        if isinstance(rows, pl.Series):
            check_dtype(rows.dtype)  # as chat.complete does: a TypeError naming it
            listed = rows.to_list()
        else:
            listed = list(rows)
        requests = self.requests(listed)
        with self.engine.runs.scope() as run:
            try:
                results = self._answer_all(requests)
                _apply_policy(
                    self.options.on_error, list(_failures(results)), len(results)
                )
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
        out: list[ChatResult | None] = []
        for _, results in self.answer_batches([(None, requests)]):
            out.extend(results)
        return out

    def answer_batches(
        self,
        batches: Iterable[tuple[K, Sequence[ChatRequest | None]]],
        *,
        read_ahead: int = 3,
    ) -> Iterator[tuple[K, list[ChatResult | None]]]:
        """Answer batches of requests; yield ``(key, results)`` in input order.

        Online, at most ``read_ahead`` batches are being answered at once (the next
        ones are not read until an earlier one is yielded), so memory follows the
        read-ahead, not the input. In batch mode every batch is read first (its rows
        and requests go to a temporary file on disk as they come), all are sent as
        one set of Azure batches, and the results come back per batch, in order:
        memory follows a batch and one Azure file, not the input (the keys are held
        until the end: keep them small). Use it inside :meth:`run_scope` to make the
        batches one run.

        Parameters
        ----------
        batches
            ``(key, requests)`` pairs; the key is handed back with the results
            (for example the rows the requests came from).
        read_ahead
            Batches being answered at once (online).

        Yields
        ------
        tuple
            ``(key, results)``: one :class:`~polars_azurechat._types.ChatResult` per
            request (``None`` for a ``None`` request).

        Examples
        --------
        >>> import polars_azurechat as pac
        >>> job = pac.Completer(max_tokens=20)
        >>> batches = [
        ...     ("a", job.requests(["What is 1 + 1?", "What is 2 + 3?"])),
        ...     ("b", job.requests([None])),
        ... ]
        >>> with job.run_scope():
        ...     out = [
        ...         (k, [r and r.content for r in rs])
        ...         for k, rs in job.answer_batches(batches)
        ...     ]
        >>> out
        [('a', ['2', '5']), ('b', [None])]
        >>> job.close()
        """
        bar = self._bar
        if self._batch is not None:  # one set of Azure batches for them all
            yield from self._batch.answer_batches(batches)
            return

        def counted() -> Iterator[tuple[K, Sequence[ChatRequest | None]]]:
            for key, requests in batches:
                if bar is not None:
                    bar.add_total(len(requests))
                yield key, requests

        yield from self.engine.pipeline(counted(), read_ahead=read_ahead)

    def requests(self, rows: pl.Series | Sequence[Any]) -> list[ChatRequest | None]:
        """The job's requests for ``rows`` (a column, or prompts and message lists).

        ``None`` for a null row; a row that cannot be sent carries its input error.
        String prompts get the job's ``system`` message.
        """
        return to_requests(rows, self.options.system, self._reports)

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

    def log_problems(self, *, failed: bool, truncated: bool) -> None:
        """Whether each run logs a warning for failed rows and for truncated answers.

        The CLI turns both off: its summary says it.
        """
        self._reports.update(failed=failed, truncated=truncated)

    @property
    def params(self) -> dict[str, Any]:
        """The body fields sent with every request."""
        return self.engine.params

    def summary(self, *, last_run: bool = False) -> RunSummary:
        """What this job did: across every run, or in the last one only.

        A run still waiting for more chunks of its query is ended first. A summary
        of one run has its ``timeline`` (its counters over time): in a notebook it
        shows as a table, and ``summary.plot()`` draws it (see ``report()``).
        """
        runs = self.engine.runs
        runs.finish()
        batch = self._batch
        run = runs.last
        if last_run:
            stats = _run_stats(run, self.engine.clock) if run is not None else None
            counts = (
                batch.counts.get(run.id)
                if batch is not None and run is not None
                else None
            )
            return self._summarize(stats, counts, run)
        return self._summarize(
            runs.stats,
            None if batch is None else batch.total(),
            run if runs.count == 1 else None,
        )

    def _summarize(
        self,
        st: RunStats | None,
        counts: BatchCounts | None = None,
        run: Run | None = None,
    ) -> RunSummary:
        if st is None:
            from polars_azurechat.engine.core import RunStats

            st = RunStats()
        if counts is None:
            from polars_azurechat.batch.mode import BatchCounts

            counts = BatchCounts()
        engine = self.engine
        return summarize(
            st,
            counts,
            pool=engine.pool,
            cache=engine.cache,
            deployment=engine.transport.deployment,
            prices=self._prices,
            cap=self.spending_cap,
            mode=self.options.mode,
            timeline=None if run is None else run.timeline,
        )

    def _series(self, s: pl.Series) -> pl.Series:
        """The function handed to ``map_batches``: one chunk in, one chunk out.

        The chunk goes through the engine's pipeline in slices (:func:`slice_rows`),
        :data:`SLICES_IN_FLIGHT` at a time, so memory follows the slices, not the
        chunk, and a slice waiting for its slowest row does not idle the engine.
        """
        check_dtype(s.dtype)
        system, bar = self.options.system, self._bar
        say_system_unsent(self._reports, s, system)
        if self._batch is not None:
            return self._batch_series(s)

        rows = slice_rows(s)

        def slices() -> Iterator[tuple[int, list[Any]]]:
            for offset in range(0, len(s), rows):
                part = s.slice(offset, rows)
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
                parts.append(self._results_series(results, s.name))
            _apply_policy(self.options.on_error, failed, len(s))
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
        run = self.engine.runs.last
        if run is not None and run.error is None:
            run.error = exc
        remember_for_polars(exc)

    # -- batch mode ---------------------------------------------------------------

    def _batch_series(self, s: pl.Series) -> pl.Series:
        """Batch mode's ``map_batches`` function: the whole column, one set of batches."""
        assert self._batch is not None  # noqa: S101 - batch mode only
        requests = self.requests(s)
        try:
            results = self._batch.answer(requests)
            _apply_policy(self.options.on_error, list(_failures(results)), len(s))
        except AzureChatError as exc:
            self._failed(exc)
            raise
        return self._results_series(results, s.name)

    def _results_series(
        self, results: Sequence[ChatResult | None], name: str
    ) -> pl.Series:
        """The column of a chunk's results, of :attr:`_return_dtype` (tasks convert)."""
        return results_to_series(
            results, output=self.options.output, name=name, schema=self.output_schema
        )


Completer.__doc__ = (Completer.__doc__ or "").replace("{options}", options_doc())


def slice_rows(s: pl.Series) -> int:
    """Rows per slice of ``s``: :data:`SLICE_ROWS`, fewer when its rows are large.

    A slice holds about :data:`SLICE_BYTES` of the column's data (Polars' own estimate
    of its buffers), but never fewer than :data:`MIN_SLICE_ROWS` rows.

    Examples
    --------
    >>> slice_rows(pl.Series(["What is 1 + 1?"] * 10))
    8192
    >>> slice_rows(pl.Series(["x" * 67_000] * 1_000))
    500
    """
    return rows_per_slice(s.estimated_size() / max(len(s), 1))


def rows_per_slice(bytes_per_row: float, most: int | None = None) -> int:
    """Rows of ``bytes_per_row`` that make about :data:`SLICE_BYTES`.

    At most ``most`` (:data:`SLICE_ROWS`), at least :data:`MIN_SLICE_ROWS`.

    Examples
    --------
    >>> rows_per_slice(120), rows_per_slice(67_000), rows_per_slice(10**9)
    (8192, 500, 256)
    """
    most = SLICE_ROWS if most is None else most
    fit = int(SLICE_BYTES // max(bytes_per_row, 1.0))
    return max(min(most, fit), min(MIN_SLICE_ROWS, most))


def _apply_policy(
    on_error: str, failed: list[tuple[int, ChatResult]], total: int
) -> None:
    """With ``on_error="raise"``, raise :class:`CompletionFailed` naming ``failed``."""
    if not failed:
        return
    if on_error == "raise":
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
