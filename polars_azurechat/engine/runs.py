"""A job's runs: which one is current, when one starts and ends, their totals. Internal.

A *run* (:class:`Run`) is one collect, one ``complete_many``/``Completer.run`` call, or
one CLI job: its start, deadline (``deadline_s`` from its start), fatal error and
counters (:class:`RunStats`). :class:`Runs` keeps a job's runs. Polars hands a
collect's chunks over in waves, from several threads, with short gaps between waves: a
chunk that arrives while another is being answered, or within :data:`RUN_GRACE_S` of
the previous one's end, joins the same run, unless that run stopped or passed its
deadline. ``complete_many`` and the CLI open an explicit run (:meth:`Runs.scope`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from polars_azurechat._types import REASONING_LENGTH
from polars_azurechat.engine import loop as _loop
from polars_azurechat.engine.frontdoor import Recent
from polars_azurechat.errors import AzureChatError, DeadlineExceededError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from tenacity import AsyncRetrying

    from polars_azurechat._types import ChatResult
    from polars_azurechat.engine.timeline import Timeline
    from polars_azurechat.transport.http import Completion

__all__ = ["RUN_GRACE_S", "SAMPLE_S", "STOP_GRACE_S", "Run", "RunStats", "Runs"]

#: Seconds between two samples of a run's counters, for its report (the timeline).
SAMPLE_S = 0.25
#: A chunk arriving this soon after the previous one ended belongs to the same run
#: (Polars hands a collect's chunks over in waves, with short gaps between them).
RUN_GRACE_S = 0.2
#: After a first Ctrl-C (or SIGTERM) no request is admitted, and the answers of the
#: requests in flight are awaited this long (Azure bills them): kept in the cache. A
#: second signal stops at once.
STOP_GRACE_S = 1.5


@dataclasses.dataclass
class RunStats:
    """Counters of one run, or of several merged.

    ``rows`` counts non-null rows: ``answered + failed``; ``truncated`` answered rows
    were cut at ``max_tokens`` and kept; ``cached`` and ``deduplicated`` are answered
    rows that sent no request. ``failures_by_kind`` counts failed attempts
    by error class; ``retries`` those of them that were retryable. ``wall_s`` is busy
    time: while at least one batch was being answered.
    """

    rows: int = 0
    answered: int = 0
    truncated: int = 0
    failed: int = 0
    null_rows: int = 0
    cached: int = 0
    deduplicated: int = 0
    requests: int = 0
    #: embeddings: the texts answered by the requests (several per request)
    inputs_sent: int = 0
    retries: int = 0
    rate_limited: int = 0
    failures_by_kind: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: of completion_tokens, spent reasoning; of prompt_tokens, read from Azure's cache
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    #: answered rows a reasoning model left empty (its budget spent reasoning)
    emptied: int = 0
    #: 429s of a busy tier (flex), not of a quota; flex requests sent again on default
    capacity_refused: int = 0
    flex_fallbacks: int = 0
    #: per processing tier that answered (``service_tier``): answers, prompt_tokens,
    #: completion_tokens, cached_tokens
    by_tier: dict[str, collections.Counter[str]] = dataclasses.field(
        default_factory=dict
    )
    peak_in_flight: int = 0
    model: str | None = None
    wall_s: float = 0.0
    first_error: str | None = None
    #: how an interrupted run stopped, in words (see :meth:`Run.stop_note`)
    stopped: str | None = None
    #: per deployment of a pool: requests, rate_limited, failed_attempts,
    #: prompt_tokens, completion_tokens
    by_deployment: dict[str, collections.Counter[str]] = dataclasses.field(
        default_factory=dict
    )

    def count(self, result: ChatResult) -> None:
        """Count one non-null row's outcome."""
        self.rows += 1
        if result.exception is None:
            self.answered += 1
            if result.finish_reason == "length":
                self.truncated += 1
            elif result.finish_reason == REASONING_LENGTH:
                self.truncated += 1
                self.emptied += 1
        else:
            self.failed += 1
            if self.first_error is None:
                self.first_error = result.error

    def add_usage(self, completion: Completion) -> None:
        """Count an answered attempt's tokens (a :class:`~.http.Completion`)."""
        self.prompt_tokens += completion.prompt_tokens or 0
        self.completion_tokens += completion.completion_tokens or 0
        self.reasoning_tokens += completion.reasoning_tokens or 0
        self.cached_tokens += completion.cached_tokens or 0
        tier = completion.service_tier
        if tier is not None:
            per = self.by_tier.get(tier)
            if per is None:
                per = self.by_tier[tier] = collections.Counter()
            per["answers"] += 1
            per["prompt_tokens"] += completion.prompt_tokens or 0
            per["completion_tokens"] += completion.completion_tokens or 0
            per["cached_tokens"] += completion.cached_tokens or 0

    def merge(self, other: RunStats) -> None:
        """Add ``other``'s counts to these."""
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name == "peak_in_flight":
                setattr(self, f.name, max(mine, theirs))
            elif f.name in ("model", "first_error", "stopped"):
                setattr(self, f.name, mine or theirs)
            elif f.name == "failures_by_kind":
                mine.update(theirs)
            elif f.name in ("by_deployment", "by_tier"):
                for name, counts in theirs.items():
                    mine.setdefault(name, collections.Counter()).update(counts)
            else:
                setattr(self, f.name, mine + theirs)

    def copy(self) -> RunStats:
        """An independent copy."""
        out = RunStats()
        out.merge(self)
        return out

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (for logs and JSON)."""
        d = dataclasses.asdict(self)
        d["failures_by_kind"] = dict(self.failures_by_kind)
        d["by_deployment"] = {k: dict(v) for k, v in self.by_deployment.items()}
        d["by_tier"] = {k: dict(v) for k, v in self.by_tier.items()}
        return d


class Run:
    """One run of a job: its start, deadline, fatal error and counters.

    ``error`` is the exception the run raised to its caller (the original object, with
    every attribute), or ``None``.
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        started: float,
        deadline_s: float | None,
        retrying: Callable[..., AsyncRetrying],
    ) -> None:
        self.id = next(Run._ids)
        self.started = started
        self.deadline = None if deadline_s is None else started + deadline_s
        self.deadline_s = deadline_s
        self.fatal: AzureChatError | None = None
        self.error: BaseException | None = None
        #: what stopped the run (``"Ctrl-C"``, ``"SIGTERM"``): no more admissions
        self.interrupted: str | None = None
        #: signals seen while it ran; the second stops it at once
        self.signals = 0
        #: why its batches were cancelled: "answered" (every request in flight was
        #: answered in the grace), "grace" (the grace ran out), "again" (a second
        #: signal); None while it runs or waits out the grace
        self.halted: str | None = None
        #: this run's requests on the wire; on it at the stop; answers kept after the
        #: stop; on it when the batches were cancelled (their answers are lost)
        self.in_flight = 0
        self.at_stop = 0
        self.grace_s = STOP_GRACE_S
        self.grace_kept = 0
        self.dropped = 0
        self.on_drained: Callable[[], None] | None = None
        self.timer_stop: asyncio.TimerHandle | None = None
        self.explicit = False
        self.finished = False
        self.timer: asyncio.TimerHandle | None = None
        self.futures: set[concurrent.futures.Future[Any]] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stats = RunStats()
        #: its answers, for its later batches asking the same (dropped at its end)
        self.recent = Recent()
        #: keys another batch sent again after a transient failure (once a run)
        self.resent: set[str] = set()
        #: its counters over time, for the run report (see :mod:`.timeline`)
        self.timeline: Timeline | None = None
        self.ended: float | None = None
        self.busy_since: float | None = None
        #: the retry policy of this run's requests (it reads the run's deadline)
        self.retrying = retrying(deadline=lambda: self.deadline)

    def __repr__(self) -> str:
        return f"<Run {self.id} rows={self.stats.rows} fatal={self.fatal is not None}>"

    def busy_s(self, now: float) -> float:
        """Busy seconds so far."""
        extra = 0.0 if self.busy_since is None else now - self.busy_since
        return self.stats.wall_s + extra

    def track(self, future: concurrent.futures.Future[Any]) -> None:
        """Register one of this run's batches, so a stop can cancel it (any thread).

        The batch may already have started on the loop, and a stop have halted the
        run, before the submitting thread got here (kept off the GIL meanwhile): the
        halt then missed it, so it is cancelled here. Registered first and checked
        second, while :meth:`Runs.halt` marks the run first and cancels second: one
        of the two always sees the other.
        """
        self.futures.add(future)
        future.add_done_callback(self.futures.discard)
        if self.halted is not None:
            future.cancel()

    def request_started(self) -> None:
        """One of this run's requests goes on the wire (on the loop)."""
        self.in_flight += 1

    def request_ended(self) -> None:
        """One of this run's requests came back or failed (on the loop).

        The last one back after a stop ends the grace at once (after its answer is
        delivered: the call is scheduled, not made here).
        """
        self.in_flight -= 1
        if self.in_flight == 0 and self.on_drained is not None and self.halted is None:
            asyncio.get_running_loop().call_soon(self.on_drained)

    def answer_kept(self) -> None:
        """An answer was delivered after the stop (kept in the cache).

        One may still come after the halt: its batch's cancellation reaches the loop
        a turn later, and an answer already read is delivered meanwhile. It is kept,
        so it is not one of the dropped.
        """
        if self.interrupted is None:
            return
        self.grace_kept += 1
        if self.halted is not None and self.dropped > 0:
            self.dropped -= 1
            self.stats.stopped = self.stop_note()

    def stop_note(self) -> str:
        """How the interrupted run stopped, in words ("" if it was not interrupted)."""
        by, kept = self.interrupted, self.grace_kept
        answers = "answer" if kept == 1 else "answers"
        were = "was" if kept == 1 else "were"
        if by is None:
            return ""
        if self.halted == "again":
            return (
                f"{by} again stopped it at once: {kept:,} {answers} that arrived after "
                f"the first {were} kept, {self.dropped:,} requests in flight were "
                "dropped (Azure may bill them)"
            )
        if self.halted == "grace":
            return (
                f"no request was admitted after {by}; {kept:,} {answers} that arrived "
                f"within the {self.grace_s:g} s grace were kept, {self.dropped:,} "
                "requests still in flight were dropped (Azure may bill them)"
            )
        if self.at_stop == 0:
            return f"no request was admitted after {by} (none was in flight)"
        return (
            f"no request was admitted after {by}; the {kept:,} {answers} of the "
            f"{self.at_stop:,} requests in flight arrived within the {self.grace_s:g} s "
            "grace and were kept"
        )

    def deadline_passed(self, now: float) -> bool:
        """Whether the run's deadline is behind ``now``."""
        return self.deadline is not None and now >= self.deadline

    def check_deadline(self, now: float) -> None:
        """Raise :class:`DeadlineExceededError` once the deadline has passed."""
        if self.deadline_passed(now):
            msg = f"deadline_s={self.deadline_s} passed before this row was answered"
            raise DeadlineExceededError(msg)


