"""The offline examples run, so they never rot.

``examples/quickstart.ipynb`` and ``examples/tasks.ipynb`` are executed in a real
Jupyter kernel (nbclient + ipykernel, running this interpreter) and are committed with
their outputs. After editing one, refresh the outputs from the repository root with::

    python tests/test_examples.py --update-notebook
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

try:
    from ._kernel import KERNEL_NAME, kernel_spec_dir
except ImportError:  # run as a script: python tests/test_examples.py --update-notebook
    from _kernel import KERNEL_NAME, kernel_spec_dir  # type: ignore[no-redef,import-not-found]

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
NOTEBOOK = EXAMPLES / "quickstart.ipynb"
TASKS_NOTEBOOK = EXAMPLES / "tasks.ipynb"
DATA = REPO / "data" / "questions.parquet"

CELL_TIMEOUT_S = 60
# What the kernel must not inherit: Azure/OpenAI settings (the notebook uses the
# emulator) and a non-inline matplotlib backend (the plot must be an image/png output).
_ENV_PREFIXES = ("AZURE_OPENAI_", "OPENAI_", "POLARS_AZURECHAT_")
_ENV_DROP = frozenset({"MPLBACKEND"})
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("script", "expect"),
    [
        ("questions_offline.py", "correct: 100 of 100"),
        ("plain_python.py", "{'input': 'What is 53 + 53?', 'content': '106'}"),
        ("typed_tickets.py", "answered 12 of 12 tickets with 12 requests; failed: 0"),
        ("tasks.py", "kept 3 of 8 tickets asking for a refund"),
        (
            "similar_tickets.py",
            "classified 5 of 5 new tickets, each prompt with 3 similar labelled tickets",
        ),
    ],
)
@pytest.mark.slow
def test_offline_example_runs(script: str, expect: str) -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert expect in proc.stdout


# -- the notebook ---------------------------------------------------------------------


def _kernel_env() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_ENV_PREFIXES) and name not in _ENV_DROP
    }


@contextmanager
def _layout() -> Iterator[Path]:
    """A throwaway ``examples/`` working dir with ``../data/questions.parquet`` beside it.

    The notebook reads its data relative to ``examples/`` (where Jupyter starts it), so
    it runs here exactly as it does for a reader, without writing into the repository.
    """
    with tempfile.TemporaryDirectory(prefix="quickstart-") as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        shutil.copyfile(DATA, root / "data" / DATA.name)
        workdir = root / "examples"
        workdir.mkdir()
        yield workdir


def execute_notebook(nb: Any, workdir: Path, *, timeout: int = CELL_TIMEOUT_S) -> Any:
    """Run every cell of ``nb`` in place in a fresh ipykernel on ``sys.executable``.

    The kernel is described by a throwaway kernelspec, so no installed (global or
    venv) ``python3`` kernelspec is needed or used. Raises on the first failing cell.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    with kernel_spec_dir() as kernels:
        km = AsyncKernelManager(
            kernel_name=KERNEL_NAME,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernels]),
            transport_encryption="auto",  # CurveZMQ keys, as Jupyter's own servers do
        )
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            record_timing=False,
            resources={"metadata": {"path": str(workdir)}},
        )
        env = _kernel_env()
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # debugpy's frozen-modules note
        # cleanup_kc: shut the kernel down and close its sockets (the client does not
        # by default when it is handed the kernel manager)
        client.execute(env=env, cleanup_kc=True)
    return nb


def _cell(nb: Any, needle: str) -> Any:
    """The one code cell whose source contains ``needle``."""
    found = [
        c for c in nb.cells if c.cell_type == "code" and needle in "".join(c.source)
    ]
    assert len(found) == 1, f"{len(found)} code cells contain {needle!r}"
    return found[0]


def _stdout(cell: Any) -> str:
    return "".join(
        o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout"
    )


