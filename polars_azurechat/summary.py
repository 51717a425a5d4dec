"""What a run did, in one object: rows, requests, retries, tokens, rates and cost."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from polars_azurechat.pricing import (
    BATCH_DISCOUNT,
    PRICES,
    TIER_FACTORS,
    Prices,
    SpendingCap,
    batch_price,
    cost_of,
    estimate_cost,
    model_for,
    price_for,
)

if TYPE_CHECKING:
    from polars_azurechat.batch.mode import BatchCounts
    from polars_azurechat.engine.core import RunStats
    from polars_azurechat.engine.frontdoor import AnswerCache
    from polars_azurechat.engine.timeline import Timeline
    from polars_azurechat.transport.pool import Pool

__all__ = [
    "BATCH_DISCOUNT",
    "PRICES",
    "TIER_FACTORS",
    "Prices",
    "RunSummary",
    "SpendingCap",
    "batch_price",
    "cost_of",
    "estimate_cost",
    "model_for",
    "price_for",
    "summarize",
]


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What one ``complete()`` / :class:`Completer` did, across all its chunks.

    ``answered`` includes the rows served from the cache (``cached``) and the rows that
    asked what another row asked (``deduplicated``): neither sent a request; and the
    ``truncated`` ones, cut at ``max_tokens`` and kept. ``cache_broken`` says why the
    cache stopped working during the run, if it did. ``cache_waiting`` answers are not
    written yet because the cache is busy (``cache_busy``: another connection holds
    the SQLite file's write lock, and for how long): they are written as soon as it
    frees, and the job's ``close()`` waits up to ``cache_close_wait_s`` for it; what
    is still waiting then is given up (``cache_lost``, one warning) and a rerun sends
    those requests again. ``stopped`` says how an interrupted run stopped: what was
    in flight at the first Ctrl-C (or SIGTERM), how many of its answers arrived within
    the grace and were kept, and how many were dropped (the grace ran out, or a
    second signal).
    ``failed_attempts`` counts failed attempts by error class; ``retries`` those that
    were retried. Rates are per minute of busy time; ``*_quota`` are the budgets in force
    at the end (given, or learned from Azure's headers), per minute, and ``*_window_s``
    the windows they are enforced over (learned); for a pool of deployments, the sums
    over its deployments. ``deployments`` has, for a pool, one entry per deployment:
    its ``tier``, ``requests``, ``rate_limited``, ``failed_attempts``, ``prompt_tokens``,
    ``completion_tokens``, ``requests_per_minute_quota``, ``tokens_per_minute_quota``
    and ``circuit`` (``"closed"``, ``"open"`` or ``"half-open"``).

    Batch mode (``mode="batch"``): ``batches`` batches were followed (submitted, or
    attached to after a rerun), holding ``batch_lines`` requests;
    ``batch_answered`` rows were answered through them, their tokens priced at the
    batch price (:data:`BATCH_DISCOUNT` of the online one) in ``estimated_cost_usd``;
    ``requests`` counts online requests only (``batch_fallback="online"``).
    Today's Azure: ``reasoning_tokens`` (of ``completion_tokens``) and
    ``cached_tokens`` (of ``prompt_tokens``, priced at the cached-input price);
    ``emptied`` answered rows a reasoning model left empty (among ``truncated``);
    ``tiers`` answers per processing tier that answered (``service_tier``; each
    priced at its tier), ``capacity_refused`` flex requests refused for capacity and
    ``flex_fallbacks`` of them sent again on the default tier; ``spilled_over``
    answers a provisioned deployment's spillover (standard) deployment gave (their
    ``x-ratelimit-*`` headers are not taken as the deployment's own).
    With a spending cap: ``max_cost_usd``, ``spent_usd`` (the real cost of the
    answers the job paid for, under the cap's rule) and ``capped`` (rows refused
    with :class:`~polars_azurechat.errors.SpendingCapError`).

    ``timeline``: the run's counters over time (sampled while it ran; its
    ``frame()`` is a DataFrame), when the summary covers one run; :meth:`plot`
    draws it. In a notebook the summary shows as a table.
    """

    rows: int
    answered: int
    failed: int
    null_rows: int
    cached: int
    deduplicated: int
    requests: int
    retries: int
    rate_limited: int
    failed_attempts: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    wall_s: float
    requests_per_minute: float
    tokens_per_minute: float
    requests_per_minute_quota: float | None
    tokens_per_minute_quota: float | None
    model: str | None
    estimated_cost_usd: float | None
    truncated: int = 0
    cache_broken: str | None = None
    request_window_s: float | None = None
    token_window_s: float | None = None
    deployments: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    mode: str = "online"
    batches: int = 0
    batch_lines: int = 0
    batch_answered: int = 0
    max_cost_usd: float | None = None
    spent_usd: float | None = None
    capped: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    emptied: int = 0
    tiers: dict[str, int] = dataclasses.field(default_factory=dict)
    flex_fallbacks: int = 0
    capacity_refused: int = 0
    spilled_over: int = 0
    cache_waiting: int = 0
    cache_busy: str | None = None
    cache_close_wait_s: float | None = None
    cache_lost: int = 0
    stopped: str | None = None
    #: embeddings: the texts the requests carried (several per request)
    inputs: int = 0
    timeline: Timeline | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    def as_dict(self) -> dict[str, Any]:
        """The summary as a plain dict (without the timeline)."""
        d = dataclasses.asdict(dataclasses.replace(self, timeline=None))
        del d["timeline"]
        return d

    def plot(self) -> Any:
        """Draw the run: rows and requests over time, 429s, quotas, tokens and cost.

        Returns a matplotlib ``Figure`` (see :func:`polars_azurechat.report.plot`);
        needs matplotlib (``pip install "polars-azurechat[notebook]"``) and a
        summary of one run (``job.summary(last_run=True)``).
        """
        from polars_azurechat.report import plot

        return plot(self)

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_html(self) -> str:
        """The summary as an HTML table: each line of ``str(summary)`` is a row.

        A notebook shows the summary so.
        """
        import html

        rows = []
        for line in str(self).splitlines():
            sub = line.startswith("  ")  # a deployment of a pool
            label, _, value = line.strip().partition(": ")
            pad = "padding-left:2em;" if sub else ""
            rows.append(
                f'<tr><th style="{pad}text-align:left">{html.escape(label)}</th>'
                f'<td style="text-align:left">{html.escape(value.strip())}</td></tr>'
            )
        return (
            '<table class="polars-azurechat-summary">'
            "<caption>polars-azurechat run summary</caption>"
            f"{''.join(rows)}</table>"
        )

    def __str__(self) -> str:
        def quota(value: float | None, window: float | None) -> str:
            if not value:
                return ""
            over = f" over {window:g}-s windows" if window else ""
            return f" (quota {value:,.0f}{over})"

        at_batch = (
            f"; {self.batch_answered:,} rows at the batch price"
            if self.batch_answered
            else ""
        )
        cost = (
            f"${self.estimated_cost_usd:,.4f} ({self.model}{at_batch})"
            if self.estimated_cost_usd is not None
            else f"unknown (no price for model {self.model!r})"
        )
        cut = self.truncated - self.emptied
        parts = [f"{cut:,} cut at max_tokens"] if cut else []
        if self.emptied:
            parts.append(f"{self.emptied:,} left empty by reasoning")
        truncated = f" ({'; '.join(parts)})" if parts else ""
        cached = f" ({self.cached_tokens:,} cached)" if self.cached_tokens else ""
        reasoning = (
            f" ({self.reasoning_tokens:,} reasoning)" if self.reasoning_tokens else ""
        )
        lines = [
            f"rows:      {self.rows + self.null_rows:,} ({self.answered:,} answered"
            f"{truncated}, {self.failed:,} failed, {self.null_rows:,} null; "
            f"{self.cached:,} from cache, {self.deduplicated:,} deduplicated)",
            f"requests:  {self.requests:,} ({self.retries:,} retried, "
            f"{self.rate_limited:,} rate-limited"
            f"{f'; {self.inputs:,} inputs' if self.inputs else ''})",
            f"tokens:    {self.prompt_tokens:,} prompt{cached}, "
            f"{self.completion_tokens:,} completion{reasoning}",
            f"rate:      {self.requests_per_minute:,.0f} requests/min"
            f"{quota(self.requests_per_minute_quota, self.request_window_s)}, "
            f"{self.tokens_per_minute:,.0f} tokens/min"
            f"{quota(self.tokens_per_minute_quota, self.token_window_s)}",
            f"wall:      {self.wall_s:.2f} s",
            f"cost:      {cost}",
        ]
        if self.mode == "batch":
            lines.insert(
                2,
                f"batches:   {self.batches:,} ({self.batch_lines:,} lines; "
                f"{self.batch_answered:,} rows answered through them)",
            )
        if set(self.tiers) - {"default", "auto"} or self.capacity_refused:
            shown = ", ".join(f"{k} {v:,}" for k, v in sorted(self.tiers.items()))
            busy = (
                f"; flex busy {self.capacity_refused:,} times, "
                f"{self.flex_fallbacks:,} sent on default instead"
                if self.capacity_refused
                else ""
            )
            lines.insert(3, f"tiers:     answers by tier: {shown}{busy}")
        if self.max_cost_usd is not None:
            refused = (
                f"; {self.capped:,} rows not sent (SpendingCapError)"
                if self.capped
                else ""
            )
            lines.append(
                f"cap:       {_usd(self.spent_usd or 0.0)} spent of "
                f"max_cost_usd={_usd(self.max_cost_usd)}{refused}"
            )
        for name, d in self.deployments.items():
            rpm = d.get("requests_per_minute_quota")
            shown = f"; quota {rpm:,.0f} requests/min" if rpm else ""
            circuit = d.get("circuit", "closed")
            spilled = d.get("spilled_over", 0)
            lines.append(
                f"  {name} (tier {d.get('tier', 0)}): {d.get('requests', 0):,} requests, "
                f"{d.get('rate_limited', 0):,} rate-limited, "
                f"{d.get('failed_attempts', 0):,} failed, "
                f"{d.get('prompt_tokens', 0) + d.get('completion_tokens', 0):,} tokens"
                f"{f', {spilled:,} answered by its spillover' if spilled else ''}"
                f"{shown}{'' if circuit == 'closed' else f'; circuit {circuit}'}"
            )
        if self.spilled_over and not self.deployments:
            lines.append(
                f"spillover: {self.spilled_over:,} answers from the spillover deployment"
            )
        if self.cache_broken:
            lines.append(f"cache:     {self.cache_broken}; the run went on without it")
        lines.extend(self._cache_lines())
        if self.stopped:
            lines.append(f"stopped:   {self.stopped}")
        if self.failed_attempts:
            kinds = ", ".join(
                f"{k} {v}" for k, v in sorted(self.failed_attempts.items())
            )
            lines.append(f"failed attempts: {kinds}")
        return "\n".join(lines)

    def _cache_lines(self) -> list[str]:
        """What waits for a busy cache, and what a busy cache lost."""
        lines = []
        if self.cache_waiting and self.cache_busy:
            lines.append(
                f"cache:     {self.cache_waiting:,} answers were waiting for the busy "
                f"cache ({self.cache_busy}): written as soon as it frees; closing the "
                f"job waits up to {self.cache_close_wait_s or 0:g} s for that, then "
                "gives up the rest with a warning (a rerun would send them again)"
            )
        if self.cache_lost:
            lines.append(
                f"cache:     {self.cache_lost:,} answers were not written (the cache "
                "stayed busy when the job closed); a rerun sends them again"
            )
        return lines


