"""A dry run: what a job would send, cost and take, without sending anything."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Unpack

import polars as pl

from polars_azurechat.engine.convert import rows_to_requests, series_to_requests
from polars_azurechat.options import (
    ChatOptions,
    ChatOptionsDict,
    typed_body,
    with_options,
)
from polars_azurechat.summary import Prices, batch_price, model_for, price_for

if TYPE_CHECKING:
    from polars_azurechat.engine.texts import TextsRequest

__all__ = ["Plan", "plan"]

#: The window the estimate assumes a quota is enforced over (Azure's documentation:
#: "typically 1 or 10 seconds"; a job learns the real one as it runs).
WINDOW_S = 10.0


@dataclasses.dataclass(frozen=True)
class Plan:
    """The estimate :func:`plan` returns.

    Attributes
    ----------
    rows
        One row per input row: ``prompt_tokens``, ``request_tokens`` (what Azure counts
        against the quota: prompt plus ``max_tokens``), ``over_context``, and ``error``
        for rows that cannot be sent; null for null rows.
    requests
        Requests the job would send (identical rows are sent once).
    prompt_tokens, request_tokens
        The prompt tokens of those requests, and what Azure counts against the quota
        for them (prompt plus ``max_tokens``): identical rows count once, as they
        are sent once; ``rows`` gives each row's figures.
    estimated_cost_usd, estimated_batch_cost_usd
        The cost online and in batch mode (the batch price:
        :data:`~polars_azurechat.summary.BATCH_DISCOUNT` of the online one), with
        every answer at ``max_tokens`` (an upper bound), or ``None`` without a price.
    """

    rows: pl.DataFrame
    requests: int
    prompt_tokens: int
    request_tokens: int
    max_completion_tokens: int | None
    over_context: int
    unsendable: int
    model: str
    estimated_cost_usd: float | None
    estimated_wall_s: float
    bound_by: str
    estimated_batch_cost_usd: float | None = None
    #: The prompt tokens the model bills, where it bills images otherwise than the
    #: quota counts them (gpt-4o-mini: 2,833 + 5,667 a tile; see
    #: :func:`~polars_azurechat.transport.tokens.image_billing`); the cost is priced
    #: on them. ``None``: as ``prompt_tokens``.
    billed_prompt_tokens: int | None = None
    #: ``"chat"``, or ``"embeddings"`` (:meth:`~polars_azurechat.Embedder.plan`:
    #: ``requests`` are packs of texts, the cost is input tokens only)
    kind: str = "chat"

    def __str__(self) -> str:
        if self.kind == "embeddings":
            cost = (
                f"${self.estimated_cost_usd:,.4f} ({self.model}, input tokens only)"
                if self.estimated_cost_usd is not None
                else f"unknown (no price for {self.model!r}; pass prices=)"
            )
        else:
            cost = self._chat_cost()
        return "\n".join(
            [
                f"rows:      {self.rows.height:,} ({self.requests:,} requests; "
                f"{self.unsendable:,} cannot be sent, {self.over_context:,} over the "
                "context)",
                f"tokens:    {self.prompt_tokens:,} prompt, "
                + self._billed()
                + f"{self.request_tokens:,} counted against the quota",
                f"cost:      {cost}",
                f"wall:      ~{self.estimated_wall_s:,.1f} s (bound by {self.bound_by})",
            ]
        )

    def _billed(self) -> str:
        billed = self.billed_prompt_tokens
        if billed is None or billed == self.prompt_tokens:
            return ""
        return f"{billed:,} billed ({self.model}'s price of an image), "

    def _chat_cost(self) -> str:
        return (
            f"${self.estimated_cost_usd:,.4f} online, "
            f"${self.estimated_batch_cost_usd or 0.0:,.4f} batch ({self.model}"
            + (
                ", completion at max_tokens: an upper bound)"
                if self.max_completion_tokens
                else ", prompt only: set max_tokens to bound the completion)"
            )
            if self.estimated_cost_usd is not None
            else f"unknown (no price for {self.model!r}; pass prices=)"
        )


#: :func:`plan`'s own keywords (besides a job's options and body fields).
PLAN_KEYWORDS = ("model", "latency_s", "context_tokens", "prices", "options")


def _check_plan_arguments(data: Any, params: Mapping[str, Any]) -> None:
    """Refuse an expression for the rows, and a misspelling of plan's own keywords."""
    if isinstance(data, pl.Expr):
        msg = (
            "plan() takes the rows (a pl.Series or a list), not a pl.Expr: select "
            "them first (df.select(expr).to_series())"
        )
        raise TypeError(msg)
    import difflib  # here, not at import: only a plan's keywords need it

    from polars_azurechat._body_fields import known_keywords

    known = set(known_keywords())
    for key in params:
        close = difflib.get_close_matches(key, PLAN_KEYWORDS, n=1, cutoff=0.75)
        if key not in known and close:
            msg = f"plan() takes no argument {key!r} (did you mean {close[0]!r}?)"
            raise TypeError(msg)


