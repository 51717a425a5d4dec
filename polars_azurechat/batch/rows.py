"""Batch mode's rows at the front door, in two passes over a spool. Not meant for outside use.

Online, the front door (:class:`~polars_azurechat.engine.frontdoor.FrontDoor`) holds a
batch of rows in memory while it is answered. Batch mode answers every row of a run as
one set of Azure batches, so it does the door's work in two passes over a
:class:`~polars_azurechat.batch.spool.Spool` instead:

1. :meth:`SpooledRun.add`, batch by batch as the rows are read: null rows, unsendable
   rows, each request's key, duplicates (a key an earlier row asked is a follower),
   cache hits (a typed answer parsed again), the spending cap's hold at the batch
   price (a row that does not fit fails with
   :class:`~polars_azurechat.errors.SpendingCapError`), and each request to send
   with its JSONL line, all written to the spool;
2. the batches (:class:`~polars_azurechat.batch.runner.BatchRunner`) answer the
   spool's requests, and their results go back there;
3. :meth:`SpooledRun.results`, batch by batch again: every row's result, in order,
   counted as the door counts (a follower gets its leader's answer, attempts 0).

Memory follows a batch of rows, never the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from polars_azurechat._types import ChatRequest, ChatResult
from polars_azurechat.batch.spool import BATCH, DOOR, HIT, ONLINE, Spool
from polars_azurechat.errors import AzureChatError
from polars_azurechat.transport import tokens as _tokens

if TYPE_CHECKING:
    from polars_azurechat.batch.mode import BatchCounts
    from polars_azurechat.engine.frontdoor import FrontDoor
    from polars_azurechat.engine.progress import ProgressBar
    from polars_azurechat.engine.runs import RunStats
    from polars_azurechat.summary import SpendingCap

__all__ = ["SpooledRun", "count_batch_answer"]


class SpooledRun:
    """One run of batch mode at the front door, its rows in a spool.

    Parameters
    ----------
    door
        The job's door: its request shape (keys, worst costs) and its cache.
    spool
        Where the rows, requests and results go.
    line
        A request's JSONL line, given its key.
    stats, counts
        The run's counters, and batch mode's.
    cap, bar
        The job's spending cap and progress bar, or ``None``.
    """

    def __init__(
        self,
        door: FrontDoor,
        spool: Spool,
        line: Callable[[str, ChatRequest], bytes],
        *,
        stats: RunStats,
        counts: BatchCounts,
        cap: SpendingCap | None,
        bar: ProgressBar | None,
    ) -> None:
        self.door = door
        self.spool = spool
        self.line = line
        self.stats = stats
        self.counts = counts
        self.cap = cap
        self.bar = bar
        #: requests to send (the leaders not answered at the door)
        self.to_send = 0

    def add(self, requests: Sequence[ChatRequest | None]) -> None:
        """Pass 1: one batch of rows at the door; what is to be sent is spooled."""
        shape, cache, cap, spool = (
            self.door.shape,
            self.door.cache,
            self.cap,
            self.spool,
        )
        if self.bar is not None:
            self.bar.add_total(len(requests))
        first = spool.rows
        rows: list[tuple[str | None, ChatResult | None]] = []
        fresh: dict[str, tuple[int, ChatRequest]] = {}
        for i, req in enumerate(requests):
            if req is None:
                rows.append((None, None))
            elif req.error is not None:
                rows.append((None, ChatResult(exception=req.error)))
            else:
                key = shape.key(req)
                rows.append((key, None))
                if key not in fresh:
                    fresh[key] = (first + i, req)
        for key in spool.known(fresh):  # asked by an earlier batch: followers
            del fresh[key]
        hits: dict[str, ChatResult] = {}
        if cache is not None and fresh:
            hits = shape.parse_cached(cache.get_many(fresh))
        refused: dict[str, ChatResult] = {}
        new: list[tuple[str, int, bytes | None, int, float | None]] = []
        for key, (row, req) in fresh.items():
            if key in hits:
                new.append((key, row, None, 0, None))
                continue
            held = None
            if cap is not None:  # held at the batch price until its answer is known
                worst = shape.worst_cost(req, cap, batch=True)
                error = cap.reserve(worst)
                if error is not None:
                    refused[key] = ChatResult(exception=error)
                    new.append((key, row, None, 0, None))
                    continue
                held = worst
            tokens = _tokens.prompt_tokens(req.messages)
            new.append((key, row, self.line(key, req), tokens, held))
        spool.add_rows(rows)
        spool.add_requests(new)
        spool.put_results(hits, HIT)
        spool.put_results(refused, DOOR)
        self.to_send += len(new) - len(hits) - len(refused)
        if self.bar is not None:
            settled = sum(key is None for key, _ in rows) + len(hits) + len(refused)
            self.bar.update(settled)

    def results(self, first: int, n: int) -> list[ChatResult | None]:
        """Pass 2: rows ``first`` to ``first + n - 1`` with their results, counted."""
        st = self.stats
        out: list[ChatResult | None] = []
        followers = 0
        for row in self.spool.read_rows(first, n):
            r = row.result
            if row.key is None:  # a null row, or one that could not be sent
                if r is None:
                    st.null_rows += 1
                else:
                    st.count(r)
                out.append(r)
                continue
            if r is None:  # pragma: no cover - every request sent gets a result
                msg = "batch mode recorded no result for this request"
                r = ChatResult(exception=AzureChatError(msg))
            if not row.leader:  # the leader's answer, as the door gives it
                r = dataclasses.replace(r, attempts=0)
                st.count(r)
                st.deduplicated += 1
                followers += 1
            elif row.kind == HIT:
                st.count(r)
                st.cached += 1
            elif row.kind == BATCH:
                st.count(r)
                count_batch_answer(st, self.counts, r)
            elif row.kind != ONLINE:  # DOOR; online answers: the engine counted them
                assert row.kind == DOOR  # noqa: S101 - the kinds there are
                st.count(r)
            out.append(r)
        if self.bar is not None and followers:
            self.bar.update(followers)
        return out


def count_batch_answer(st: RunStats, counts: BatchCounts, r: ChatResult) -> None:
    """A batch's answer: its tokens, for the run and for batch mode's counters."""
    st.prompt_tokens += r.prompt_tokens or 0
    st.completion_tokens += r.completion_tokens or 0
    counts.prompt_tokens += r.prompt_tokens or 0
    counts.completion_tokens += r.completion_tokens or 0
    if r.exception is None:
        counts.answered += 1
    if r.model and st.model is None:
        st.model = r.model