def _usd(value: float) -> str:
    """Dollars with 4 decimals, or 6 below a cent (a small cap must not read $0.0000)."""
    return f"${value:,.4f}" if value >= 0.01 else f"${value:.6f}"


def summarize(
    st: RunStats,
    counts: BatchCounts,
    *,
    pool: Pool,
    cache: AnswerCache | None,
    deployment: str,
    prices: Prices,
    cap: SpendingCap | None,
    mode: str,
    timeline: Timeline | None = None,
) -> RunSummary:
    """A job's :class:`RunSummary` from its counters, pool, cache and cap.

    ``Completer.summary()`` calls it; it reads nothing else of the job.

    Parameters
    ----------
    st
        The counters (of one run, or merged over every run).
    counts
        Batch mode's counters (zeros online): their tokens are priced at the batch
        price.
    pool
        The job's deployments: the budgets they learned, per-deployment counters.
    cache
        The job's cache (its ``broken`` reason, if any), or ``None``.
    deployment
        Names the model when no answer did.
    prices, cap, mode
        Price overrides, the spending cap (or ``None``), ``"online"`` or ``"batch"``.
    timeline
        The run's counters over time (a summary of one run), or ``None``.

    Returns
    -------
    RunSummary
        What the job did.

    Examples
    --------
    >>> import polars_azurechat as pac
    >>> from polars_azurechat.batch.mode import BatchCounts
    >>> job = pac.Completer(max_tokens=20)
    >>> job.run(["What is 1 + 1?"])
    ['2']
    >>> engine = job.engine
    >>> s = summarize(
    ...     engine.runs.stats,
    ...     BatchCounts(),
    ...     pool=engine.pool,
    ...     cache=None,
    ...     deployment="gpt-4o-mini",
    ...     prices={},
    ...     cap=None,
    ...     mode="online",
    ... )
    >>> (s.answered, s.requests)
    (1, 1)
    >>> job.close()
    """
    minutes = st.wall_s / 60 if st.wall_s > 0 else None
    budgets = _budgets([r.limiter.learned() for r in pool.routes])
    model = st.model or deployment
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
        estimated_cost_usd=_cost(model, st, counts, prices),
        truncated=st.truncated,
        cache_broken=None if cache is None else cache.broken,
        **_cache_state(cache),
        stopped=st.stopped,
        deployments=deployments,
        mode=mode,
        batches=counts.batches,
        batch_lines=counts.lines,
        batch_answered=counts.answered,
        max_cost_usd=None if cap is None else cap.max_cost_usd,
        spent_usd=None if cap is None else cap.spent_usd,
        capped=0 if cap is None else cap.refused,
        reasoning_tokens=st.reasoning_tokens,
        cached_tokens=st.cached_tokens,
        emptied=st.emptied,
        tiers={k: v["answers"] for k, v in st.by_tier.items()},
        flex_fallbacks=st.flex_fallbacks,
        capacity_refused=st.capacity_refused,
        spilled_over=sum(c.get("spilled_over", 0) for c in st.by_deployment.values()),
        inputs=st.inputs_sent,
        timeline=None if timeline is None else timeline.copy(),
    )


