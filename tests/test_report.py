"""The run report: the timeline sampled while a run goes on, the summary as a table,
the figure, the HTML file (``job.report(path)``, ``run --report``), the message without
matplotlib, and the progress bar a notebook shows (a real Jupyter kernel)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

import polars_azurechat as pac
from polars_azurechat.cli import app
from polars_azurechat.emulator import Emulator
from polars_azurechat.engine import timeline as tl_module
from polars_azurechat.engine.timeline import COLUMNS, Timeline

SECRET = "sk-report-secret-7f3a9c"
#: rows whose first request the emulator refuses with a 429 (``[emu:429*1]``)
SCRIPTED_429 = (3, 17, 29)


def _questions(n: int) -> list[str]:
    return [
        f"What is {i} + 1?" + (" [emu:429*1]" if i in SCRIPTED_429 else "")
        for i in range(n)
    ]


def _emulator() -> Emulator:
    # a 1-s request window (the limiter learns it) and three scripted 429s
    return Emulator(
        api_key=SECRET,
        latency_ms=5,
        retry_after_ms=20,
        requests_per_minute=3000,
        window_s=1.0,
    )


def _job(emu: Emulator, **kw: Any) -> pac.Completer:
    config = pac.ChatConfig(
        azure_endpoint=emu.url, api_key=emu.api_key, deployment="gpt-4o-mini"
    )
    job = pac.Completer(config=config, max_tokens=20, max_concurrency=8, **kw)
    job.engine.runs.sample_s = 0.01  # many points from a short run
    return job


def test_a_run_is_sampled_and_its_last_point_is_the_summary() -> None:
    with _emulator() as emu, _job(emu) as job:
        answers = job.run(_questions(60))
        s = job.summary(last_run=True)
        stats = emu.stats()
    assert answers == [str(i + 1) for i in range(60)]
    assert stats["statuses"]["429"] == len(SCRIPTED_429)
    tl = s.timeline
    assert tl is not None
    assert len(tl) >= 3  # the start, at least one tick, the end
    assert tl.t_s == sorted(tl.t_s)
    assert tl.t_s[-1] == pytest.approx(s.wall_s, abs=0.05)
    first = {c: tl.series[c][0] for c in COLUMNS}
    assert first == dict.fromkeys(COLUMNS, 0)
    last = {c: tl.series[c][-1] for c in COLUMNS}
    assert last == {
        "rows_done": s.answered + s.failed,
        "failed": 0,
        "requests": s.requests,
        "retries": s.retries,
        "rate_limited": s.rate_limited,
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "in_flight": 0,
    }
    # what the emulator counted, not what the client believes
    assert s.requests == stats["requests"] == 63
    assert s.rate_limited == len(SCRIPTED_429)
    per = tl.deployments["gpt-4o-mini"]
    assert per["requests"][-1] == s.requests
    assert per["rate_limited"][-1] == len(SCRIPTED_429)
    assert per["requests_per_minute_quota"][-1] == s.requests_per_minute_quota
    # cumulative counters never go back
    for c in ("rows_done", "requests", "rate_limited", "prompt_tokens"):
        assert tl.series[c] == sorted(tl.series[c]), c
    frame = tl.frame()
    assert frame.height == len(tl)
    assert frame["gpt-4o-mini/requests"][-1] == 63


def test_the_report_draws_429s_the_quota_and_the_cost(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with _emulator() as emu, _job(emu) as job:
        job.run(_questions(60))
        fig = job.report(tmp_path / "report.html")
        s = job.summary(last_run=True)
    progress, rates = fig.axes[:2]
    assert [a.get_title() for a in fig.axes[:3]] == [
        "rows and requests",
        "requests per minute, by deployment",
        "tokens and cost",
    ]
    labels = progress.get_legend_handles_labels()[1]
    assert "429s (3)" in labels and "retries (3)" in labels
    rate_labels = rates.get_legend_handles_labels()[1]
    assert "gpt-4o-mini: quota" in rate_labels
    assert "gpt-4o-mini: 429s" in rate_labels
    (quota_line,) = [ln for ln in rates.get_lines() if ln.get_label().endswith("quota")]
    quota_y = list(quota_line.get_ydata())  # type: ignore[arg-type]
    assert quota_y[-1] == pytest.approx(s.requests_per_minute_quota)
    assert "cost" in [ln.get_label() for ax in fig.axes[3:] for ln in ax.get_lines()]
    assert "60 of 60 rows answered, 63 requests, 3 429s" in fig.get_suptitle()
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert '<table class="polars-azurechat-summary">' in page
    assert "<svg" in page and "</svg>" in page
    assert "63 (3 retried, 3 rate-limited)" in page  # the summary's requests line
    assert SECRET not in page and "What is" not in page  # no key, no prompt


def test_a_summary_shows_as_a_table() -> None:
    with _emulator() as emu, _job(emu) as job:
        job.run(_questions(5))
        s = job.summary()
    table = s._repr_html_()
    assert table == s.to_html()
    assert table.startswith('<table class="polars-azurechat-summary">')
    lines = str(s).splitlines()
    assert table.count("<tr>") == len(lines)
    assert '<th style="text-align:left">rows</th>' in table
    assert "5 (5 answered, 0 failed, 0 null; 0 from cache, 0 deduplicated)" in table
    assert SECRET not in table
    assert "timeline" not in s.as_dict()  # the plain dict holds the counts only


def test_a_summary_of_several_runs_draws_nothing_and_says_why() -> None:
    pytest.importorskip("matplotlib")
    with _emulator() as emu, _job(emu) as job:
        job.run(_questions(4))
        assert job.summary().timeline is not None  # one run so far
        job.run(["What is 7 + 1?", "What is 8 + 1?"])
        both, last = job.summary(), job.summary(last_run=True)
    assert both.timeline is None
    with pytest.raises(ValueError, match=r"summary\(last_run=True\)\.plot\(\)"):
        both.plot()
    assert last.timeline is not None
    assert last.timeline.series["rows_done"][-1] == 2
    assert last.plot().axes


def test_a_full_timeline_keeps_its_span_at_a_coarser_step() -> None:
    tl = Timeline(interval_s=0.25)
    zero = dict.fromkeys(COLUMNS, 0)
    n = tl_module.MAX_POINTS * 3
    for i in range(n):
        tl.add(i * 0.25, {**zero, "requests": i}, {"d": {"requests": i}})
    assert tl_module.MAX_POINTS // 2 <= len(tl) < tl_module.MAX_POINTS
    assert tl.t_s[0] == 0.0
    assert tl.interval_s == 1.0  # thinned twice
    assert tl.series["requests"] == tl.deployments["d"]["requests"]
    steps = {round(b - a, 6) for a, b in zip(tl.t_s, tl.t_s[1:], strict=False)}
    assert min(steps) >= 0.5 and max(steps) <= 1.0  # the span, at a coarser step
    assert tl.series["requests"][-1] >= n - 1 - 4


def _write_questions(path: Path, n: int) -> None:
    pl.DataFrame({"q": _questions(n)}).write_parquet(path)


def test_cli_run_writes_the_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    src, out, report = (
        tmp_path / "q.parquet",
        tmp_path / "a.parquet",
        tmp_path / "r.html",
    )
    _write_questions(src, 40)
    with _emulator() as emu:
        result = CliRunner().invoke(
            app,
            [
                "run", str(src), str(out), "--column", "q", "--no-progress",
                "--max-tokens", "20", "--report", str(report),
            ],
            env=emu.env(),
        )  # fmt: skip
        stats = emu.stats()
    assert result.exit_code == 0, result.output
    assert f"wrote the run report to {report}" in result.output
    page = report.read_text()
    assert "40 (40 answered, 0 failed, 0 null;" in page
    assert f"{stats['requests']} (3 retried, 3 rate-limited)" in page
    assert "<svg" in page
    assert SECRET not in page


_NO_MATPLOTLIB = """
import sys
sys.modules["matplotlib"] = None  # as if it were not installed
import polars_azurechat as pac
from polars_azurechat.emulator import Emulator
with Emulator() as emu:
    config = pac.ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key,
                            deployment="gpt-4o-mini")
    with pac.Completer(config=config, max_tokens=20) as job:
        print(job.run(["What is 1 + 1?"]))
        s = job.summary()
        print(s._repr_html_().startswith("<table"))  # the table needs no matplotlib
        try:
            job.report()
        except ImportError as exc:
            print("ImportError:", exc)
    from typer.testing import CliRunner
    from polars_azurechat.cli import app
    result = CliRunner().invoke(app, ["run", sys.argv[1], sys.argv[2], "--column", "q",
                                      "--report", sys.argv[3]], env=emu.env())
    print("exit", result.exit_code, "requests", emu.stats()["requests"])
    print(result.output)
