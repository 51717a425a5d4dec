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
