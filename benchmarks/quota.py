"""Quota benchmark: chat.complete() under the windows the server enforces, in one run.

    python benchmarks/quota.py                   # every scenario (6-7 minutes)
    python benchmarks/quota.py --only r1 wrongkey
    python benchmarks/quota.py --quick           # smoke test (about 1 minute)

The emulator runs in its own process, with 200 ms latency and sliding windows; every run
gets a fresh emulator process (empty windows, zeroed counters). The client is a
``Completer`` with ``max_concurrency=100``; its summary tells the budgets and windows it
learned (or was given), printed beside the true ones.

Scenarios and targets (the issue's):

- ``r10t10``, ``r10t60``, ``r1``: three window models (requests/10 s + tokens/10 s;
  requests/10 s + tokens/60 s; requests/1 s), each run twice: with no quota given
  (429s <= 3% of requests, wall <= 1.1x the fastest schedule) and with the quota given
  (``requests_per_minute=`` / ``tokens_per_minute=``: 429s <= 1%, wall <= 1.05x);
- ``tokenbound``: ``max_tokens=1000`` under requests/10 s (generous) + tokens/60 s, the
  quota given: wall <= 1.15x the fastest schedule;
- ``small``: 300 rows at 60 RPM counted per 10 s, no quota given: 429s <= 3%, wall
  <= 1.1x the fastest schedule (about 5 minutes: 30 windows);
- ``wrongkey``: a wrong key against an emulator with a quota, 500 rows: at most 2
  requests reach the server (no quota given, and quota given).

Every run must also answer every row correctly.

The fastest schedule is computed from the server's own rules, not measured: requests go
in row order, each at the earliest instant when (a) one of the 100 concurrency slots is
free (a slot is busy for one latency), (b) the sliding request window holds fewer than
its budget, and (c) the sliding token window has room for the request's charge (the
emulator's own estimate: ``estimator("chars").prompt(...) + max_tokens``; a charge
larger than a whole budget goes only into an empty window). The job ends one latency
after its last admission. With a uniform cost this is the closed form
``max((ceil(n / B) - 1) * W + latency`` over each window of budget ``B`` per ``W`` s, and
``ceil(n / 100) * latency)``, when one constraint binds alone; the greedy simulation also
gets the mixed cases (a request window binding first, then a token window) right, and
prints each constraint alone beside it. Greedy earliest admission is optimal here: with
one latency for all, admitting earlier never delays a later admission.

``--quick`` shrinks the row counts so that no 60-s token window binds: the figures it
prints are a smoke test, NOT the real benchmark.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench
from bench import arithmetic, emulator_process, emulator_stats, verdict

import polars_azurechat
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import DEFAULT_API_KEY
from polars_azurechat.emulator._tokens import estimator
from polars_azurechat.errors import AuthenticationError
from polars_azurechat.transport.tokens import request_tokens

LATENCY_S = 0.2
CONCURRENCY = 100
PAD = "Consider the following carefully. " * 4  # ~34 more prompt tokens
BANNER = "QUICK MODE: smaller row counts; smoke-test figures, NOT the real benchmark"
#: Slack the emulator allows for float noise (a charge leaves at exactly its time).
EPS = 1e-6


def size(full: int, quick: int) -> int:
    return bench.size(full, quick)


# -- the fastest schedule the server allows -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Limit:
    """One sliding window the server enforces: ``budget`` units per ``length`` s."""

    resource: str  # "requests" or "tokens"
    length: float
    budget: int

    def __str__(self) -> str:
        return f"{self.budget:,}/{self.length:g}s"


def budget_per_window(per_minute: float, length: float) -> int:
    """The emulator's budget per window (``_quota.Quota.reset``)."""
    return max(1, int(per_minute * length / 60 + 1e-9))


