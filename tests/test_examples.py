"""The offline examples run, so they never rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.mark.parametrize(
    ("script", "expect"),
    [
        ("questions_offline.py", "correct: 100 of 100"),
        ("plain_python.py", "{'input': 'What is 53 + 53?', 'content': '106'}"),
    ],
)
def test_offline_example_runs(script: str, expect: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert expect in proc.stdout


def test_quickstart_notebook_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Execute every code cell of examples/quickstart.ipynb, in order, in one namespace."""
    import json
    import warnings

    pytest.importorskip("matplotlib")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(EXAMPLES)
    notebook = json.loads((EXAMPLES / "quickstart.ipynb").read_text())
    namespace: dict[str, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # matplotlib: Agg cannot show
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                code = compile("".join(cell["source"]), "quickstart.ipynb", "exec")
                exec(code, namespace)  # noqa: S102 - our own notebook
    assert namespace["correct"] == 100
    sweep = namespace["sweep"]
    assert isinstance(sweep, list)
    assert sweep[-1][1] > 5 * sweep[0][1]  # concurrency pays
