"""Shared-state benchmark: several processes and Ray workers on one quota through Redis.

    python benchmarks/shared.py                  # every scenario (about 5 minutes)
    python benchmarks/shared.py --only processes

Needs ``redis-server`` on the PATH (``apt-get install redis-server``) and, for the
``ray`` scenario, ``pip install "polars-azurechat[ray]"``. The emulator runs in its own
process (sliding 10-s windows); each scenario gets a fresh emulator and Redis.

Scenarios and targets (issue 12's):

- ``processes``: four processes of 300 rows each against one deployment at 200 ms
  latency, each told the deployment's 600 requests per minute, the emulator enforcing
  that quota per 10 s. Sharing it through Redis (``limiter="redis://..."``): combined
  wall at most 1.15x the fastest schedule the quota allows for 1,200 rows, 429s at most
  2% of requests. The same four processes each limiting itself alone, for contrast.
- ``ray``: Ray Data, 2 workers, 2,000 rows, a quota of 6,000 requests per minute
  (enforced per 10 s, 50 ms latency) shared through Redis: every row answered in order,
  429s at most 2%.
- ``cost``: the Redis limiter's own cost: client CPU per request at latency 0 and no
  binding quota, at most 1.5x the local limiter's (20,000 rows each, best of 3).

The fastest schedule is computed from the server's rules (``benchmarks/pool.py``):
requests at the earliest instant when the sliding window has room; the job ends one
latency after its last admission.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import polars as pl
from bench import arithmetic, emulator_process, emulator_stats, verdict
from pool import fastest_schedule

import polars_azurechat as pac
from polars_azurechat.emulator import DEFAULT_API_KEY

DEPLOYMENT = "gpt-4o-mini"


@contextlib.contextmanager
def redis_process() -> Iterator[str]:
    """A fresh ``redis-server`` (no persistence) on a free port; yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [
                *(binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(200):
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait()


def worker(url: str, limiter: str, rows: int, offset: int) -> None:
    """One process's job (run as ``shared.py --worker ...``); prints JSON."""
    df, expected = arithmetic(offset + rows)
    df, expected = df.slice(offset), expected[offset:]
    config = pac.ChatConfig(
        azure_endpoint=url, api_key=DEFAULT_API_KEY, deployment=DEPLOYMENT
    )
    kw = {} if limiter == "local" else {"limiter": limiter}
    with pac.Completer(
        config=config,
        max_tokens=10,
        requests_per_minute=600,
        progress=False,
        max_concurrency=64,
        **kw,
    ) as job:
        out = df.with_columns(answer=job.expr("messages"))
        s = job.summary()
    print(
        json.dumps(
            {
                "correct": out["answer"].to_list() == expected,
                "failed": s.failed,
                "requests": s.requests,
                "rate_limited": s.rate_limited,
            }
        )
    )


def run_processes(url: str, limiter: str, n: int = 4, rows: int = 300) -> dict:
    """``n`` worker processes at once; combined wall and what each reported."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                url,
                limiter,
                str(rows),
                str(k * rows),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for k in range(n)
    ]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    wall = time.perf_counter() - t0
    return {"wall": wall, "workers": outs}


def processes() -> bool:
    fastest = fastest_schedule(1200, {DEPLOYMENT: 600}, slots=4 * 64)
    results = {}
    for label in ("redis", "local"):
        with (
            emulator_process(
                latency_ms=200, requests_per_minute=600, window_s=10
            ) as url,
            redis_process() as redis_url,
        ):
            emulator_stats(url, reset=True)
            got = run_processes(url, redis_url if label == "redis" else "local")
            stats = emulator_stats(url)
        n429 = stats["statuses"].get("429", 0)
        failed = sum(w["failed"] for w in got["workers"])
        correct = all(w["correct"] for w in got["workers"])
        results[label] = (got["wall"], stats["requests"], n429, failed, correct)
        print(
            f"4 processes, {'shared through Redis' if label == 'redis' else 'each alone':22}"
            f" requests {stats['requests']:5}  429s {n429:4} "
            f"({n429 / max(1, stats['requests']):.1%})  rows failed {failed}  "
            f"wall {got['wall']:6.1f} s  fastest {fastest:6.1f} s  "
            f"ratio {got['wall'] / fastest:.3f}  correct {correct}",
            flush=True,
        )
    wall, requests, n429, failed, correct = results["redis"]
    ok = verdict(
        "processes: wall / fastest", wall / fastest, "<= 1.15", wall / fastest <= 1.15
    )
    ok &= verdict(
        "processes: 429s / requests",
        n429 / requests,
        "<= 0.02",
        n429 <= 0.02 * requests,
    )
    ok &= verdict("processes: rows failed", failed, "0", failed == 0)
    return ok & verdict("processes: every row right", float(correct), "1", correct)


def ray_scenario() -> bool:
    try:
        import ray
    except ImportError:
        print("ray: not installed (pip install 'polars-azurechat[ray]'): skipped")
        return False
    import polars_azurechat.ray as pac_ray

    n = 2000
    rows = [{"id": i, "q": f"What is {i} + 7?"} for i in range(n)]
    with (
        emulator_process(latency_ms=50, requests_per_minute=6000, window_s=10) as url,
        redis_process() as redis_url,
    ):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            config = pac.ChatConfig(
                azure_endpoint=url, api_key=DEFAULT_API_KEY, deployment=DEPLOYMENT
            )
            t0 = time.perf_counter()
            out = pac_ray.complete(
                ray.data.from_items(rows),
                column="q",
                config=config,
                workers=2,
                batch_size=250,
                max_tokens=5,
                requests_per_minute=6000,
                limiter=redis_url,
                cache=redis_url,
            ).take_all()
            wall = time.perf_counter() - t0
        finally:
            ray.shutdown()
        stats = emulator_stats(url)
    n429 = stats["statuses"].get("429", 0)
    correct = len(out) == n and all(r["answer"] == str(r["id"] + 7) for r in out)
    fastest = fastest_schedule(n, {DEPLOYMENT: 6000}, latency=0.05, slots=128)
    print(
        f"ray, 2 workers: rows {len(out)}  requests {stats['requests']}  429s {n429} "
        f"({n429 / max(1, stats['requests']):.1%})  wall {wall:.1f} s "
        f"(fastest {fastest:.1f} s, Ray start-up included)  correct {correct}"
    )
    ok = verdict(
        "ray: 429s / requests",
        n429 / stats["requests"],
        "<= 0.02",
        n429 <= 0.02 * stats["requests"],
    )
    return ok & verdict(
        "ray: every row answered, aligned", float(correct), "1", correct
    )


def _cpu_per_request(url: str, limiter: str | None, n: int) -> float:
    df, expected = arithmetic(n)
    config = pac.ChatConfig(
        azure_endpoint=url, api_key=DEFAULT_API_KEY, deployment=DEPLOYMENT
    )
    kw = {} if limiter is None else {"limiter": limiter}
    with pac.Completer(config=config, max_tokens=10, progress=False, **kw) as job:
        job.run(["warm up"])
        before = resource.getrusage(resource.RUSAGE_SELF)
        out = df.with_columns(answer=job.expr("messages"))
        after = resource.getrusage(resource.RUSAGE_SELF)
    assert out["answer"].to_list() == expected
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu / n * 1000


def cost() -> bool:
    n = 20_000
    best: dict[str, float] = {}
    with emulator_process() as url, redis_process() as redis_url:
        for _ in range(3):
            for label, limiter in (("local", None), ("redis", redis_url)):
                ms = _cpu_per_request(url, limiter, n)
                best[label] = min(best.get(label, float("inf")), ms)
    ratio = best["redis"] / best["local"]
    print(
        f"client CPU per request, {n:,} rows, latency 0 (best of 3): local limiter "
        f"{best['local']:.3f} ms, Redis limiter {best['redis']:.3f} ms, ratio {ratio:.2f}"
    )
    return verdict("cost: Redis / local CPU per request", ratio, "<= 1.5", ratio <= 1.5)


#: When each job of the ``staggered`` scenario starts (seconds after the first), and
#: how it runs: an expression in a Python process, or a CLI run.
STAGGER = ((0.0, "expr"), (1.5, "cli"), (3.0, "expr"), (4.5, "cli"))
#: Targets per limiter: (429s / requests, wall / fastest schedule).
STAGGER_TARGETS = {"local": (0.10, 1.3), "redis": (0.02, 1.3)}


def _start_job(
    kind: str, url: str, limiter: str, rows: int, offset: int, workdir: Path
) -> subprocess.Popen[str]:
    """One job of the ``staggered`` scenario, started now."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "AZURE_OPENAI_ENDPOINT": url,
        "AZURE_OPENAI_API_KEY": DEFAULT_API_KEY,
        "AZURE_OPENAI_DEPLOYMENT": DEPLOYMENT,
    }
    if kind == "expr":
        args = [__file__, "--worker", url, limiter, str(rows), str(offset)]
    else:
        df, _ = arithmetic(offset + rows)
        df.slice(offset).write_parquet(workdir / f"in-{offset}.parquet")
        args = [
            *("-m", "polars_azurechat", "run"),
            *(
                str(workdir / f"in-{offset}.parquet"),
                str(workdir / f"out-{offset}.parquet"),
            ),
            *("--max-tokens", "10", "--requests-per-minute", "600", "--no-progress"),
            *([] if limiter == "local" else ["--limiter", limiter]),
        ]
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _rows_lost(
    kind: str,
    proc: subprocess.Popen[str],
    out: str,
    rows: int,
    offset: int,
    workdir: Path,
) -> int:
    """Rows of one job without their right answer (all of them if it did not finish)."""
    _, expected = arithmetic(offset + rows)
    expected = expected[offset:]
    if proc.returncode is None or proc.returncode < 0:
        return rows  # stopped
    if kind == "expr":
        lines = out.strip().splitlines()
        if not lines:
            return rows
        got = json.loads(lines[-1])
        return 0 if got["correct"] else max(1, got["failed"])
    path = workdir / f"out-{offset}.parquet"
    if not path.exists():
        return rows
    answers = pl.read_parquet(path)["answer"].to_list()
    return sum(a != e for a, e in zip(answers, expected, strict=True))


def run_staggered(url: str, limiter: str, rows: int, stop_after: float) -> dict:
    """The four jobs of :data:`STAGGER`; stopped at ``stop_after`` s if not done."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        procs: list[tuple[str, int, subprocess.Popen[str]]] = []
        t0 = time.perf_counter()
        for k, (at, kind) in enumerate(STAGGER):
            time.sleep(max(0.0, t0 + at - time.perf_counter()))
            procs.append(
                (
                    kind,
                    k * rows,
                    _start_job(kind, url, limiter, rows, k * rows, workdir),
                )
            )
        lost, stopped = 0, 0
        for kind, offset, proc in procs:
            try:
                out, _ = proc.communicate(
                    timeout=max(0.1, t0 + stop_after - time.perf_counter())
                )
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                stopped += 1
            lost += _rows_lost(kind, proc, out, rows, offset, workdir)
        wall = time.perf_counter() - t0
    return {"wall": wall, "lost": lost, "stopped": stopped}


def staggered() -> bool:
    """Four jobs (two expressions, two CLI runs) starting 1.5 s apart on one quota."""
    rows = 300
    n = rows * len(STAGGER)
    fastest = fastest_schedule(n, {DEPLOYMENT: 600}, slots=len(STAGGER) * 64)
    ok = True
    for label in ("local", "redis"):
        with (
            emulator_process(
                latency_ms=200, requests_per_minute=600, window_s=10
            ) as url,
            redis_process() as redis_url,
        ):
            emulator_stats(url, reset=True)
            got = run_staggered(
                url, redis_url if label == "redis" else "local", rows, 4 * fastest
            )
            stats = emulator_stats(url)
        n429 = stats["statuses"].get("429", 0)
        share, ratio = n429 / max(1, stats["requests"]), got["wall"] / fastest
        name = "shared through Redis" if label == "redis" else "no Redis"
        print(
            f"4 jobs 1.5 s apart, {name:20} requests {stats['requests']:5}  "
            f"429s {n429:4} ({share:.1%})  rows lost {got['lost']}  stopped "
            f"{got['stopped']}  wall {got['wall']:6.1f} s  fastest {fastest:6.1f} s "
            f"(rows / rate {n / 10:.0f} s)  ratio {ratio:.3f}",
            flush=True,
        )
        most_429, most_wall = STAGGER_TARGETS[label]
        ok &= verdict(
            f"staggered, {name}: 429s / requests",
            share,
            f"<= {most_429}",
            share <= most_429,
        )
        ok &= verdict(
            f"staggered, {name}: rows lost", got["lost"], "0", got["lost"] == 0
        )
        ok &= verdict(
            f"staggered, {name}: wall / fastest",
            ratio,
            f"<= {most_wall}",
            ratio <= most_wall,
        )
    return ok


SCENARIOS: dict[str, Callable[[], bool]] = {
    "processes": processes,
    "staggered": staggered,
    "ray": ray_scenario,
    "cost": cost,
}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, url, limiter, rows, offset = sys.argv
        worker(url, limiter, int(rows), int(offset))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", nargs="*", choices=sorted(SCENARIOS), default=list(SCENARIOS)
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    results = {name: SCENARIOS[name]() for name in args.only}
    print("\n## summary")
    for name, ok in results.items():
        print(f"{name:10} {'MET' if ok else 'MISSED'}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