def fastest_schedule(
    costs: Sequence[int], limits: Sequence[Limit], latency: float, concurrency: int
) -> float:
    """Earliest end of a job whose requests cost ``costs`` tokens, under ``limits``."""
    sends: list[float] = []
    charges: list[collections.deque[tuple[float, int]]] = [
        collections.deque() for _ in limits
    ]
    used = [0] * len(limits)
    t = 0.0
    for i, cost in enumerate(costs):
        if i >= concurrency:  # sends are in order: slot i frees with request i - conc
            t = max(t, sends[i - concurrency] + latency)
        while True:
            later = t
            for j, lim in enumerate(limits):
                q = charges[j]
                while q and q[0][0] + lim.length <= t + EPS:
                    used[j] -= q.popleft()[1]
                c = 1 if lim.resource == "requests" else cost
                if used[j] == 0 or used[j] + c <= lim.budget:
                    continue
                u = used[j]
                for sent, charged in q:  # the charge whose leaving makes room
                    u -= charged
                    if u == 0 or u + c <= lim.budget:
                        later = max(later, sent + lim.length)
                        break
            if later <= t:
                break
            t = later
        sends.append(t)
        for j, lim in enumerate(limits):
            c = 1 if lim.resource == "requests" else cost
            charges[j].append((t, c))
            used[j] += c
    return max(sends) + latency if sends else 0.0


# -- one run -------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    scenario: str
    quota: str  # "none" or "given"
    rows: int
    requests: int
    n429: int
    wall: float
    fastest: float
    learned_req: str
    learned_tok: str
    true_req: str
    true_tok: str
    correct: bool

    @property
    def share(self) -> float:
        return self.n429 / max(1, self.requests)

    @property
    def ratio(self) -> float:
        return self.wall / self.fastest


HEADER = (
    f"{'scenario':10} {'quota':5} {'rows':>5} {'reqs':>5} {'429s':>5} {'429 %':>6} "
    f"{'wall s':>7} {'fast s':>7} {'ratio':>6}  {'req learned':>12} {'(true)':>10}  "
    f"{'tok learned':>13} {'(true)':>13}  ok"
)


def row_line(r: Run) -> str:
    return (
        f"{r.scenario:10} {r.quota:5} {r.rows:5d} {r.requests:5d} {r.n429:5d} "
        f"{100 * r.share:5.1f}% {r.wall:7.2f} {r.fastest:7.2f} {r.ratio:6.3f}  "
        f"{r.learned_req:>12} {r.true_req:>10}  {r.learned_tok:>13} {r.true_tok:>13}"
        f"  {r.correct}"
    )


def learned(per_minute: float | None, window: float | None) -> str:
    """A per-minute budget and its window, as a budget per window."""
    if per_minute is None:
        return "-"
    if window is None:
        return f"{per_minute:,.0f}/min"
    return f"{per_minute * window / 60:,.0f}/{window:g}s"


def server_costs(df: pl.DataFrame, max_tokens: int) -> list[int]:
    """What the emulator charges each row: its prompt estimate plus ``max_tokens``."""
    est = estimator("chars")
    return [
        est.prompt([(m["role"], m["content"]) for m in msgs]) + max_tokens
        for msgs in df["messages"].to_list()
    ]


def client_costs(df: pl.DataFrame, max_tokens: int) -> list[int]:
    """What the client estimates for each row (tiktoken, when a token budget is set)."""
    return [request_tokens(msgs, max_tokens) for msgs in df["messages"].to_list()]


def describe_costs(df: pl.DataFrame, max_tokens: int) -> None:
    server, client = server_costs(df, max_tokens), client_costs(df, max_tokens)
    print(
        f"tokens per request: the server charges {min(server)}-{max(server)} "
        f"(mean {sum(server) / len(server):.1f}); the client estimates "
        f"{min(client)}-{max(client)} (mean {sum(client) / len(client):.1f})"
    )


def print_fastest(
    costs: list[int], limits: list[Limit], fastest: float, n: int
) -> None:
    alone = [
        f"{lim.resource} {lim} alone "
        f"{fastest_schedule(costs, [lim], LATENCY_S, CONCURRENCY):.2f} s"
        for lim in limits
    ]
    waves = math.ceil(n / CONCURRENCY) * LATENCY_S
    print(
        f"fastest schedule {fastest:.2f} s ({'; '.join(alone)}; "
        f"{CONCURRENCY}-wide waves {waves:.2f} s)"
    )