"""


@pytest.mark.slow
def test_without_matplotlib_the_report_says_what_to_install(tmp_path: Path) -> None:
    src = tmp_path / "q.parquet"
    _write_questions(src, 3)
    proc = subprocess.run(
        [sys.executable, "-c", _NO_MATPLOTLIB, str(src), str(tmp_path / "a.parquet"),
         str(tmp_path / "r.html")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["['2']", "True"]
    assert lines[2] == (
        "ImportError: the run report is drawn with matplotlib, which is not installed: "
        'pip install "polars-azurechat[notebook]" (or pip install matplotlib)'
    )
    # the CLI refuses --report before any request, saying what to install
    assert lines[3] == "exit 2 requests 1"  # the one request of job.run above
    assert "polars-azurechat[notebook]" in proc.stdout
    assert not (tmp_path / "a.parquet").exists()
    assert not (tmp_path / "r.html").exists()


_NOTEBOOK_CELL = """
import polars as pl
import polars_azurechat as pac
from polars_azurechat.emulator import Emulator
emu = Emulator(latency_ms=5).start()
config = pac.ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key,
                        deployment="gpt-4o-mini")
df = pl.DataFrame({"q": [f"What is {i} + 1?" for i in range(300)]})
job = pac.Completer(config=config, max_tokens=20, max_concurrency=4)
out = df.select(job.expr("q"))
print(out["q"][-1], job.summary().answered)
"""


@pytest.mark.slow
def test_a_notebook_shows_one_bar_per_run_updated_in_place_to_100() -> None:
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from ._kernel import KERNEL_NAME, kernel_spec_dir

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AZURE_", "OPENAI_", "POLARS_AZURECHAT_"))
    }
    messages: list[dict[str, Any]] = []
    with kernel_spec_dir() as kernels:
        km = KernelManager(
            kernel_name=KERNEL_NAME,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernels]),
            transport_encryption="auto",  # CurveZMQ keys, as Jupyter's servers do
        )
        km.start_kernel(env=env)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            reply = kc.execute_interactive(
                textwrap.dedent(_NOTEBOOK_CELL),
                timeout=60,
                output_hook=messages.append,
            )
            assert reply["content"]["status"] == "ok"
            again: list[dict[str, Any]] = []
            second = kc.execute_interactive(
                "out = df.head(10).select(job.expr('q')); emu.stop()",
                timeout=60,
                output_hook=again.append,
            )
            assert second["content"]["status"] == "ok"
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    kinds = [m["msg_type"] for m in messages]
    streams = [m["content"] for m in messages if m["msg_type"] == "stream"]
    assert [s["text"] for s in streams] == ["300 300\n"]  # nothing on stderr
    shown = [m["content"] for m in messages if m["msg_type"] == "display_data"]
    assert len(shown) == 1  # one display for the run
    display_id = shown[0]["transient"]["display_id"]
    assert "chat.complete: 0% 0/" in shown[0]["data"]["text/plain"]
    updates = [m["content"] for m in messages if m["msg_type"] == "update_display_data"]
    assert updates, kinds
    assert {u["transient"]["display_id"] for u in updates} == {display_id}
    final = updates[-1]["data"]
    assert final["text/plain"].startswith("chat.complete: 100% 300/300 rows")
    assert '<progress value="300" max="300"' in final["text/html"]
    assert len(updates) <= 60  # redrawn at most ~10 times a second, not per row
    # a second run: a display of its own, ending at 100%
    shown2 = [m["content"] for m in again if m["msg_type"] == "display_data"]
    assert len(shown2) == 1
    assert shown2[0]["transient"]["display_id"] != display_id
    updates2 = [m["content"] for m in again if m["msg_type"] == "update_display_data"]
    assert updates2[-1]["data"]["text/plain"].startswith("chat.complete: 100% 10/10")
