"""The run report: a run's summary and timeline drawn as one figure, or one HTML file.

:func:`plot` draws a summary of one run (``job.summary(last_run=True)``; the same
as ``summary.plot()`` and ``job.report()``): rows answered and requests over time
with the 429s and retries marked, each deployment's request rate against its quota
(given, or learned from Azure's headers), and the tokens and their cost. :func:`save`
writes the summary table and the figure (inline SVG) as one self-contained HTML
file (``polars-azurechat run --report report.html``). The timeline is sampled from
counters the engine keeps anyway (:mod:`polars_azurechat.engine.timeline`): a run
pays nothing for its report.

Drawing needs matplotlib, which is optional: ``pip install
"polars-azurechat[notebook]"``; without it these raise :class:`ImportError` saying so.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import contextlib

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from polars_azurechat.engine.timeline import Timeline
    from polars_azurechat.functions import Completer
    from polars_azurechat.summary import RunSummary

__all__ = ["Reports", "html_report", "plot", "require_matplotlib", "save"]

#: The request rate drawn is averaged over this many seconds (or two samples).
RATE_OVER_S = 1.0
#: What to install for the report's drawing.
INSTALL_HINT = 'pip install "polars-azurechat[notebook]"'


def require_matplotlib() -> None:
    """Raise :class:`ImportError` (saying what to install) if matplotlib is absent."""
    try:
        import matplotlib  # noqa: F401 - only whether it imports
    except ImportError as exc:
        msg = (
            "the run report is drawn with matplotlib, which is not installed: "
            f"{INSTALL_HINT} (or pip install matplotlib)"
        )
        raise ImportError(msg) from exc


def _figure_class() -> type[Figure]:
    from matplotlib.figure import Figure

    class ReportFigure(Figure):
        """A figure a notebook shows as PNG, with or without pyplot's inline hooks."""

        def _repr_png_(self) -> bytes:
            buf = io.BytesIO()
            self.savefig(buf, format="png", dpi=100)
            return buf.getvalue()

    return ReportFigure


def plot(summary: RunSummary) -> Figure:
    """Draw one run: progress, request rate against quota, tokens and cost.

    Parameters
    ----------
    summary
        A summary of one run (it has a ``timeline``): ``job.summary(last_run=True)``.

    Returns
    -------
    matplotlib.figure.Figure
        Three panels over the run's seconds; a notebook shows it as an image.

    Raises
    ------
    ImportError
        matplotlib is not installed.
    ValueError
        The summary has no timeline (it covers several runs, or none).

    Examples
    --------
    >>> import polars_azurechat as pac
    >>> with pac.Completer(max_tokens=20) as job:
    ...     _ = job.run(["What is 1 + 1?"])
    ...     fig = plot(job.summary(last_run=True))
    >>> [ax.get_title() for ax in fig.axes][:3]
    ['rows and requests', 'requests per minute, by deployment', 'tokens and cost']
    """
    require_matplotlib()
    tl = summary.timeline
    if tl is None or not len(tl):
        msg = (
            "this summary has no timeline to draw: it covers several runs (or none); "
            "job.summary(last_run=True).plot() or job.report() draws the last run"
        )
        raise ValueError(msg)
    fig = _figure_class()(figsize=(9, 8.5), layout="constrained")
    progress, rate, tokens = fig.subplots(3, 1, sharex=True)
    _draw_progress(progress, tl)
    _draw_rates(rate, tl)
    _draw_tokens(tokens, tl, summary)
    tokens.set_xlabel("seconds since the run started")
    fig.suptitle(_title(summary))
    return fig


def _title(s: RunSummary) -> str:
    cost = "" if s.estimated_cost_usd is None else f", ${s.estimated_cost_usd:,.4f}"
    return (
        f"{s.model or 'chat'}: {s.answered:,} of {s.rows + s.null_rows:,} rows answered"
        f", {s.requests:,} requests, {s.rate_limited:,} 429s, {s.retries:,} retries"
        f", {s.wall_s:.1f} s{cost}"
    )


def _steps(t: list[float], counts: list[int]) -> tuple[list[float], list[int]]:
    """The samples at which a cumulative count rose, and by how much."""
    at, by = [], []
    for i in range(1, len(counts)):
        if counts[i] > counts[i - 1]:
            at.append(t[i])
            by.append(counts[i] - counts[i - 1])
    return at, by


def _marks(ax: Axes, tl: Timeline, y: list[int]) -> None:
    """The 429s (red crosses) and retries (orange rings), on the line ``y``."""
    series = tl.series
    for name, style, label in (
        ("retries", {"edgecolors": "tab:orange", "facecolors": "none"}, "retries"),
        ("rate_limited", {"color": "tab:red", "marker": "x"}, "429s"),
    ):
        at, by = _steps(tl.t_s, series[name])
        if at:
            ys = [y[tl.t_s.index(t)] for t in at]
            ax.scatter(
                at,
                ys,
                s=[30 + 12 * min(b, 20) for b in by],
                label=f"{label} ({series[name][-1]:,})",
                zorder=3,
                **style,  # type: ignore[arg-type]
            )


def _draw_progress(ax: Axes, tl: Timeline) -> None:
    t, series = tl.t_s, tl.series
    ax.plot(t, series["rows_done"], color="tab:green", label="rows done")
    ax.plot(t, series["requests"], color="tab:blue", label="requests sent")
    if series["failed"][-1]:
        ax.plot(t, series["failed"], color="tab:red", ls=":", label="rows failed")
    _marks(ax, tl, series["requests"])
    ax.set_title("rows and requests")
    ax.set_ylabel("count")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)


