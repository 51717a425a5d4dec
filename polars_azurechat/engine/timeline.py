"""A run's counters over time, sampled on the loop: what the run report draws. Internal.

:class:`Sampler` reads the counters the engine keeps anyway (rows done, requests,
retries, 429s, tokens, per deployment, and each deployment's quota in force) every
:data:`SAMPLE_S` seconds while a run goes on, from one loop timer: nothing is done per
row. A :class:`Timeline` holds at most :data:`MAX_POINTS` points: when full, every
other point is dropped and the sampling interval doubles, so a long run keeps its
whole span at a coarser step. The first point is taken when the run starts and the
last when it ends, so the last point holds the run's final counters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from polars_azurechat.engine import loop as _loop
from polars_azurechat.engine.runs import SAMPLE_S

if TYPE_CHECKING:
    import polars as pl

    from polars_azurechat.engine.core import ChatEngine
    from polars_azurechat.engine.runs import Run

__all__ = [
    "COLUMNS",
    "DEPLOYMENT_COLUMNS",
    "MAX_POINTS",
    "Sampler",
    "Timeline",
]

#: Points a timeline keeps at most.
MAX_POINTS = 2000
#: The run-wide series, cumulative counts but ``in_flight`` (requests on the wire).
COLUMNS = (
    "rows_done",
    "failed",
    "requests",
    "retries",
    "rate_limited",
    "prompt_tokens",
    "completion_tokens",
    "in_flight",
)
#: The series of each deployment: cumulative counts, and the budgets in force (given
#: or learned from Azure's headers) per minute, ``None`` while unknown.
DEPLOYMENT_COLUMNS = (
    "requests",
    "rate_limited",
    "tokens",
    "requests_per_minute_quota",
    "tokens_per_minute_quota",
)


@dataclasses.dataclass
class Timeline:
    """A run's counters over time: one list per series, one entry per sample.

    ``t_s`` is seconds since the run started (on the job's clock); ``series`` holds
    :data:`COLUMNS`, ``deployments`` one dict of :data:`DEPLOYMENT_COLUMNS` per
    deployment. ``step_s`` is the sampler's step; ``interval_s`` the step between
    the points kept (it doubles each time the timeline is thinned).
    """

    step_s: float = SAMPLE_S
    interval_s: float = SAMPLE_S
    t_s: list[float] = dataclasses.field(default_factory=list)
    series: dict[str, list[int]] = dataclasses.field(
        default_factory=lambda: {c: [] for c in COLUMNS}
    )
    deployments: dict[str, dict[str, list[Any]]] = dataclasses.field(
        default_factory=dict
    )

    def __len__(self) -> int:
        return len(self.t_s)

    def due(self, t: float) -> bool:
        """Whether a sample at ``t`` is kept (a thinned timeline keeps fewer)."""
        return not self.t_s or t - self.t_s[-1] >= self.interval_s - self.step_s / 2

    def add(
        self,
        t: float,
        values: dict[str, int],
        per: dict[str, dict[str, Any]],
        *,
        force: bool = False,
    ) -> None:
        """Append one sample, if :meth:`due` (or ``force``); thin it when full."""
        if not (force or self.due(t)):
            return
        self.t_s.append(t)
        for c in COLUMNS:
            self.series[c].append(values[c])
        for name, d in per.items():
            cols = self.deployments.get(name)
            if cols is None:  # a deployment first seen now: its earlier points unknown
                cols = self.deployments[name] = {
                    c: [None] * (len(self.t_s) - 1) for c in DEPLOYMENT_COLUMNS
                }
            for c in DEPLOYMENT_COLUMNS:
                cols[c].append(d.get(c))
        if len(self.t_s) >= MAX_POINTS:
            self._thin()

    def _thin(self) -> None:
        """Keep every other point (the last one too) and double the interval."""

        def thin(xs: list[Any]) -> list[Any]:
            kept = xs[::2]
            if (len(xs) - 1) % 2:
                kept.append(xs[-1])
            return kept

        self.t_s = thin(self.t_s)
        self.series = {c: thin(v) for c, v in self.series.items()}
        self.deployments = {
            n: {c: thin(v) for c, v in cols.items()}
            for n, cols in self.deployments.items()
        }
        self.interval_s *= 2

    def copy(self) -> Timeline:
        """An independent copy (of whole samples, if one is being added meanwhile)."""
        deployments = [list(cols.values()) for cols in self.deployments.values()]
        n = min(
            [len(self.t_s)]
            + [len(v) for v in self.series.values()]
            + [len(v) for cols in deployments for v in cols]
        )
        return Timeline(
            step_s=self.step_s,
            interval_s=self.interval_s,
            t_s=self.t_s[:n],
            series={c: v[:n] for c, v in self.series.items()},
            deployments={
                name: {c: v[:n] for c, v in cols.items()}
                for name, cols in self.deployments.items()
            },
        )

    def frame(self) -> pl.DataFrame:
        """The timeline as a DataFrame: ``t_s``, the run's series, then per deployment.

        A deployment's columns are named ``<deployment>/<series>``.

        Examples
        --------
        >>> tl = Timeline()
        >>> zero = dict.fromkeys(COLUMNS, 0)
        >>> tl.add(0.0, zero, {"d": {"requests": 0}})
        >>> tl.add(
        ...     0.25, {**zero, "rows_done": 3, "requests": 4}, {"d": {"requests": 4}}
        ... )
        >>> tl.frame().select("t_s", "rows_done", "requests", "d/requests").rows()
        [(0.0, 0, 0, 0), (0.25, 3, 4, 4)]
        """
        import polars as pl

        cols: dict[str, Any] = {"t_s": pl.Series(self.t_s, dtype=pl.Float64)}
        for c, v in self.series.items():
            cols[c] = pl.Series(v, dtype=pl.Int64)
        for name, per in self.deployments.items():
            for c, v in per.items():
                dtype = pl.Float64 if c.endswith("_quota") else pl.Int64
                cols[f"{name}/{c}"] = pl.Series(v, dtype=dtype)
        return pl.DataFrame(cols)


class Sampler:
    """Samples each run of one engine into ``run.timeline`` (see the module docstring).

    It holds the engine weakly (its timer must not keep a dropped job alive), never
    the job. :meth:`start` is called when a run starts, :meth:`stop` once when it
    ends. The step is the engine's ``runs.sample_s``.
    """

    def __init__(self, engine: ChatEngine) -> None:
        self._engine = weakref.ref(engine)
        self.interval_s = SAMPLE_S
        self._lock = threading.Lock()

    def start(self, run: Run) -> None:
        """A run started: its first point now, then one every ``interval_s``."""
        engine = self._engine()
        if engine is None:
            return
        self.interval_s = engine.runs.sample_s
        run.timeline = Timeline(step_s=self.interval_s, interval_s=self.interval_s)
        self.sample(run)
        loop = _loop.loop()
        loop.call_soon_threadsafe(loop.call_later, self.interval_s, self._tick, run)

    def stop(self, run: Run) -> None:
        """The run ended: its last point (its final counters)."""
        self.sample(run, last=True)

    def _tick(self, run: Run) -> None:
        if run.finished or run.timeline is None or self._engine() is None:
            return
        self.sample(run)
        asyncio.get_running_loop().call_later(self.interval_s, self._tick, run)

    def sample(self, run: Run, *, last: bool = False) -> None:
        """Record the run's counters now (on the loop, or once the run is over)."""
        engine = self._engine()
        with self._lock:
            timeline = run.timeline
            if engine is None or timeline is None or (run.finished and not last):
                return
            t = max(0.0, engine.runs.clock() - run.started)
            if timeline.t_s and t < timeline.t_s[-1]:
                t = timeline.t_s[-1]
            if not (last or timeline.due(t)):
                return
            st = run.stats
            values = {
                "rows_done": st.answered + st.failed,
                "failed": st.failed,
                "requests": st.requests,
                "retries": st.retries,
                "rate_limited": st.rate_limited,
                "prompt_tokens": st.prompt_tokens,
                "completion_tokens": st.completion_tokens,
                "in_flight": run.in_flight,
            }
            per: dict[str, dict[str, Any]] = {}
            for route in engine.pool.routes:
                counts: Mapping[str, int] = st.by_deployment.get(route.name, {})
                learned = route.limiter.learned()
                per[route.name] = {
                    "requests": counts.get("requests", 0),
                    "rate_limited": counts.get("rate_limited", 0),
                    "tokens": counts.get("prompt_tokens", 0)
                    + counts.get("completion_tokens", 0),
                    "requests_per_minute_quota": learned["requests_per_minute"],
                    "tokens_per_minute_quota": learned["tokens_per_minute"],
                }
            timeline.add(t, values, per, force=last)