def _check_outputs(nb: Any) -> None:
    """What a reader of the executed notebook must see."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    # run top to bottom, once each, in one fresh kernel
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    for cell in code:
        for out in cell.outputs:
            assert out.output_type != "error", "".join(out.get("traceback", []))
            assert not (out.output_type == "stream" and out.name == "stderr"), out.text
    assert "100 of 100 answers correct" in _stdout(_cell(nb, "pac.Completer("))
    assert "(100 answered, 0 failed, 0 null;" in _stdout(_cell(nb, "job.summary()"))
    assert "rows:      100 (" in _stdout(_cell(nb, "pac.plan("))
    # typed answers: the Struct's fields are columns, known before any request
    assert "('value', Int64)" in _stdout(_cell(nb, "response_format=Answer"))
    plot = _cell(nb, "plt.show()")
    pngs = [
        base64.b64decode(o.data["image/png"])
        for o in plot.outputs
        if o.output_type == "display_data" and "image/png" in o.data
    ]
    assert len(pngs) == 1
    assert pngs[0].startswith(_PNG_MAGIC)
    # the sweep's table follows the plot
    assert any(o.output_type == "execute_result" for o in plot.outputs)


@pytest.mark.slow
def test_quickstart_notebook_runs_in_a_kernel() -> None:
    """Execute examples/quickstart.ipynb in ipykernel; the committed file is untouched."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    committed = NOTEBOOK.read_bytes()
    nb = nbformat.reads(committed.decode(), as_version=4)
    nbformat.validate(nb)
    # a probe, in memory only: the kernel's interpreter, working dir and environment
    probe = (
        "import json, os, sys\n"
        "print(json.dumps({'executable': sys.executable, 'cwd': os.getcwd(),\n"
        f"    'leaked': sorted(k for k in os.environ if k.startswith({_ENV_PREFIXES!r}))}}))"
    )
    nb.cells.append(nbformat.v4.new_code_cell(probe))
    with _layout() as workdir:
        execute_notebook(nb, workdir)
        seen = json.loads(_stdout(nb.cells.pop()))
        assert seen["executable"] == sys.executable
        assert Path(seen["cwd"]).resolve() == workdir.resolve()
        assert seen["leaked"] == []
    _check_outputs(nb)
    assert NOTEBOOK.read_bytes() == committed


def test_quickstart_notebook_is_committed_with_outputs() -> None:
    """The committed notebook reads well on a code-hosting page: outputs, plot included."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    _check_outputs(nb)


def _check_tasks_outputs(nb: Any) -> None:
    """What a reader of examples/tasks.ipynb must see (classify, filter, photos)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    for cell in code:
        for out in cell.outputs:
            assert out.output_type != "error", "".join(out.get("traceback", []))
            assert not (out.output_type == "stream" and out.name == "stderr"), out.text
    assert "- parcel: deliveries and shipping" in _stdout(_cell(nb, "explain_prompt"))
    schema = _stdout(_cell(nb, "collect_schema()"))
    assert "('refund', Struct({'match': Boolean, 'confidence': Float64}))" in schema
    assert "requests so far: 0" in schema
    assert "kept 3 tickets asking for a refund" in _stdout(_cell(nb, "refunds = "))
    photos = _cell(nb, 'images=pl.col("photo")')
    shown = "".join(
        o.data["text/plain"]
        for o in photos.outputs
        if o.output_type == "execute_result"
    )
    assert (
        "trail running shoe ┆ shoe" in shown and "wool scarf         ┆ scarf" in shown
    )


def test_tasks_notebook_is_committed_with_outputs() -> None:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(TASKS_NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    _check_tasks_outputs(nb)


@pytest.mark.slow
def test_tasks_notebook_runs_in_a_kernel() -> None:
    """Execute examples/tasks.ipynb afresh: the same outputs as the committed ones."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(TASKS_NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    with _layout() as workdir:
        execute_notebook(nb, workdir)
    _check_tasks_outputs(nb)


# -- refreshing the committed outputs -------------------------------------------------


def _strip_volatile(nb: Any) -> None:
    """Drop per-run metadata (timings, interpreter patch version); keep the outputs."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.kernelspec = {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": "python3",
    }
    nb.metadata.get("language_info", {}).pop("version", None)


def update_notebook(path: Path = NOTEBOOK) -> None:
    """Execute a notebook of examples/ and save it with its outputs."""
    import nbformat

    nb = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    with _layout() as workdir:
        execute_notebook(nb, workdir)
    _strip_volatile(nb)
    (_check_outputs if path == NOTEBOOK else _check_tasks_outputs)(nb)
    nbformat.validate(nb)
    nbformat.write(nb, path)  # type: ignore[no-untyped-call]


def main(argv: Sequence[str] | None = None) -> None:
    """``python tests/test_examples.py --update-notebook`` (quickstart and tasks)."""
    parser = argparse.ArgumentParser(
        description="Refresh the committed outputs of examples/quickstart.ipynb."
    )
    parser.add_argument(
        "--update-notebook",
        action="store_true",
        required=True,
        help=f"execute {NOTEBOOK.relative_to(REPO)} and save it with its outputs",
    )
    parser.parse_args(argv)
    for path in (NOTEBOOK, TASKS_NOTEBOOK):
        update_notebook(path)
        sys.stdout.write(f"updated {path}\n")


if __name__ == "__main__":
    main()
