"""The progress bar of a job's runs, and what a run says when it ends.

Not meant for outside use: :class:`ProgressBar` is one bar per run, shared by every
chunk of it: a tqdm bar on stderr, or in a notebook (Jupyter, VS Code: an ipykernel)
an HTML display updated in place (:class:`HtmlBar`, no ipywidgets needed);
:func:`run_started` and :func:`run_ended` are the engine's run hooks (the bar, the
run's timeline for its report, and one warning per run for failed rows and truncated
answers).
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from polars_azurechat.engine.timeline import Sampler

if TYPE_CHECKING:
    from polars_azurechat.engine.core import ChatEngine, Run, RunStats

__all__ = [
    "HtmlBar",
    "ProgressBar",
    "attach",
    "in_notebook",
    "run_ended",
    "run_started",
    "show_progress",
]

#: A notebook's bar is redrawn at most this often (seconds); its end always is.
HTML_REDRAW_S = 0.1

logger = logging.getLogger(__name__)


def attach(
    engine: ChatEngine, progress: bool | None, reports: dict[str, Any]
) -> ProgressBar | None:
    """Hook a job's bar (if ``progress`` asks for one) and reports into its runs.

    ``reports`` says what each run logs when it ends (failed rows, truncated answers),
    and the call it names (``"call"``, else ``chat.complete``);
    the hooks hold the engine, never the job (the job would then never die).
    """
    bar = None
    if show_progress(progress):
        runs = engine.runs
        bar = ProgressBar(lambda: None if runs.last is None else runs.last.stats)
        engine.progress = bar.update
    sampler = Sampler(engine)
    engine.runs.on_start = functools.partial(run_started, bar, sampler)
    engine.runs.on_end = functools.partial(run_ended, bar, sampler, reports)
    return bar


def run_started(bar: ProgressBar | None, sampler: Sampler, run: Run) -> None:
    """A run started: the previous run's bar is closed; its timeline starts."""
    if bar is not None:
        bar.start_run()
    sampler.start(run)


def run_ended(
    bar: ProgressBar | None, sampler: Sampler, reports: dict[str, Any], run: Run
) -> None:
    """The run is over: close its bar (at 100%), say once what went wrong."""
    sampler.stop(run)
    if bar is not None:
        bar.close()
    st = run.stats
    total = st.rows + st.null_rows
    if reports["failed"] and st.failed and run.fatal is None:  # (a fatal one is raised)
        logger.warning(
            "%s: %d of %d rows failed and are null (first: %s); %s",
            reports.get("call", "chat.complete"),
            st.failed,
            total,
            st.first_error,
            "output='struct' gives each row's error"
            if reports.get("struct", True)
            else "on_error='raise' names each row's error",
        )
    if reports.get("truncated", True) and st.truncated:
        logger.warning(
            "%s: %d of %d answers were cut at max_tokens "
            "(finish_reason 'length'); raise max_tokens, or pass on_truncated='error'",
            reports.get("call", "chat.complete"),
            st.truncated,
            total,
        )


def show_progress(progress: bool | None) -> bool:
    """Whether a job draws a bar: as asked, else in a notebook or on a terminal."""
    if progress is not None:
        return progress
    if in_notebook():
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def in_notebook() -> bool:
    """Whether this runs in a notebook's kernel (Jupyter, VS Code: ipykernel's shell).

    IPython is not imported for this: outside IPython it is not loaded.
    """
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if get is not None else None
    return shell is not None and any(
        c.__name__ == "ZMQInteractiveShell" for c in type(shell).__mro__
    )


def _new_bar(total: int) -> Any:
    """A notebook's HTML bar, or a tqdm bar on stderr."""
    if in_notebook():
        return HtmlBar(total=total, desc="chat.complete")
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="row", desc="chat.complete", dynamic_ncols=True)


class ProgressBar:
    """One bar per run, shared by every chunk of it, that ends at 100%.

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
        with self._lock:
            if self._bar is None:
                self._bar = _new_bar(self.known_total or 0)
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


class HtmlBar:
    """A progress bar drawn as one notebook display, updated in place.

    ``IPython.display.display(..., display_id=True)`` shows it, the handle's
    ``update`` redraws it (an ``update_display_data`` message): Jupyter and VS Code
    both redraw the same output, and no ipywidgets are needed. It has the part of
    tqdm's interface :class:`ProgressBar` uses; it is redrawn at most every
    :data:`HTML_REDRAW_S` seconds, and always when it is full and when it closes.
    """

    def __init__(self, total: int, desc: str) -> None:
        self.total = total
        self.n = 0
        self.desc = desc
        self.postfix = ""
        self._started = time.monotonic()
        self._drawn_at = 0.0
        self._closed = False
        from IPython.display import display

        self._handle: Any = display(  # type: ignore[no-untyped-call]
            self._data(), raw=True, display_id=True
        )

    @property
    def format_dict(self) -> dict[str, float]:
        """As tqdm's: the seconds since the bar opened."""
        return {"elapsed": time.monotonic() - self._started}

    def update(self, n: int) -> None:
        """``n`` more rows are done."""
        self.n += n
        self.refresh(force=self.n >= self.total)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        """The text after the counts (tokens/s, retries, 429s, failures)."""
        self.postfix = text
        if refresh:
            self.refresh()

    def refresh(self, *, force: bool = False) -> None:
        """Redraw, unless the last redraw was less than :data:`HTML_REDRAW_S` ago."""
        now = time.monotonic()
        if self._closed or (not force and now - self._drawn_at < HTML_REDRAW_S):
            return
        self._drawn_at = now
        self._handle.update(self._data(), raw=True)

    def close(self) -> None:
        """The last redraw (the run's final counts)."""
        self.refresh(force=True)
        self._closed = True

    def text(self) -> str:
        """The bar's state in one line."""
        total = max(self.total, self.n)
        pct = 100 * self.n // total if total else 0
        elapsed = self.format_dict["elapsed"]
        rate = self.n / elapsed if elapsed > 0 else 0.0
        tail = f", {self.postfix}" if self.postfix else ""
        return (
            f"{self.desc}: {pct}% {self.n:,}/{total:,} rows "
            f"[{elapsed:.1f} s, {rate:,.1f} rows/s{tail}]"
        )

    def _data(self) -> dict[str, str]:
        import html

        total = max(self.total, self.n, 1)
        text = self.text()
        return {
            "text/plain": text,
            "text/html": (
                '<div class="polars-azurechat-progress">'
                f'<progress value="{self.n}" max="{total}" '
                'style="width:40ex;vertical-align:middle"></progress> '
                f"<code>{html.escape(text)}</code></div>"
            ),
        }
