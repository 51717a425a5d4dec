"""The typed API: :func:`complete` for expressions, :func:`complete_many` for plain lists."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, overload

import openai
import polars as pl

from polars_azurechat._convert import (
    check_dtype,
    results_to_series,
    rows_to_requests,
    series_to_requests,
)
from polars_azurechat._engine import ChatEngine, RunStats
from polars_azurechat._ratelimit import RateLimiter
from polars_azurechat._transport import ChatTransport, SdkTransport, Transport
from polars_azurechat._types import RESULT_DTYPE, ChatResult, OnError, OutputKind
from polars_azurechat.cache import SqliteCache
from polars_azurechat.config import ENV_DEPLOYMENT, ChatConfig
from polars_azurechat.errors import (
    AzureChatError,
    CompletionFailed,
    ConfigurationError,
    FailedRowsWarning,
    RowError,
    remember_for_polars,
)
from polars_azurechat.summary import RunSummary, estimate_cost

__all__ = ["Completer", "complete", "complete_many"]

logger = logging.getLogger(__name__)

#: Rows converted and answered at a time within one Polars chunk (bounds memory).
SLICE_ROWS = 8192
#: Slices of one chunk answered at once (so one slow row does not idle the engine).
SLICES_IN_FLIGHT = 3

#: Body fields the engine owns; passing them as ``**params`` is an error.
_RESERVED_PARAMS = frozenset({"messages", "stream", "n", "model"})


def complete(
    expr: str | pl.Expr,
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
    """Answer every row of a column of chat messages (or prompts) with Azure OpenAI.

    Parameters
    ----------
    expr
        A column name or expression: ``List(Struct{role, content})`` (extra struct fields
        are ignored) or ``String`` prompts.
    deployment
        The Azure deployment; default ``config.deployment`` / ``AZURE_OPENAI_DEPLOYMENT``.
    config
        Endpoint and credential; default :meth:`ChatConfig.from_env` (arguments, then
        environment, then ``.env``), resolved now so a missing setting fails before any
        request.
    system
        For String prompts: a system message sent before each prompt.
    output
        ``"content"`` for a String column of answers, ``"struct"`` for
        ``{content, finish_reason, prompt_tokens, completion_tokens, attempts, error}``.
    max_concurrency
        Requests in flight at once, across every chunk of this expression.
    requests_per_minute, tokens_per_minute
        The deployment's quota; requests are admitted under it (over 10-s windows, as
        Azure enforces it).
    max_attempts
        Attempts per row, the first included; 408/409/429/5xx, timeouts and dropped
        connections are retried, other errors are not.
    timeout_s
        Time bound for one attempt.
    deadline_s
        Time bound for the whole job, from its first chunk; rows not answered by then
        fail with :class:`DeadlineExceededError` (or their last error).
    on_error
        ``"null"``: a failed row gives null (``error`` says why with ``output="struct"``)
        and one :class:`FailedRowsWarning` counts them. ``"raise"``: every row runs, then
        :class:`CompletionFailed` lists the failed rows.
    cache
        Path to a SQLite file of answered requests; a rerun sends only what is missing.
    progress
        Show a progress bar (tqdm) shared by every chunk.
    client
        Your own ``openai.AzureOpenAI`` client, used instead of the built-in HTTP
        transport (for Entra ID token providers, proxies, a custom ``http_client``).
        It is used with ``max_retries=0`` (the engine retries) and costs ~2.5 ms CPU
        per request against ~0.15 ms for the built-in transport. Excludes ``config``.
    **params
        Chat-completions body fields: ``max_tokens``, ``temperature``, ``top_p``,
        ``seed``, ``stop``, ``response_format``, ...

    Returns
    -------
    pl.Expr
        String (``output="content"``) or Struct (``output="struct"``), one value per row.

    Raises
    ------
    ConfigurationError
        A setting is missing (the message names the environment variable).
    ValueError
        An argument is invalid (checked now, before any request).
    TypeError
        At run time, when the column's dtype is neither String nor a list of messages.
    AuthenticationError, NotFoundError
        At run time, at the first 401/403/404: the run stops at once.
    CompletionFailed
        At run time, with ``on_error="raise"``, after all rows ran.

    Notes
    -----
    - Row ``i``'s answer is always row ``i``'s; null rows stay null and send nothing.
    - Polars may hand the column over in chunks, from several threads at once; one engine
      per expression keeps ``max_concurrency`` and the quota across all of them. With
      ``on_error="raise"`` the row indices are positions within the chunk that failed.
    - Under ``group_by``/``over`` the function sees the whole column, not each group.
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
    """
    return Completer(
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
    ).expr(expr)


@overload
def complete_many(
    rows: Iterable[str | Sequence[Mapping[str, Any]] | None],
    *,
    output: Literal["content"] = ...,
    **kwargs: Any,
) -> list[str | None]: ...
@overload
def complete_many(
    rows: Iterable[str | Sequence[Mapping[str, Any]] | None],
    *,
    output: Literal["struct"],
    **kwargs: Any,
) -> list[dict[str, Any] | None]: ...
def complete_many(
    rows: Iterable[str | Sequence[Mapping[str, Any]] | None],
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
) -> list[str | None] | list[dict[str, Any] | None]:
    """Answer a plain list of message lists (or prompts), in input order, without Polars.

    The same engine as :func:`complete`, for code that holds Python lists, as the original
    parallel-requests handler's users do. Arguments are those of :func:`complete`.

    Returns
    -------
    list
        One answer per row: a string (``output="content"``) or a dict
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
    return Completer(
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
    ).run(rows)


