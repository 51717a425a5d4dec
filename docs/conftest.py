"""The pages' examples run as doctests (``--doctest-glob='*.md'`` over docs/pages).

The root conftest.py gives every doctest (text files included) an emulator, the
environment pointed at it, and an empty working directory. Here that directory also
gets ``data/`` (a link to the repository's), so the pages read
``data/questions.parquet`` as a checkout would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(autouse=True)
def pages_data(request: pytest.FixtureRequest, clean_environ: None) -> None:
    """Link ``data/`` into a page's working directory (after ``clean_environ`` made it)."""
    if isinstance(request.node, pytest.DoctestItem):
        Path("data").symlink_to(DATA, target_is_directory=True)