def run_once(
    scenario: str,
    df: pl.DataFrame,
    expected: list[str],
    max_tokens: int,
    emu: dict[str, Any],
    given: dict[str, float],
    limits: list[Limit],
    fastest: float,
) -> Run:
    """One collect against a fresh emulator; the quota ``given`` to the client or not."""
    true = {lim.resource: str(lim) for lim in limits}
    with emulator_process(latency_ms=LATENCY_S * 1000, **emu) as url:
        cfg = ChatConfig(
            azure_endpoint=url, api_key=DEFAULT_API_KEY, deployment=bench.DEPLOYMENT
        )
        emulator_stats(url, reset=True)
        with polars_azurechat.Completer(
            config=cfg,
            max_tokens=max_tokens,
            max_concurrency=CONCURRENCY,
            progress=False,
            **given,
        ) as job:
            t0 = time.perf_counter()
            out = df.with_columns(answer=job.expr("messages"))
            wall = time.perf_counter() - t0
            s = job.summary()
        stats = emulator_stats(url)
    run = Run(
        scenario=scenario,
        quota="given" if given else "none",
        rows=df.height,
        requests=stats["requests"],
        n429=stats["statuses"].get("429", 0),
        wall=wall,
        fastest=fastest,
        learned_req=learned(s.requests_per_minute_quota, s.request_window_s),
        learned_tok=learned(s.tokens_per_minute_quota, s.token_window_s),
        true_req=true.get("requests", "-"),
        true_tok=true.get("tokens", "-"),
        correct=out["answer"].to_list() == expected,
    )
    if s.requests != run.requests or s.rate_limited != run.n429:
        print(
            f"  (the job counted {s.requests} requests, {s.rate_limited} rate-limited)"
        )
    print(row_line(run), flush=True)
    RUNS.append(run)
    return run


RUNS: list[Run] = []


def judge(run: Run, max_share: float | None, max_ratio: float) -> bool:
    ok = True
    if max_share is not None:
        ok &= verdict(
            f"{run.scenario} quota {run.quota}: 429s / requests",
            run.share,
            f"<= {max_share:.0%}",
            run.share <= max_share,
        )
    ok &= verdict(
        f"{run.scenario} quota {run.quota}: wall / fastest {run.fastest:.2f} s, "
        "all correct",
        run.ratio,
        f"<= {max_ratio:g}",
        run.ratio <= max_ratio and run.correct,
    )
    return ok


# -- the window models ---------------------------------------------------------------------


def window_model(
    name: str,
    title: str,
    df: pl.DataFrame,
    expected: list[str],
    rpm: float,
    request_window: float,
    tpm: float | None,
    token_window: float | None,
    runs: Sequence[tuple[bool, float, float]] = (
        (False, 0.03, 1.1),
        (True, 0.01, 1.05),
    ),
) -> bool:
    """Run ``df`` under the windows; ``runs``: (quota given, max 429 share, max ratio)."""
    max_tokens = 20
    n = df.height
    emu: dict[str, Any] = {
        "requests_per_minute": rpm,
        "request_window_s": request_window,
    }
    given: dict[str, float] = {"requests_per_minute": rpm}
    limits = [Limit("requests", request_window, budget_per_window(rpm, request_window))]
    if tpm is not None and token_window is not None:
        emu |= {"tokens_per_minute": tpm, "token_window_s": token_window}
        given["tokens_per_minute"] = tpm
        limits.append(
            Limit("tokens", token_window, budget_per_window(tpm, token_window))
        )
    costs = server_costs(df, max_tokens)
    fastest = fastest_schedule(costs, limits, LATENCY_S, CONCURRENCY)
    print(f"\n## {name}: {title}")
    print(
        f"{n} rows, latency {LATENCY_S * 1000:.0f} ms, concurrency {CONCURRENCY}, "
        f"max_tokens {max_tokens}; emulator windows: "
        + ", ".join(f"{lim.resource} {lim}" for lim in limits)
        + f" (RPM {rpm:,.0f}"
        + (f", TPM {tpm:,.0f})" if tpm else ")")
    )
    describe_costs(df, max_tokens)
    print_fastest(costs, limits, fastest, n)
    print(HEADER)
    ok = True
    for quota_given, max_share, max_ratio in runs:
        run = run_once(
            name,
            df,
            expected,
            max_tokens,
            emu,
            given if quota_given else {},
            limits,
            fastest,
        )
        ok &= judge(run, max_share, max_ratio)
    return ok