class Completer:
    """A configured chat-completion job whose engine every use shares.

    :func:`complete` and :func:`complete_many` build one and use it once; build it
    yourself to read the :meth:`summary` afterwards, or to use one engine (one
    concurrency bound, one quota) for several columns and lists. Arguments are those of
    :func:`complete`, plus ``prices``.

    Parameters
    ----------
    prices
        ``{model name prefix: (input, output)}`` in USD per million tokens, merged over
        :data:`polars_azurechat.summary.PRICES` for the cost estimate.

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
    """

    def __init__(
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
        prices: Mapping[str, tuple[float, float]] | None = None,
        **params: Any,
    ) -> None:
        if output not in ("content", "struct"):
            msg = f"output must be 'content' or 'struct', got {output!r}"
            raise ValueError(msg)
        if on_error not in ("null", "raise"):
            msg = f"on_error must be 'null' or 'raise', got {on_error!r}"
            raise ValueError(msg)
        _check_positive("timeout_s", timeout_s)
        if deadline_s is not None:
            _check_positive("deadline_s", deadline_s)
        for name, quota in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if quota is not None:
                _check_positive(name, quota)
        if system is not None and not isinstance(system, str):
            msg = f"system must be a string, got {type(system).__name__}"
            raise TypeError(msg)
        _check_params(params)
        if params.get("max_tokens") is None and tokens_per_minute is not None:
            logger.warning(
                "tokens_per_minute is set but max_tokens is not: Azure then reserves the "
                "model's whole context per request; set max_tokens"
            )
        self.output: OutputKind = output
        self.on_error: OnError = on_error
        self.system = system
        transport: ChatTransport
        if client is not None:
            if config is not None:
                msg = "give config= or client=, not both"
                raise ValueError(msg)
            sdk_deployment = deployment or os.environ.get(ENV_DEPLOYMENT)
            if not sdk_deployment:
                msg = f"no deployment: pass deployment= or set {ENV_DEPLOYMENT}"
                raise ConfigurationError(msg)
            transport = SdkTransport(
                client, deployment=sdk_deployment, timeout_s=timeout_s
            )
        else:
            config = config if config is not None else ChatConfig.from_env()
            transport = Transport(
                endpoint=config.azure_endpoint,
                deployment=config.resolve_deployment(deployment),
                api_version=config.api_version,
                auth_headers=config.auth_headers(),
                timeout_s=timeout_s,
            )
        self._prices = dict(prices or {})
        self._bar: _ProgressBar | None = None
        self.engine = ChatEngine(
            transport,
            params=params,
            max_concurrency=max_concurrency,
            max_attempts=max_attempts,
            deadline_s=deadline_s,
            limiter=RateLimiter(
                requests_per_minute=requests_per_minute,
                tokens_per_minute=tokens_per_minute,
            ),
            progress=self._on_progress if progress else None,
            cache=SqliteCache(cache) if cache is not None else None,
        )
        if progress:
            self._bar = _ProgressBar(self.engine.stats)

    def _on_progress(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def __repr__(self) -> str:
        t = self.engine.transport
        return (
            f"Completer(deployment={t.deployment!r}, host={t.endpoint_host!r}, "
            f"output={self.output!r}, on_error={self.on_error!r})"
        )

    def expr(self, column: str | pl.Expr) -> pl.Expr:
        """The expression answering every row of ``column`` (see :func:`complete`)."""
        column = pl.col(column) if isinstance(column, str) else column
        return_dtype = RESULT_DTYPE if self.output == "struct" else pl.String
        return column.map_batches(
            self._series, return_dtype=return_dtype, is_elementwise=True
        )

    def run(
        self, rows: Iterable[str | Sequence[Mapping[str, Any]] | None]
    ) -> list[Any]:
        """Answer a list of message lists or prompts (see :func:`complete_many`)."""
        results = self._run_requests(rows_to_requests(list(rows), system=self.system))
        if self.output == "struct":
            return [None if r is None else r.as_row() for r in results]
        return [None if r is None else r.content for r in results]

    def summary(self) -> RunSummary:
        """What this job did so far, across every chunk and call."""
        st = self.engine.stats
        minutes = st.wall_s / 60 if st.wall_s > 0 else None
        window_per_minute = 60 / self.engine.limiter.window_s
        budgets = self.engine.limiter.learned()
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
            requests_per_minute_quota=(
                budgets["requests"] * window_per_minute if budgets["requests"] else None
            ),
            tokens_per_minute_quota=(
                budgets["tokens"] * window_per_minute if budgets["tokens"] else None
            ),
            model=st.model or self.engine.transport.deployment,
            estimated_cost_usd=estimate_cost(
                st.model or self.engine.transport.deployment,
                st.prompt_tokens,
                st.completion_tokens,
                self._prices,
            ),
        )

    def _series(self, s: pl.Series) -> pl.Series:
        """The function handed to ``map_batches``: one chunk in, one chunk out.

        A large chunk is answered in slices of :data:`SLICE_ROWS`, so memory follows the
        slices, not the chunk (Polars hands over up to a whole row group at once).
        :data:`SLICES_IN_FLIGHT` slices are answered at once, so a slice waiting for its
        slowest request does not leave the engine idle.
        """
        check_dtype(s.dtype)
        failed: list[tuple[int, ChatResult]] = []
        parts = []

        def answer(part: pl.Series) -> list[ChatResult | None]:
            return self._answer(series_to_requests(part, system=self.system))

        def collect(offset: int, results: list[ChatResult | None]) -> None:
            failed.extend((offset + i, r) for i, r in _failures(results))
            parts.append(results_to_series(results, output=self.output, name=s.name))

        try:
            if len(s) <= SLICE_ROWS:
                collect(0, answer(s))
            else:
                with concurrent.futures.ThreadPoolExecutor(SLICES_IN_FLIGHT) as pool:
                    running: collections.deque[
                        tuple[int, concurrent.futures.Future[list[ChatResult | None]]]
                    ] = collections.deque()
                    for offset in range(0, len(s), SLICE_ROWS):
                        part = s.slice(offset, SLICE_ROWS)
                        running.append((offset, pool.submit(answer, part)))
                        if len(running) >= SLICES_IN_FLIGHT:
                            collect(*_result_of(running.popleft()))
                    while running:
                        collect(*_result_of(running.popleft()))
            self._apply_policy(failed, len(s))
        except AzureChatError as exc:
            remember_for_polars(exc)
            raise
        out = parts[0] if len(parts) == 1 else pl.concat(parts, rechunk=False)
        if len(out) != len(s):  # pragma: no cover - a broadcast would misalign rows
            msg = f"internal error: {len(out)} results for {len(s)} rows"
            raise AssertionError(msg)
        return out

    def _run_requests(self, requests: Sequence[Any]) -> list[ChatResult | None]:
        """Answer one list of requests and apply the ``on_error`` policy."""
        results = self._answer(requests)
        self._apply_policy(list(_failures(results)), len(results))
        return results

    def _answer(self, requests: Sequence[Any]) -> list[ChatResult | None]:
        if self._bar is not None:
            self._bar.add_total(len(requests))
        results = self.engine.run(requests)
        if self.engine.fatal is not None:
            raise self.engine.fatal
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "%d rows done; engine so far: %s",
                len(results),
                self.engine.stats.as_dict(),
            )
        return results

    def _apply_policy(self, failed: list[tuple[int, ChatResult]], total: int) -> None:
        if not failed:
            return
        if self.on_error == "raise":
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
        warnings.warn(
            f"{len(failed)} of {total} rows failed and are null; first "
            f"(row {failed[0][0]}): {failed[0][1].error}",
            FailedRowsWarning,
            stacklevel=3,
        )


