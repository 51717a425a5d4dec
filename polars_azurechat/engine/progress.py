"""The progress bar of a job's runs, and what a run says when it ends.

Not meant for outside use: :class:`ProgressBar` is one tqdm bar per run, shared by
every chunk of it; :func:`run_started` and :func:`run_ended` are the engine's
run hooks (the bar, and one warning per run for failed rows and truncated answers).
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polars_azurechat.engine.core import ChatEngine, Run, RunStats

__all__ = ["ProgressBar", "attach", "run_ended", "run_started", "show_progress"]

logger = logging.getLogger(__name__)


def attach(
    engine: ChatEngine, progress: bool | None, reports: dict[str, bool]
) -> ProgressBar | None:
    """Hook a job's bar (if ``progress`` asks for one) and reports into its runs.

    ``reports`` says what each run logs when it ends (failed rows, truncated answers);
    the hooks hold the engine, never the job (the job would then never die).
    """
    bar = None
    if show_progress(progress):
        runs = engine.runs
        bar = ProgressBar(lambda: None if runs.last is None else runs.last.stats)
        engine.progress = bar.update
    engine.runs.on_start = functools.partial(run_started, bar)
    engine.runs.on_end = functools.partial(run_ended, bar, reports)
    return bar


def run_started(bar: ProgressBar | None, run: Run) -> None:
    """A run started: the previous run's bar is closed."""
    if bar is not None:
        bar.start_run()


def run_ended(bar: ProgressBar | None, reports: dict[str, bool], run: Run) -> None:
    """The run is over: close its bar (at 100%), say once what went wrong."""
    if bar is not None:
        bar.close()
    st = run.stats
    total = st.rows + st.null_rows
    if reports["failed"] and st.failed:
        logger.warning(
            "chat.complete: %d of %d rows failed and are null (first: %s); "
            "output='struct' gives each row's error",
            st.failed,
            total,
            st.first_error,
        )
    if reports["truncated"] and st.truncated:
        logger.warning(
            "chat.complete: %d of %d answers were cut at max_tokens "
            "(finish_reason 'length'); raise max_tokens, or pass on_truncated='error'",
            st.truncated,
            total,
        )


def show_progress(progress: bool | None) -> bool:
    """Whether a job draws a bar: as asked, else when stderr is a terminal."""
    if progress is not None:
        return progress
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class ProgressBar:
    """One tqdm bar per run, shared by every chunk of it, that ends at 100%.

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
        from tqdm.auto import tqdm

        with self._lock:
            if self._bar is None:
                self._bar = tqdm(
                    total=self.known_total or 0,
                    unit="row",
                    desc="chat.complete",
                    dynamic_ncols=True,
                )
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