@with_options(
    before=("data", "model", "latency_s", "context_tokens", "prices", "options")
)
def plan(
    data: pl.Series | Sequence[Any],
    *,
    model: str | None = None,
    latency_s: float = 1.0,
    context_tokens: int = 128_000,
    prices: Prices | None = None,
    options: ChatOptions | None = None,
    **params: Unpack[ChatOptionsDict],
) -> Plan:
    """Estimate a job without sending anything: tokens, cost and wall time.

    It takes the arguments of the job it estimates (:func:`complete`'s options and
    body fields): ``max_concurrency``, ``requests_per_minute``, ``tokens_per_minute``
    and ``max_tokens`` bound the wall time, ``system`` is part of String prompts.

    Parameters
    ----------
    data
        A column (``pl.Series``) of message lists or prompts, or a Python list of them.
    model
        The model the deployment runs, for the price of its tokens and images
        (default: the ``deployment`` option's name, as a spending cap prices it,
        else ``"gpt-4o-mini"``; a name ``prices`` maps to a model is that model).
    latency_s
        The expected time of one request.
    context_tokens
        The model's context window; longer requests are flagged.
    prices
        Overrides for :data:`polars_azurechat.summary.PRICES`: a price by model name
        prefix, or the model a deployment runs (``{"prod-mini": "gpt-4o-mini"}``).
    options
        A :class:`ChatOptions` to start from; keywords change it.
    {options}
    **params
        Body fields, as for :func:`complete`; ``max_tokens`` is what Azure reserves
        for each answer. A typed answer's ``response_format`` adds its schema's
        tokens (:meth:`OutputSchema.schema_tokens`) to each request's prompt, as
        Azure counts them.

    Examples
    --------
    >>> import polars as pl
    >>> from polars_azurechat.plan import plan
    >>> p = plan(
    ...     pl.Series(["What is 1 + 1?", "What is 1 + 1?", None]),
    ...     max_tokens=10,
    ...     requests_per_minute=60,
    ... )
    >>> p.requests, p.rows["prompt_tokens"].to_list()
    (1, [15, 15, None])
    >>> typed = plan(
    ...     pl.Series(["What is 1 + 1?"]),
    ...     max_tokens=10,
    ...     response_format=pl.Struct({"n": pl.Int64}),
    ... )
    >>> typed.rows["prompt_tokens"].to_list()  # 15 + the schema's 45
    [60]
    >>> print(p)  # doctest: +NORMALIZE_WHITESPACE
    rows:      3 (1 requests; 0 cannot be sent, 0 over the context)
    tokens:    15 prompt, 25 counted against the quota
    cost:      $0.0000 online, $0.0000 batch (gpt-4o-mini, completion at max_tokens: an upper bound)
    wall:      ~1.0 s (bound by concurrency)

    Online and batch cost side by side (the batch price is half the online one):

    >>> texts = [f"Summarise text {i}. " + "It goes on. " * 50 for i in range(1000)]
    >>> big = plan(pl.Series(texts), max_tokens=200)
    >>> round(big.estimated_cost_usd, 4), round(big.estimated_batch_cost_usd, 4)
    (0.1522, 0.0761)
    """
    _check_plan_arguments(data, params)
    opts, body = ChatOptions.split(params, base=options)
    # a deployment named otherwise than its model: prices={"prod-mini": "gpt-4o-mini"}
    model = model_for(model or opts.deployment or "gpt-4o-mini", prices)
    system = opts.system
    from polars_azurechat.engine.frontdoor import (
        RequestShape,  # (its cache import is lazy)
    )
    from polars_azurechat.transport import tokens as _tokens

    # the job's request shape: max_tokens, and a typed answer's schema, which is part
    # of each request's prompt (Azure counts it)
    shape = RequestShape(*reversed(typed_body(body)))
    max_tokens = shape.max_tokens
    if isinstance(data, pl.Series):
        requests = series_to_requests(data, system=system)
    else:
        requests = rows_to_requests(list(data), system=system)
    prompt: list[int | None] = []
    counted: list[int | None] = []
    errors: list[str | None] = []
    unique: dict[str, int] = {}  # key -> prompt tokens of each request sent
    billed: dict[str, int] = {}  # key -> what the model bills for its images beyond
    reserved = shape.reserved
    for req in requests:
        error = None if req is None else shape.problem(req)
        if req is None or error is not None:
            prompt.append(None)
            counted.append(None)
            errors.append(None if error is None else str(error))
            continue
        p = shape.prompt_tokens(req)
        prompt.append(p)
        counted.append(p + reserved)
        errors.append(None)
        key = shape.key(req)
        if key not in unique:
            unique[key] = p
            billed[key] = _tokens.billed_image_extra(req.messages, model)
    rows = pl.DataFrame(
        {"prompt_tokens": prompt, "request_tokens": counted, "error": errors},
        schema={
            "prompt_tokens": pl.Int64,
            "request_tokens": pl.Int64,
            "error": pl.String,
        },
    ).with_columns(over_context=pl.col("request_tokens") > context_tokens)
    # what is sent is what is counted and paid: identical rows go once
    n = len(unique)
    prompt_total = sum(unique.values())
    request_total = prompt_total + reserved * n
    wall_s, bound_by = wall_time(opts, n, request_total, latency_s)
    price = price_for(model, prices)
    cost = batch_cost = None
    billed_total = prompt_total + sum(billed.values())
    if price is not None:
        completion = (max_tokens or 0) * n
        cost = (billed_total * price[0] + completion * price[1]) / 1_000_000
        cheap = batch_price(price)
        batch_cost = (billed_total * cheap[0] + completion * cheap[1]) / 1_000_000
    return Plan(
        rows=rows,
        requests=n,
        prompt_tokens=prompt_total,
        request_tokens=request_total,
        max_completion_tokens=max_tokens,
        over_context=int(rows["over_context"].sum() or 0),
        unsendable=sum(1 for e in errors if e is not None),
        model=model,
        estimated_cost_usd=cost,
        estimated_wall_s=wall_s,
        bound_by=bound_by,
        estimated_batch_cost_usd=batch_cost,
        billed_prompt_tokens=billed_total,
    )