def r10t10() -> bool:
    # Half plain rows (~31 tokens each), half padded (~65): on the plain ones the
    # request window binds (100 per 10 s, 3,100 tokens), on the padded ones the token
    # window does (4,800 tokens per 10 s: 73 of them).
    half = size(150, 75)
    plain, e1 = arithmetic(half)
    padded, e2 = arithmetic(half, PAD)
    df = pl.concat([plain, padded])
    return window_model(
        "r10t10",
        "requests/10 s + tokens/10 s (plain rows bound by requests, padded by tokens)",
        df,
        e1 + e2,
        rpm=600,
        request_window=10,
        tpm=4800 * 6,
        token_window=10,
    )


def r10t60() -> bool:
    # 100 requests per 10 s, and 250 requests' tokens per minute: the request window
    # binds first (100 at 0 s, 100 at 10 s, 50 at 20 s), then the token window (the
    # last 50 wait for the first 100 to leave it at 60 s). --quick stays under it.
    n = size(300, 150)
    df, expected = arithmetic(n)
    cost = max(server_costs(df, 20))
    return window_model(
        "r10t60",
        "requests/10 s + tokens/60 s (requests bind first, then tokens)",
        df,
        expected,
        rpm=600,
        request_window=10,
        tpm=250 * cost,
        token_window=60,
    )


def r1() -> bool:
    n = size(300, 40)
    df, expected = arithmetic(n)
    return window_model(
        "r1",
        "requests/1 s (10 per second), no token quota",
        df,
        expected,
        rpm=600,
        request_window=1,
        tpm=None,
        token_window=None,
    )


def small() -> bool:
    """A small deployment: 60 requests a minute, counted per 10 s (10 per window).

    Slow start is a ramp (admissions double every 5 ms until the first answer): a
    short or latency-bound job starts at full speed, yet the burst into a small quota
    it does not know stays small, because the server answers a 429 at once.
    """
    n = size(300, 40)
    df, expected = arithmetic(n)
    return window_model(
        "small",
        "requests/10 s, 60 RPM (10 per window), quota not given",
        df,
        expected,
        rpm=60,
        request_window=10,
        tpm=None,
        token_window=None,
        runs=((False, 0.03, 1.1),),
    )


