"""The package's shape stays what docs/design.md says: rooms small enough to live in."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import polars_azurechat

PACKAGE = Path(polars_azurechat.__file__).parent
#: docs/design.md: no class over 400 lines, no module over 750.
MAX_CLASS_LINES = 400
MAX_MODULE_LINES = 750


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_class_and_no_module_is_too_big() -> None:
    too_big = []
    for path in _modules():
        source = path.read_text(encoding="utf-8")
        if source.count("\n") > MAX_MODULE_LINES:
            too_big.append(
                f"{path.relative_to(PACKAGE)}: {source.count(chr(10))} lines"
            )
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    too_big.append(f"{path.relative_to(PACKAGE)}: {node.name} {size}")
    assert not too_big, too_big


def test_each_concern_lives_in_its_sub_package() -> None:
    # a newcomer finds each concern where its name says (docs/design.md, Layers)
    expected = {
        "engine": {"core", "runs", "frontdoor", "online", "build"},
        "batch": {"mode", "runner", "state"},
        "transport": {"http", "auth", "pool", "ratelimit", "retry"},
        "store": {"sqlite", "redis"},
        "schema": {"output"},
    }
    for package, modules in expected.items():
        present = {p.stem for p in (PACKAGE / package).glob("*.py")}
        assert modules <= present, (package, modules - present)
    flat = {p.stem for p in PACKAGE.glob("*.py")}
    # the machinery is in the sub-packages; the top level is what users import
    assert not flat & {
        "_engine",
        "_batch",
        "_ratelimit",
        "_schema",
        "_transport",
        "cache",
    }


def test_importing_the_package_loads_none_of_a_jobs_machinery() -> None:
    # the sub-packages load on a job's first use (the import stays lean)
    code = (
        "import os, sys; os.environ['POLARS_AZURECHAT_PREWARM'] = '0'\n"
        "import polars_azurechat\n"
        "print(sorted(m for m in sys.modules if m.startswith('polars_azurechat.')))"
    )
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(ast.literal_eval(out))
    heavy = {
        "polars_azurechat.engine.core",
        "polars_azurechat.batch.runner",
        "polars_azurechat.transport.http",
        "polars_azurechat.schema.output",
        "polars_azurechat.store.sqlite",
        "polars_azurechat.vectors",  # it loads numpy
    }
    assert not loaded & heavy, loaded & heavy
    assert importlib.import_module("polars_azurechat.engine.core")  # loads on use