def wall_time(
    opts: ChatOptions, n: int, quota_tokens: int, latency_s: float
) -> tuple[float, str]:
    """The wall time of ``n`` requests of ``quota_tokens`` in all, and what bounds it.

    The slowest of: the concurrency (``n / max_concurrency`` rounds of ``latency_s``),
    the requests per minute and the tokens per minute (a pool: the sum of its
    deployments' quotas, if each is given), enforced over :data:`WINDOW_S` windows.
    """
    rpm, tpm = opts.requests_per_minute, opts.tokens_per_minute
    if opts.deployments:  # a pool: the sum of its quotas, if each is given
        rpms = [d.requests_per_minute for d in opts.deployments]
        tpms = [d.tokens_per_minute for d in opts.deployments]
        rpm = None if None in rpms else sum(rpms)  # type: ignore[arg-type]
        tpm = None if None in tpms else sum(tpms)  # type: ignore[arg-type]
    bounds = {
        "concurrency": math.ceil(n / opts.max_concurrency) * latency_s if n else 0.0
    }
    windows_per_minute = 60 / WINDOW_S
    if rpm and n:
        per_window = max(1, int(rpm / windows_per_minute))
        bounds["requests_per_minute"] = WINDOW_S * ((n - 1) // per_window) + latency_s
    if tpm and n:
        per_window_t = max(1.0, tpm / windows_per_minute)
        windows = math.ceil(quota_tokens / per_window_t)
        bounds["tokens_per_minute"] = WINDOW_S * (windows - 1) + latency_s
    bound_by = max(bounds, key=lambda k: bounds[k])
    return bounds[bound_by], bound_by


def plan_embeddings(
    requests: Sequence[TextsRequest | None],
    *,
    opts: ChatOptions,
    inputs_per_request: int,
    request_tokens: int,
    model: str,
    latency_s: float = 1.0,
    prices: Prices | None = None,
) -> Plan:
    """The :class:`Plan` of an embeddings job's ``requests`` (one per row); internal.

    Identical texts count once; the others are packed as the job packs them
    (``inputs_per_request`` texts, ``request_tokens`` tokens a request at most). The
    cost is the tokens at the model's input price. Users call
    :meth:`polars_azurechat.Embedder.plan`.
    """
    from polars_azurechat.engine.embed import pack
    from polars_azurechat.engine.texts import MAX_INPUT_TOKENS

    tokens: list[int | None] = []
    errors: list[str | None] = []
    unique: dict[str, TextsRequest] = {}
    for req in requests:
        if req is None or req.error is not None:
            tokens.append(None)
            errors.append(None if req is None else str(req.error))
            continue
        tokens.append(req.tokens)
        errors.append(None)
        unique.setdefault(req.texts[0], req)
    rows = pl.DataFrame(
        {"prompt_tokens": tokens, "request_tokens": tokens, "error": errors},
        schema={
            "prompt_tokens": pl.Int64,
            "request_tokens": pl.Int64,
            "error": pl.String,
        },
    ).with_columns(over_context=pl.col("request_tokens") > MAX_INPUT_TOKENS)
    packs = pack(list(unique.items()), inputs_per_request, request_tokens)
    quota_tokens = sum(r.tokens for r in unique.values())
    wall_s, bound_by = wall_time(opts, len(packs), quota_tokens, latency_s)
    total = int(rows["prompt_tokens"].sum() or 0)
    price = price_for(model, prices)
    return Plan(
        rows=rows,
        requests=len(packs),
        prompt_tokens=total,
        request_tokens=quota_tokens,
        max_completion_tokens=None,
        over_context=0,
        unsendable=sum(1 for e in errors if e is not None),
        model=model,
        estimated_cost_usd=None if price is None else quota_tokens * price[0] / 1e6,
        estimated_wall_s=wall_s,
        bound_by=bound_by,
        kind="embeddings",
    )
