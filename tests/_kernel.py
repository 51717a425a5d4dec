"""A throwaway Jupyter kernelspec running this interpreter (no installed spec needed)."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KERNEL_NAME = "polars-azurechat-test"


@contextmanager
def kernel_spec_dir() -> Iterator[str]:
    """A folder holding one kernelspec, ``KERNEL_NAME``, for ``sys.executable``."""
    with tempfile.TemporaryDirectory(prefix="kernels-") as kernels:
        spec = Path(kernels) / KERNEL_NAME
        spec.mkdir()
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        kernel_json = {
            "argv": argv,
            "display_name": "Python 3",
            "language": "python",
            "metadata": {"supported_encryption": ["curve"]},  # as ipykernel's own spec
        }
        (spec / "kernel.json").write_text(json.dumps(kernel_json))
        yield kernels
