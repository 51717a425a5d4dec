"""Prices and the spending cap: what a request costs, and what a job may spend.

Re-exported by :mod:`polars_azurechat.summary`, where a run's cost is summed.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

from polars_azurechat.errors import SpendingCapError
from polars_azurechat.options import DEFAULT_RESERVED_COMPLETION_TOKENS

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "BATCH_DISCOUNT",
    "PRICES",
    "TIER_FACTORS",
    "Prices",
    "SpendingCap",
    "batch_price",
    "cost_of",
    "estimate_cost",
    "model_for",
    "price_for",
]

#: List prices in USD per million tokens, ``(input, output, cached input)``, of Azure
#: OpenAI's Global Standard deployments, as published for these models in late 2025
#: (checked 2025-12; Data Zone and Regional deployments cost more, and newer model
#: versions such as gpt-5.x take the price of their family's prefix here). Prices
#: change: pass your own with ``prices=`` where it matters, as ``(input, output)`` or
#: ``(input, output, cached input)`` (without the third, cached input is priced as
#: input). Reasoning tokens are output tokens (Azure counts them in
#: ``completion_tokens``).
PRICES: dict[str, tuple[float, ...]] = {
    "gpt-5-nano": (0.05, 0.40, 0.005),
    "gpt-5-mini": (0.25, 2.00, 0.025),
    "gpt-5": (1.25, 10.00, 0.125),
    "gpt-4.1-nano": (0.10, 0.40, 0.025),
    "gpt-4.1-mini": (0.40, 1.60, 0.10),
    "gpt-4.1": (2.00, 8.00, 0.50),
    "gpt-4o-mini": (0.15, 0.60, 0.075),
    "gpt-4o": (2.50, 10.00, 1.25),
    "o4-mini": (1.10, 4.40, 0.275),
    "o3-mini": (1.10, 4.40, 0.55),
    "o3": (2.00, 8.00, 0.50),
    "o1-mini": (1.10, 4.40, 0.55),
    "o1": (15.00, 60.00, 7.50),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-35-turbo": (0.50, 1.50),
    "gpt-3.5-turbo": (0.50, 1.50),
    # embedding models: input tokens only
    "text-embedding-3-small": (0.02, 0.0),
    "text-embedding-3-large": (0.13, 0.0),
    "text-embedding-ada-002": (0.10, 0.0),
}

#: The share of the Global Standard price each processing tier costs: Global Batch and
#: flex half of it, priority processing twice it (Azure's published rules of thumb;
#: ``prices=`` gives standard prices, tiers are derived).
TIER_FACTORS: dict[str, float] = {
    "default": 1.0,
    "auto": 1.0,
    "batch": 0.5,
    "flex": 0.5,
    "priority": 2.0,
}


def cost_of(
    price: tuple[float, ...],
    prompt_tokens: int,
    completion_tokens: int,
    *,
    cached_tokens: int = 0,
    tier: str = "default",
) -> float:
    """The USD cost of an answer's tokens at ``price`` and ``tier``.

    Examples
    --------
    >>> cost_of((1.0, 4.0, 0.1), 1000, 100, cached_tokens=800)  # 200 + 80 + 400
    0.00068
    >>> cost_of((1.0, 4.0), 1000, 100, tier="flex")  # no cached price: at input's
    0.0007
    """
    cached_price = price[2] if len(price) > 2 else price[0]
    cached = min(max(cached_tokens, 0), prompt_tokens)
    usd = (
        (prompt_tokens - cached) * price[0]
        + cached * cached_price
        + completion_tokens * price[1]
    ) / 1_000_000
    return usd * TIER_FACTORS.get(tier, 1.0)


#: ``prices=``: by name prefix, a price ``(input, output)`` or ``(input, output, cached
#: input)`` in USD per million tokens, or the name of the model a deployment runs (its
#: price, and the way it bills images, are then that model's).
Prices = Mapping[str, tuple[float, ...] | str]
_V = TypeVar("_V")


def _longest(name: str, table: Mapping[str, _V]) -> _V | None:
    """The value of the longest key of ``table`` that starts ``name`` (any case)."""
    lower = name.lower()
    matches = [k for k in table if lower.startswith(k.lower())]
    return table[max(matches, key=len)] if matches else None


def model_for(name: str, prices: Prices | None = None) -> str:
    """The model deployment ``name`` runs: the one ``prices`` names for it, or ``name``.

    Examples
    --------
    >>> model_for("prod-mini", {"prod-mini": "gpt-4o-mini"})
    'gpt-4o-mini'
    >>> model_for("gpt-4o-2024-08-06", {"prod-mini": "gpt-4o-mini"})
    'gpt-4o-2024-08-06'
    """
    named = _longest(name, prices or {})
    return named if isinstance(named, str) else name


def price_for(
    model: str | None, prices: Prices | None = None
) -> tuple[float, ...] | None:
    """The USD-per-million price of ``model`` (see :data:`PRICES`), by longest prefix.

    Examples
    --------
    >>> price_for("gpt-4o-mini-2024-07-18")
    (0.15, 0.6, 0.075)
    >>> price_for("my-model", {"my-model": (1.0, 2.0)})
    (1.0, 2.0)
    >>> price_for("prod-mini", {"prod-mini": "gpt-4o-mini"})  # the model it runs
    (0.15, 0.6, 0.075)
    >>> price_for("unknown") is None
    True
    """
    if not model:
        return None
    table = {**PRICES, **(prices or {})}
    priced = {k: v for k, v in table.items() if not isinstance(v, str)}
    return _longest(model_for(model, prices), priced)


#: The rule for batch prices: Azure's Global Batch deployments cost this share of the
#: online (global standard) price, input and output alike. It applies to ``prices=``
#: overrides too: give online prices, batch ones are derived.
BATCH_DISCOUNT = 0.5


def batch_price(price: tuple[float, ...]) -> tuple[float, ...]:
    """The batch price of an online price (:data:`BATCH_DISCOUNT`).

    Examples
    --------
    >>> batch_price(price_for("gpt-4o-mini"))
    (0.075, 0.3, 0.0375)
    """
    return tuple(p * BATCH_DISCOUNT for p in price)


def estimate_cost(
    model: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    prices: Prices | None = None,
    *,
    cached_tokens: int = 0,
    tier: str = "default",
) -> float | None:
    """Estimated USD cost of the tokens, or ``None`` when the model has no price.

    ``cached_tokens`` (of ``prompt_tokens``) at the cached-input price; ``tier`` one of
    :data:`TIER_FACTORS`.
    """
    price = price_for(model, prices)
    if price is None:
        return None
    return cost_of(
        price, prompt_tokens, completion_tokens, cached_tokens=cached_tokens, tier=tier
    )


class SpendingCap:
    """A job's spending cap (``max_cost_usd``): what was spent, what is held.

    A request is admitted only if its worst case (prompt estimate plus ``max_tokens``,
    or 4,096 tokens without it, at ``price``) added to what the job spent and what the
    requests in flight may still cost stays within the cap; once answered, its worst
    case is released and its real cost (the usage Azure reports) is spent. Safe to use
    from several threads.

    Parameters
    ----------
    max_cost_usd
        The cap.
    price
        ``(input, output)`` USD per million tokens, online; ``batch=True`` prices at
        :func:`batch_price` of it.
    model
        The name the price was found for (for messages).

    Examples
    --------
    >>> cap = SpendingCap(0.001, (1.0, 2.0))
    >>> worst = cap.worst_case(100, 200)  # 100 * 1 + 200 * 2 per million
    >>> worst, cap.reserve(worst) is None
    (0.0005, True)
    >>> print(cap.reserve(worst))  # a second one would hold 0.001: still within
    None
    >>> print(cap.reserve(worst))  # a third would not fit
    not sent: its worst-case cost $0.000500 (prompt estimate + max_tokens) would take the job past max_cost_usd=$0.001000 ($0.001000 spent or held by requests in flight); a rerun with a higher max_cost_usd sends it
    >>> cap.settle(worst, 0.0001)
    >>> round(cap.spent_usd, 6), round(cap.committed_usd, 6), cap.refused
    (0.0001, 0.0005, 1)
    """

    def __init__(
        self, max_cost_usd: float, price: tuple[float, ...], model: str = ""
    ) -> None:
        self.max_cost_usd = max_cost_usd
        self.price = price
        self.model = model
        self.spent_usd = 0.0
        self.committed_usd = 0.0
        #: rows refused so far
        self.refused = 0
        self._lock = threading.Lock()
        #: requests waiting for holds to end (:meth:`reserve_waiting`)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def cost(
        self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False
    ) -> float:
        """The USD cost of these tokens at the cap's price (online, or batch)."""
        price = batch_price(self.price) if batch else self.price
        return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000

    def worst_case(
        self, prompt_tokens: int, max_tokens: int | None, *, batch: bool = False
    ) -> float:
        """A request's worst-case cost: its prompt estimate and a full answer."""
        completion = (
            DEFAULT_RESERVED_COMPLETION_TOKENS if max_tokens is None else max_tokens
        )
        return self.cost(prompt_tokens, completion, batch=batch)

    def reserve(self, worst: float) -> SpendingCapError | None:
        """Hold ``worst`` for a request; or the error saying why it may not be sent."""
        with self._lock:
            held = self.spent_usd + self.committed_usd
            if self._took(worst):
                return None
            self.refused += 1
        return self._refusal(worst, held)

    async def reserve_waiting(self, worst: float) -> SpendingCapError | None:
        """:meth:`reserve`, waiting while ``worst`` fits once the requests in flight end.

        Their holds are worst cases, and what they spend is most often far less: a row
        refused for them would be refused for what the job never spends (so as many
        rows as ``max_concurrency`` lets go at once, not what fits).
        """
        import asyncio  # here: importing the package does not load it

        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                held = self.spent_usd + self.committed_usd
                if self._took(worst):
                    return None
                if self.committed_usd <= 0 or not self._fits(self.spent_usd + worst):
                    self.refused += 1
                    return self._refusal(worst, held)
                woken: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, woken))
            await woken

    def _took(self, worst: float) -> bool:
        """Hold ``worst`` if it fits beside what is spent and held (under the lock)."""
        if not self._fits(self.spent_usd + self.committed_usd + worst):
            return False
        self.committed_usd += worst
        return True

    def _fits(self, total: float) -> bool:
        # a relative margin: float sums must not refuse what exactly fits
        return total <= self.max_cost_usd * (1 + 1e-9)

    def _refusal(self, worst: float, held: float) -> SpendingCapError:
        return SpendingCapError(
            f"not sent: its worst-case cost ${worst:.6f} (prompt estimate + "
            f"max_tokens) would take the job past max_cost_usd=${self.max_cost_usd:.6f} "
            f"(${held:.6f} spent or held by requests in flight); a rerun with a higher "
            "max_cost_usd sends it",
            max_cost_usd=self.max_cost_usd,
            worst_case_usd=worst,
            committed_usd=held,
        )

    def settle(self, worst: float, spent: float) -> None:
        """A request held ``worst`` ended: release it and spend ``spent``."""
        with self._lock:
            self.committed_usd = max(0.0, self.committed_usd - worst)
            self.spent_usd += spent
            waiters, self._waiters = self._waiters, []
        for loop, woken in waiters:  # they look again (from their own loop)
            loop.call_soon_threadsafe(_wake, woken)


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():  # (cancelled: its row stopped waiting)
        woken.set_result(None)