def tokenbound() -> bool:
    """``max_tokens=1000``: ~59 requests per minute fit the 60,000-TPM token window."""
    max_tokens, rpm, tpm = 1000, 6000, 60_000
    probe, _ = arithmetic(1)
    per_minute = budget_per_window(tpm, 60) // max(server_costs(probe, max_tokens))
    n = size(per_minute + per_minute // 2, per_minute // 2)
    df, expected = arithmetic(n)
    limits = [
        Limit("requests", 10, budget_per_window(rpm, 10)),
        Limit("tokens", 60, budget_per_window(tpm, 60)),
    ]
    costs = server_costs(df, max_tokens)
    fastest = fastest_schedule(costs, limits, LATENCY_S, CONCURRENCY)
    print(
        "\n## tokenbound: max_tokens=1000 under requests/10 s + tokens/60 s, quota given"
    )
    print(
        f"{n} rows, latency {LATENCY_S * 1000:.0f} ms, concurrency {CONCURRENCY}; "
        f"emulator RPM {rpm:,} (requests {limits[0]}), TPM {tpm:,} (tokens "
        f"{limits[1]}): {per_minute} requests per minute"
    )
    describe_costs(df, max_tokens)
    print_fastest(costs, limits, fastest, n)
    print(HEADER)
    run = run_once(
        "tokenbound",
        df,
        expected,
        max_tokens,
        {
            "requests_per_minute": rpm,
            "tokens_per_minute": tpm,
            "request_window_s": 10,
            "token_window_s": 60,
        },
        {"requests_per_minute": rpm, "tokens_per_minute": tpm},
        limits,
        fastest,
    )
    print(f"  429s / requests: {run.share:.1%} (no target)")
    return judge(run, None, 1.15)


def wrongkey() -> bool:
    n = size(500, 100)
    df, _ = arithmetic(n)
    emu = {"requests_per_minute": 600, "tokens_per_minute": 60_000}
    print(f"\n## wrongkey: {n} rows, a wrong key; emulator RPM 600, TPM 60,000 (10 s)")
    ok = True
    for given in ({}, {"requests_per_minute": 600, "tokens_per_minute": 60_000}):
        label = "quota given" if given else "no quota given"
        with emulator_process(latency_ms=LATENCY_S * 1000, **emu) as url:
            cfg = ChatConfig(
                azure_endpoint=url, api_key="not-the-key", deployment=bench.DEPLOYMENT
            )
            with polars_azurechat.Completer(
                config=cfg,
                max_tokens=20,
                max_concurrency=CONCURRENCY,
                progress=False,
                **given,
            ) as job:
                t0 = time.perf_counter()
                try:
                    df.with_columns(answer=job.expr("messages"))
                    raised = "nothing"
                except Exception as exc:
                    raised = type(exc).__name__
                wall = time.perf_counter() - t0
                original = job.last_error
            stats = emulator_stats(url)
        print(
            f"{label}: raised {raised} (the job's error: "
            f"{type(original).__name__ if original else None}) after {wall:.2f} s; "
            f"the server saw {stats['requests']} requests {stats['statuses']}"
        )
        ok &= verdict(
            f"wrongkey {label}: requests the server saw, AuthenticationError raised",
            stats["requests"],
            "<= 2",
            stats["requests"] <= 2 and isinstance(original, AuthenticationError),
        )
    return ok


SCENARIOS: dict[str, Callable[[], bool]] = {
    "r10t10": r10t10,
    "r10t60": r10t60,
    "r1": r1,
    "small": small,
    "tokenbound": tokenbound,
    "wrongkey": wrongkey,
}


def warm_up() -> None:
    """First use in this process (lazy imports, tiktoken) outside any timed run."""
    df, _ = arithmetic(20)
    t0 = time.perf_counter()
    with emulator_process() as url:
        bench.run_complete(url, df, 20, 10, tokens_per_minute=10**9)
    print(
        f"warm-up (imports, tiktoken, first emulator): {time.perf_counter() - t0:.2f} s"
    )


def _children() -> list[int]:
    """PIDs of this process's children (Linux ``/proc``; empty elsewhere)."""
    me, out = os.getpid(), []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = entry.read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            out.append(int(entry.parent.name))
    return out


def _on_sigterm(signum: int, frame: object) -> None:
    """Killed: stop the emulator processes this run started, then exit.

    Python would not run the ``finally`` of ``emulator_process`` (the main thread may
    be inside a Polars collect), and the emulators would outlive the benchmark.
    """
    for pid in _children():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    os._exit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", nargs="*", choices=sorted(SCENARIOS), default=list(SCENARIOS)
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller row counts for a smoke test (the figures are not the real ones)",
    )
    args = parser.parse_args()
    bench.QUICK = args.quick
    if args.quick:
        print(f"## {BANNER}")
    t0 = time.perf_counter()
    warm_up()
    results = {name: SCENARIOS[name]() for name in args.only}
    if RUNS:
        print("\n## table" + (f" ({BANNER})" if args.quick else ""))
        print(HEADER)
        for run in RUNS:
            print(row_line(run))
    print("\n## summary" + (f" ({BANNER})" if args.quick else ""))
    for name, ok in results.items():
        print(f"{name:10} {'MET' if ok else 'MISSED'}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