def _result_of(
    item: tuple[int, concurrent.futures.Future[list[ChatResult | None]]],
) -> tuple[int, list[ChatResult | None]]:
    return item[0], item[1].result()


def _failures(
    results: Sequence[ChatResult | None],
) -> Iterator[tuple[int, ChatResult]]:
    for i, r in enumerate(results):
        if r is not None and r.exception is not None:
            yield i, r


class _ProgressBar:
    """One tqdm bar for all chunks of an expression.

    Its total is the known row count (the CLI reads it from the Parquet footer) or
    grows as chunks arrive. The postfix shows tokens/s, retries and 429s so far.
    """

    def __init__(self, stats: RunStats, total: int | None = None) -> None:
        self._lock = threading.Lock()
        self._bar: Any = None
        self._stats = stats
        self.known_total = total
        self._shown_at = 0.0

    def add_total(self, n: int) -> None:
        from tqdm.auto import tqdm

        with self._lock:
            if self._bar is None or self._bar.n >= (self._bar.total or 0):
                if self._bar is not None:
                    self._bar.close()
                self._bar = tqdm(
                    total=self.known_total or 0,
                    unit="row",
                    desc="chat.complete",
                    disable=None,
                    dynamic_ncols=True,
                )
            if self.known_total is None or self._bar.total < self._bar.n + n:
                self._bar.total = max(self._bar.total, self._bar.n) + n
            self._bar.refresh()

    def update(self, n: int) -> None:
        with self._lock:
            bar = self._bar
            if bar is None or n <= 0:
                return
            bar.update(n)
            now = time.monotonic()
            if now - self._shown_at >= 0.5 or bar.n >= (bar.total or 0):
                self._shown_at = now
                st = self._stats
                elapsed = bar.format_dict.get("elapsed") or 0.0
                tokens = st.prompt_tokens + st.completion_tokens
                rate = tokens / elapsed if elapsed > 0 else 0.0
                bar.set_postfix_str(
                    f"tok/s={rate:,.0f} retries={st.retries} 429s={st.rate_limited} "
                    f"failed={st.failed}",
                    refresh=False,
                )


def _check_positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        msg = f"{name} must be a positive number, got {value!r}"
        raise ValueError(msg)


def _check_params(params: Mapping[str, Any]) -> None:
    bad = sorted(_RESERVED_PARAMS & params.keys())
    if bad:
        msg = f"{', '.join(bad)} cannot be passed as a parameter: the engine sets it"
        raise ValueError(msg)
    for key, value in params.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            msg = f"parameter {key}={value!r} is not JSON-serialisable (or is NaN/inf)"
            raise ValueError(msg) from exc
    max_tokens = params.get("max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or max_tokens < 1
    ):
        msg = f"max_tokens must be a positive integer, got {max_tokens!r}"
        raise ValueError(msg)
