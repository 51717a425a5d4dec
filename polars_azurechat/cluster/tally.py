"""The job's summary, gathered from the executors. Not meant for outside use.

Each partition's run is summarised by the worker's job (:meth:`Completer.summary`,
``last_run=True``) and added to a Spark accumulator as a dict of counts; Spark merges
the accumulator updates of the tasks that succeed (a failed or killed attempt's are
dropped, so its requests are not in the summary) and the driver reads the sum as a
:class:`SparkSummary`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polars_azurechat.summary import RunSummary

__all__ = ["COUNTS", "SparkSummary", "TallyParam", "tally_of"]

#: The counts of a :class:`RunSummary` that add up across partitions.
COUNTS = (
    "rows",
    "answered",
    "failed",
    "null_rows",
    "cached",
    "deduplicated",
    "requests",
    "retries",
    "rate_limited",
    "prompt_tokens",
    "completion_tokens",
    "truncated",
    "inputs",
    "batches",
    "batch_answered",
)


class TallyParam:
    """Adds dicts of counts key by key (Spark's accumulator of the job's summary).

    Spark's ``AccumulatorParam`` in shape (``zero``, ``addInPlace``), so this module
    loads without PySpark.

    Examples
    --------
    >>> TallyParam().addInPlace({"rows": 2.0}, {"rows": 3.0, "requests": 1.0})
    {'rows': 5.0, 'requests': 1.0}
    """

    def zero(self, value: dict[str, float]) -> dict[str, float]:
        """An empty tally."""
        return {}

    def addInPlace(  # noqa: N802 - Spark's name
        self, value1: dict[str, float], value2: dict[str, float]
    ) -> dict[str, float]:
        """``value1`` plus ``value2``, key by key."""
        for key, n in value2.items():
            value1[key] = value1.get(key, 0) + n
        return value1


def tally_of(s: RunSummary) -> dict[str, float]:
    """One partition's run as counts: its summary's, its busy time, model and cost.

    The model and whether the cost is known are keys too (``model=<name>``,
    ``unpriced``), so the tally stays a sum; a partition that paid for nothing (every
    row from the cache) adds no model and no cost.
    """
    out: dict[str, float] = {k: float(getattr(s, k)) for k in COUNTS}
    out["partitions"] = 1
    out["task_s"] = s.wall_s
    if not (s.requests or s.batch_answered):
        return out  # nothing paid (cached, null or failed before sending): no model
    if s.estimated_cost_usd is None:
        out["unpriced"] = 1
    else:
        out["cost_usd"] = s.estimated_cost_usd
    if s.model:
        out[f"model={s.model}"] = 1
    return out


@dataclasses.dataclass(frozen=True)
class SparkSummary:
    """What a Spark job did, summed over the partitions its executors answered.

    The counts are those of :class:`~polars_azurechat.RunSummary` (``rows``,
    ``answered``, ``failed``, ``cached``: from the cache, ``deduplicated``,
    ``requests``, ``rate_limited``: 429s, tokens), summed over every partition that
    ran, in every action on the DataFrame so far; ``partitions`` counts those,
    ``task_s`` their busy time added up (not the job's wall time), and
    ``estimated_cost_usd`` their cost (``None`` when a model has no price). A task
    attempt that failed or was killed is not counted (Spark drops its accumulator
    update): what it sent shows as ``requests`` only if the emulator or Azure counts it.
    """

    partitions: int = 0
    rows: int = 0
    answered: int = 0
    failed: int = 0
    null_rows: int = 0
    cached: int = 0
    deduplicated: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0
    inputs: int = 0
    batches: int = 0
    batch_answered: int = 0
    task_s: float = 0.0
    estimated_cost_usd: float | None = None
    model: str | None = None

    @classmethod
    def of(cls, tally: Mapping[str, float]) -> SparkSummary:
        """The summary of an accumulator's value."""
        counts: dict[str, Any] = {k: int(tally.get(k, 0)) for k in COUNTS}
        models = sorted(k.split("=", 1)[1] for k in tally if k.startswith("model="))
        priced = not tally.get("unpriced") and int(tally.get("partitions", 0)) > 0
        return cls(
            partitions=int(tally.get("partitions", 0)),
            task_s=float(tally.get("task_s", 0.0)),
            estimated_cost_usd=float(tally.get("cost_usd", 0.0)) if priced else None,
            model=", ".join(models) or None,
            **counts,
        )

    def as_dict(self) -> dict[str, Any]:
        """The summary as a plain dict."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        cost = (
            "unknown"
            if self.estimated_cost_usd is None
            else f"${self.estimated_cost_usd:,.4f}"
        )
        return (
            f"{self.partitions:,} partitions, {self.rows:,} rows: "
            f"{self.answered:,} answered ({self.cached:,} from the cache, "
            f"{self.deduplicated:,} repeated), {self.failed:,} failed, "
            f"{self.null_rows:,} null; {self.requests:,} requests, "
            f"{self.rate_limited:,} rate-limited (429), {self.retries:,} retries; "
            f"tokens {self.prompt_tokens:,} in, {self.completion_tokens:,} out; "
            f"cost {cost} ({self.model or 'no model'}); {self.task_s:,.1f} s of tasks"
        )
