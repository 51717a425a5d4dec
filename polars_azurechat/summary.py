"""What a run did, in one object: rows, requests, retries, tokens, rates and cost."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["PRICES", "RunSummary", "estimate_cost", "price_for"]

#: List prices in USD per million tokens, (input, output), for common Azure OpenAI models
#: (global standard deployments, as published in 2025). Prices change and differ by
#: region and deployment type: pass your own with ``prices=`` where it matters.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
    "o4-mini": (1.10, 4.40),
    "o3-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-35-turbo": (0.50, 1.50),
    "gpt-3.5-turbo": (0.50, 1.50),
}


def price_for(
    model: str | None, prices: Mapping[str, tuple[float, float]] | None = None
) -> tuple[float, float] | None:
    """The (input, output) USD-per-million price of ``model``, by longest name prefix.

    Examples
    --------
    >>> price_for("gpt-4o-mini-2024-07-18")
    (0.15, 0.6)
    >>> price_for("my-model", {"my-model": (1.0, 2.0)})
    (1.0, 2.0)
    >>> price_for("unknown") is None
    True
    """
    if not model:
        return None
    table = {**PRICES, **(prices or {})}
    name = model.lower()
    matches = [k for k in table if name.startswith(k.lower())]
    return table[max(matches, key=len)] if matches else None


def estimate_cost(
    model: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    prices: Mapping[str, tuple[float, float]] | None = None,
) -> float | None:
    """Estimated USD cost of the tokens, or ``None`` when the model has no price."""
    price = price_for(model, prices)
    if price is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What one ``complete()`` / :class:`Completer` did, across all its chunks.

    ``answered`` includes the rows served from the cache (``cached``) and the rows that
    asked what another row asked (``deduplicated``): neither sent a request; and the
    ``truncated`` ones, cut at ``max_tokens`` and kept. ``cache_broken`` says why the
    cache stopped working during the run, if it did.
    ``failed_attempts`` counts failed attempts by error class; ``retries`` those that
    were retried. Rates are per minute of busy time; ``*_quota`` are the budgets in force
    at the end (given, or learned from Azure's headers), per minute, and ``*_window_s``
    the windows they are enforced over (learned); for a pool of deployments, the sums
    over its deployments. ``deployments`` has, for a pool, one entry per deployment:
    its ``tier``, ``requests``, ``rate_limited``, ``failed_attempts``, ``prompt_tokens``,
    ``completion_tokens``, ``requests_per_minute_quota``, ``tokens_per_minute_quota``
    and ``circuit`` (``"closed"``, ``"open"`` or ``"half-open"``).
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

    def as_dict(self) -> dict[str, Any]:
        """The summary as a plain dict."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        def quota(value: float | None, window: float | None) -> str:
            if not value:
                return ""
            over = f" over {window:g}-s windows" if window else ""
            return f" (quota {value:,.0f}{over})"

        cost = (
            f"${self.estimated_cost_usd:,.4f} ({self.model})"
            if self.estimated_cost_usd is not None
            else f"unknown (no price for model {self.model!r})"
        )
        truncated = f" ({self.truncated:,} cut at max_tokens)" if self.truncated else ""
        lines = [
            f"rows:      {self.rows + self.null_rows:,} ({self.answered:,} answered"
            f"{truncated}, {self.failed:,} failed, {self.null_rows:,} null; "
            f"{self.cached:,} from cache, {self.deduplicated:,} deduplicated)",
            f"requests:  {self.requests:,} ({self.retries:,} retried, "
            f"{self.rate_limited:,} rate-limited)",
            f"tokens:    {self.prompt_tokens:,} prompt, {self.completion_tokens:,} "
            "completion",
            f"rate:      {self.requests_per_minute:,.0f} requests/min"
            f"{quota(self.requests_per_minute_quota, self.request_window_s)}, "
            f"{self.tokens_per_minute:,.0f} tokens/min"
            f"{quota(self.tokens_per_minute_quota, self.token_window_s)}",
            f"wall:      {self.wall_s:.2f} s",
            f"cost:      {cost}",
        ]
        for name, d in self.deployments.items():
            rpm = d.get("requests_per_minute_quota")
            shown = f"; quota {rpm:,.0f} requests/min" if rpm else ""
            circuit = d.get("circuit", "closed")
            lines.append(
                f"  {name} (tier {d.get('tier', 0)}): {d.get('requests', 0):,} requests, "
                f"{d.get('rate_limited', 0):,} rate-limited, "
                f"{d.get('failed_attempts', 0):,} failed, "
                f"{d.get('prompt_tokens', 0) + d.get('completion_tokens', 0):,} tokens"
                f"{shown}{'' if circuit == 'closed' else f'; circuit {circuit}'}"
            )
        if self.cache_broken:
            lines.append(f"cache:     {self.cache_broken}; the run went on without it")
        if self.failed_attempts:
            kinds = ", ".join(
                f"{k} {v}" for k, v in sorted(self.failed_attempts.items())
            )
            lines.append(f"failed attempts: {kinds}")
        return "\n".join(lines)