def _cache_state(cache: AnswerCache | None) -> dict[str, Any]:
    """The summary's fields on answers waiting for a busy cache, or lost to it."""
    if cache is None:
        return {}
    busy = cache.busy
    return {
        "cache_waiting": cache.waiting if busy else 0,
        "cache_busy": None
        if busy is None
        else f"{busy}, for {cache.busy_for_s():.1f} s",
        "cache_close_wait_s": cache.close_wait_s,
        "cache_lost": cache.lost,
    }


def _cost(
    model: str | None,
    st: RunStats,
    counts: BatchCounts,
    prices: Prices,
) -> float | None:
    """The run's cost: online tokens at the online price, batch ones at the batch price.

    Cached prompt tokens at the cached-input price (all of them counted online).
    """
    price = price_for(model, prices)
    if price is None:
        return None
    prompt = st.prompt_tokens - counts.prompt_tokens
    completion = st.completion_tokens - counts.completion_tokens
    cached = st.cached_tokens
    usd = 0.0
    for tier, per in st.by_tier.items():  # the tier each answer named, at its price
        usd += cost_of(
            price,
            per["prompt_tokens"],
            per["completion_tokens"],
            cached_tokens=per["cached_tokens"],
            tier=tier,
        )
        prompt -= per["prompt_tokens"]
        completion -= per["completion_tokens"]
        cached -= per["cached_tokens"]
    usd += cost_of(price, prompt, completion, cached_tokens=cached)
    return usd + cost_of(
        price, counts.prompt_tokens, counts.completion_tokens, tier="batch"
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