class Runs:
    """The runs of one job: the current one, the totals of those before it.

    Parameters
    ----------
    clock
        The job's monotonic clock.
    deadline_s
        Each run's time bound, from its start (``None``: none).
    retrying
        Builds a run's retry policy, given ``deadline=``: a function that reads the
        run's deadline.

    Notes
    -----
    The bookkeeping is touched by callers' threads under a lock; a run's counters
    change on the event loop only.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        deadline_s: float | None,
        retrying: Callable[..., AsyncRetrying],
    ) -> None:
        self.clock = clock
        self.deadline_s = deadline_s
        self._retrying = retrying
        #: Called when a run starts (in the caller's thread) and once when it ends (in
        #: the caller's thread, or on the loop for a run of Polars' threads).
        self.on_start: Callable[[Run], None] | None = None
        self.on_end: Callable[[Run], None] | None = None
        #: how long a stopping run waits for the answers in flight (tests shorten it)
        self.stop_grace_s = STOP_GRACE_S
        #: seconds between two samples of a run's counters (tests shorten it)
        self.sample_s = SAMPLE_S
        self._lock = threading.Lock()
        self._active = 0
        self._current: Run | None = None
        self._totals = RunStats()
        #: runs so far
        self.count = 0

    @property
    def active(self) -> int:
        """Batches being answered now, across threads."""
        return self._active

    @property
    def last(self) -> Run | None:
        """The current or most recent run."""
        return self._current

    @property
    def stats(self) -> RunStats:
        """Counters over every run so far (a snapshot)."""
        with self._lock:
            out = self._totals.copy()
            current = self._current
            if current is not None:
                out.merge(current.stats)
                out.wall_s += current.busy_s(self.clock()) - current.stats.wall_s
        return out

    def enter(self, *, new: bool = False) -> Run:
        """A batch starts: join the current run or start a new one.

        Every :meth:`enter` is paired with a :meth:`leave` (``scope`` and the
        pipeline do it; batch mode uses ``entered``).

        A run is explicit (``run_scope``, or a chunk that Polars hands over on the
        thread that called ``collect``: the whole column at once) and ends when its
        last batch does; or it is made of the chunks Polars' own threads hand over, in
        waves, and ends :data:`RUN_GRACE_S` after the last wave, unless another joins.
        """
        explicit = new or not _foreign_thread()
        previous: Run | None = None
        with self._lock:
            now = self.clock()
            run = self._current
            continues = run is not None and (
                self._active > 0
                if new or explicit
                else self._active > 0
                or (
                    not run.explicit
                    and not run.finished
                    and run.fatal is None
                    and run.error is None
                    and run.interrupted is None
                    and not run.deadline_passed(now)
                    and run.ended is not None
                    and now - run.ended <= RUN_GRACE_S
                )
            )
            if new and self._active > 0:
                msg = "a run of this job is already going on"
                raise RuntimeError(msg)
            started = not continues
            if started:
                if run is not None:
                    self._totals.merge(run.stats)
                    previous = run
                run = self._current = Run(now, self.deadline_s, self._retrying)
                run.explicit = explicit
                self.count += 1
            assert run is not None  # noqa: S101 - set just above
            if self._active == 0:
                run.busy_since = now
            self._active += 1
            timer, run.timer = run.timer, None
        if timer is not None:
            _loop.loop().call_soon_threadsafe(timer.cancel)
        if previous is not None:
            self._finish(previous)
        if started and self.on_start is not None:
            self.on_start(run)
        return run

    def leave(self, run: Run) -> None:
        """A batch of ``run`` ended (see :meth:`enter`)."""
        with self._lock:
            self._active -= 1
            idle = self._active == 0
            if idle:
                now = self.clock()
                run.ended = now
                if run.busy_since is not None:
                    run.stats.wall_s += now - run.busy_since
                    run.busy_since = None
        if not idle:
            return
        if run.explicit or run.fatal or run.interrupted or run.error:
            self._finish(run)
        else:  # more waves of the same query may come: end the run if none does
            loop = _loop.loop()
            loop.call_soon_threadsafe(self._arm_timer, run)

    def _arm_timer(self, run: Run) -> None:
        with self._lock:
            if self._active == 0 and not run.finished:
                run.timer = _loop.loop().call_later(
                    RUN_GRACE_S, self._finish_if_idle, run
                )

    def _finish_if_idle(self, run: Run) -> None:
        with self._lock:
            idle = self._active == 0 or self._current is not run
        if idle:
            self._finish(run)

    def _finish(self, run: Run) -> None:
        """The run is over: tell ``on_run_end`` once (bar closed, failures reported)."""
        with self._lock:
            if run.finished:
                return
            run.finished = True
        # on the loop, whose batches read and write it (a later callback sees it done)
        _loop.loop().call_soon_threadsafe(run.recent.clear)
        if self.on_end is not None:
            self.on_end(run)

    def finish(self) -> None:
        """End the current run now if nothing is in flight (e.g. before a summary)."""
        run = self._current
        if run is not None and self._active == 0:
            self._finish(run)

    @contextlib.contextmanager
    def scope(self) -> Iterator[Run]:
        """One explicit run: every batch answered inside belongs to it."""
        run = self.enter(new=True)
        try:
            yield run
        finally:
            self.leave(run)

    @contextlib.contextmanager
    def entered(self) -> Iterator[Run]:
        """A batch of the current run (or of a new one), between enter and leave.

        A job-wide error raised inside becomes the run's error (``last_error``).
        """
        run = self.enter()
        try:
            yield run
        except BaseException as exc:
            if run.error is None and isinstance(exc, AzureChatError):
                run.error = exc
            raise
        finally:
            self.leave(run)

    def interrupt(self, reason: str, *, signal: bool = True) -> None:
        """Ctrl-C or SIGTERM (called on the loop, once per signal).

        The first stops admissions and waits up to :data:`STOP_GRACE_S` for the
        answers of the requests in flight (kept in the cache), then cancels the run's
        batches: the threads waiting for them raise :class:`KeyboardInterrupt`. A
        second signal cancels them at once. ``signal=False``: not a signal of its own
        (a thread that met the :class:`KeyboardInterrupt` asks for the first stage;
        the signal that raised it is counted when the wakeup fd reports it).
        """
        run = self._current
        if run is None or self._active == 0:
            return
        if signal:
            run.signals += 1
        if run.interrupted is None:
            run.interrupted = reason
            self._grace(run)
        elif run.signals >= 2:
            self.halt(run, "again")

    def _grace(self, run: Run) -> None:
        """The first stage of a stop: no admissions; wait for what is in flight."""
        run.at_stop = run.in_flight
        if run.in_flight == 0:
            logger.info("%s: stopping the run (nothing in flight)", run.interrupted)
            self.halt(run, "answered")
            return
        run.grace_s = self.stop_grace_s
        logger.warning(
            "%s: no new requests; waiting up to %g s for the answers of the %d in "
            "flight (%s again stops at once)",
            run.interrupted,
            run.grace_s,
            run.in_flight,
            run.interrupted,
        )
        run.on_drained = functools.partial(self.halt, run, "answered")
        run.timer_stop = _loop.loop().call_later(run.grace_s, self.halt, run, "grace")

    def halt(self, run: Run, why: str) -> None:
        """Cancel the run's batches now (on the loop; once): see :attr:`Run.halted`."""
        if run.halted is not None:
            return
        if run.interrupted is None:
            run.interrupted = "Ctrl-C"
        run.halted = why
        run.dropped = run.in_flight
        run.on_drained = None
        if run.timer_stop is not None:
            run.timer_stop.cancel()
        run.stats.stopped = run.stop_note()
        logger.info("%s", run.stats.stopped)
        for future in list(run.futures):
            future.cancel()


def _foreign_thread() -> bool:
    """The calling thread was not started by Python (one of Polars' own threads).

    ``threading`` gives such threads a stand-in object named ``Dummy-N``.
    """
    return threading.current_thread().name.startswith("Dummy-")