def _per_minute(t: list[float], counts: list[Any], over_s: float) -> list[float]:
    """The rate of a cumulative count, per minute, over the last ``over_s`` seconds."""
    out = [0.0]
    j = 0
    for i in range(1, len(t)):
        while j < i - 1 and t[i] - t[j + 1] >= over_s:
            j += 1
        dt = t[i] - t[j]
        a, b = counts[j] or 0, counts[i] or 0
        out.append((b - a) * 60.0 / dt if dt > 0 else out[-1])
    return out


def _draw_rates(ax: Axes, tl: Timeline) -> None:
    t = tl.t_s
    over = max(RATE_OVER_S, 2 * tl.interval_s)
    colors = [f"C{i}" for i in range(10)]
    for i, (name, cols) in enumerate(tl.deployments.items()):
        color = colors[i % len(colors)]
        rate = _per_minute(t, cols["requests"], over)
        ax.plot(t, rate, color=color, label=f"{name}: requests/min")
        quota = cols["requests_per_minute_quota"]
        if any(q is not None for q in quota):
            ax.plot(
                t,
                [float("nan") if q is None else q for q in quota],
                color=color,
                ls="--",
                label=f"{name}: quota",
            )
        at, _ = _steps(t, [c or 0 for c in cols["rate_limited"]])
        if at:
            ax.scatter(
                at,
                [rate[t.index(x)] for x in at],
                color=color,
                marker="x",
                s=40,
                zorder=3,
                label=f"{name}: 429s",
            )
    ax.set_title("requests per minute, by deployment")
    ax.set_ylabel(f"requests/min (over {over:g} s)")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)


def _draw_tokens(ax: Axes, tl: Timeline, s: RunSummary) -> None:
    from polars_azurechat.summary import cost_of, price_for

    t, series = tl.t_s, tl.series
    prompt, completion = series["prompt_tokens"], series["completion_tokens"]
    ax.stackplot(
        t,
        prompt,
        completion,
        colors=["tab:purple", "tab:pink"],
        alpha=0.6,
        labels=["prompt tokens", "completion tokens"],
    )
    ax.set_title("tokens and cost")
    ax.set_ylabel("tokens")
    ax.grid(alpha=0.3)
    price = price_for(s.model)
    cost = s.estimated_cost_usd
    if price is not None and cost is not None:
        raw = [cost_of(price, p, c) for p, c in zip(prompt, completion, strict=True)]
        scale = cost / raw[-1] if raw[-1] > 0 else 1.0  # ends at the summary's cost
        usd = ax.twinx()
        usd.plot(t, [r * scale for r in raw], color="black", ls=":", label="cost")
        usd.set_ylabel("USD")
        lines = ax.get_legend_handles_labels()
        more = usd.get_legend_handles_labels()
        ax.legend(
            lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize="small"
        )
    else:
        ax.legend(loc="upper left", fontsize="small")


def html_report(summary: RunSummary) -> str:
    """One self-contained HTML page: the summary table and the figure (inline SVG).

    It holds the summary's counts and the figure only: no key, no prompt, no answer.
    """
    fig = plot(summary)
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and doctype
    title = "polars-azurechat run report"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        "<style>body{font-family:sans-serif;margin:2em}"
        "table{border-collapse:collapse}th,td{padding:2px 8px;"
        "border-bottom:1px solid #ddd;font-family:monospace}</style></head>\n"
        f"<body><h1>{title}</h1>\n"
        f"{summary.to_html()}\n"
        f'<figure class="polars-azurechat-report">{svg}</figure>\n'
        "</body></html>\n"
    )


def save(summary: RunSummary, path: str | os.PathLike[str]) -> Path:
    """Write :func:`html_report` of ``summary`` to ``path``; return the path."""
    out = Path(path)
    text = html_report(summary)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


class Reports:
    """The run report of a job (mixed into :class:`~polars_azurechat.Completer`)."""

    def summary(self, *, last_run: bool = False) -> RunSummary:
        """What the job did (see :meth:`polars_azurechat.Completer.summary`)."""
        raise NotImplementedError

    def report(self, path: str | os.PathLike[str] | None = None) -> Figure:
        """Draw the last run; with ``path``, also write it as one HTML file.

        The figure shows rows answered and requests over time with the 429s and
        retries marked, each deployment's request rate against its quota (given or
        learned), and the tokens and their cost; the HTML file holds the summary
        table and the figure (inline SVG), nothing else (no key, no prompt). Needs
        matplotlib: ``pip install "polars-azurechat[notebook]"``.

        Returns
        -------
        matplotlib.figure.Figure
            The figure (a notebook shows it).

        Examples
        --------
        >>> import polars_azurechat as pac
        >>> job = pac.Completer(max_tokens=20)
        >>> job.run(["What is 1 + 1?", "What is 2 + 3?"])
        ['2', '5']
        >>> from pathlib import Path
        >>> fig = job.report("report.html")
        >>> "<svg" in Path("report.html").read_text()
        True
        >>> job.close()
        """
        summary = self.summary(last_run=True)
        if path is not None:
            save(summary, path)
        return plot(summary)


def cli_report(stack: contextlib.ExitStack, job: Completer, path: Path | None) -> None:
    """``run --report PATH``: check matplotlib now, write the report when the job ends.

    Called before any request: without matplotlib the command stops here, saying
    what to install. The report is written however the run ends (answered, failed,
    interrupted), before the job closes.
    """
    if path is None:
        return
    import typer

    try:
        require_matplotlib()
    except ImportError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--report'") from None

    def write() -> None:
        try:
            save(job.summary(last_run=True), path)
        except (OSError, ValueError) as exc:
            typer.echo(f"error: the report was not written: {exc}", err=True)
        else:
            typer.echo(f"wrote the run report to {path}", err=True)

    stack.callback(write)
