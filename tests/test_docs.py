"""The documentation site: built in strict mode, then opened in a real headless browser.

The pages' examples run as doctests in the quick suite (``--doctest-glob='*.md'`` over
docs/pages); here the site itself is built with ``mkdocs build --strict`` (a broken link
or an unresolved reference fails it), served over HTTP on 127.0.0.1 and opened in
Chromium (the system's, driven by Playwright): the home page, a how-to and an API page
must render their code blocks without a console error.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import inspect
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

import polars_azurechat
from polars_azurechat.cli import app
from polars_azurechat.options import ChatOptions

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(config),
            "-d",
            str(site),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once for this module's tests."""
    out = tmp_path_factory.mktemp("site")
    done = _mkdocs(DOCS / "mkdocs.yml", out)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _text(site: Path, page: str) -> str:
    return (site / page / "index.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_site_builds_strict_with_the_generated_references(site: Path) -> None:
    """Every public name, every option and every command is on the built site."""
    api = _text(site, "reference/api")
    for name in polars_azurechat.__all__:
        assert f"<code>{name}</code>" in api, name
    options = _text(site, "reference/options")
    for field in dataclasses.fields(ChatOptions):
        assert f"<code>{field.name}</code>" in options, field.name
    cli = _text(site, "reference/cli")
    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="polars-azurechat")
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        assert f'id="{name}"' in cli, name
        for param in command.params:  # every argument and flag of every command
            if param.param_type_name == "option":
                shown = param.opts[0]
            else:
                shown = (param.name or "").upper()
            assert f"<code>{shown}</code>" in cli, (name, shown)
    functions = _text(site, "reference/api/functions")
    # the options' docs are filled into the docstrings; no placeholder or Sphinx role left
    assert "max_concurrency" in functions
    assert "{options}" not in functions
    assert ":class:" not in functions
    assert ":func:" not in functions
    for page in sorted((site / "reference" / "api").glob("*/index.html")):
        # a docstring numpydoc could not parse shows its entries raw ("name : type,
        # default x"; parsed, the default has its own column) in a "----" block
        text = page.read_text(encoding="utf-8")
        assert ", default " not in text, page
        assert 'class="----' not in text, page
        # a constant shows its "#:" comment, not its type's docstring
        assert "str(object=" not in text, page
        assert "frozenset() -&gt;" not in text, page
    design = _text(site, "concepts/design")
    assert "The way a row travels" in design or "Layers" in design


@pytest.mark.slow
def test_strict_build_fails_on_a_broken_link_or_reference(tmp_path: Path) -> None:
    """The same configuration, one page with a broken link and reference: no site."""
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("_site", "pages"))
    (docs / "pages").mkdir()
    (docs / "pages" / "index.md").write_text(
        "# Home\n\nSee [the guide](missing-guide.md) and [a name][polars_azurechat.no_such_name].\n",
        encoding="utf-8",
    )
    config = (docs / "mkdocs.yml").read_text(encoding="utf-8")
    head, sep, _ = config.partition("\nnav:\n")
    assert sep, "docs/mkdocs.yml ends with its nav"
    (docs / "mkdocs.yml").write_text(
        head + "\nnav:\n  - Home: index.md\n", encoding="utf-8"
    )
    done = _mkdocs(docs / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "missing-guide.md" in done.stderr
    assert "polars_azurechat.no_such_name" in done.stderr


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The built site over HTTP on 127.0.0.1."""
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without a log line per request."""

    def log_message(self, format: str, *args: object) -> None:
        """Say nothing."""


def _visit(url: str, check: Callable[[Any], None]) -> list[str]:
    """Open ``url`` in headless Chromium, run ``check(page)``, return the console's errors."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright"
    )
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            tab = browser.new_page()
            tab.on(
                "console",
                lambda m: errors.append(m.text) if m.type == "error" else None,
            )
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            response = tab.goto(url, wait_until="networkidle")
            assert response is not None
            assert response.status == 200
            check(tab)
        finally:
            browser.close()
    return errors


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium: apt-get install chromium"
)


@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize(
    ("page", "heading", "code"),
    [
        ("", "polars-azurechat", "chat.complete"),
        ("how-to/typed-answers/", "Typed answers", "response_format=Ticket"),
        ("reference/api/functions/", "polars_azurechat.functions", "Completer"),
    ],
)
def test_page_renders_in_chromium(
    served: str, page: str, heading: str, code: str
) -> None:
    """The page renders its heading and code blocks, and the console stays clean."""

    def check(tab: Any) -> None:
        assert heading in tab.locator("article h1").first.inner_text()
        blocks = tab.locator("article pre code")
        assert blocks.count() > 0
        assert any(code in blocks.nth(i).inner_text() for i in range(blocks.count()))
        # Material's script ran: it adds a copy button to every code block
        assert (
            tab.locator("article pre :is(.md-clipboard, .md-code__button)").count() > 0
        )

    assert _visit(served + page, check) == []


@pytest.mark.slow
@needs_chromium
def test_console_errors_are_seen(site: Path, served: str) -> None:
    """A page whose script fails and logs an error: both are reported."""
    (site / "broken.html").write_text(
        "<html><body><script>console.error('boom'); undefinedThing();</script></body></html>",
        encoding="utf-8",
    )
    errors = _visit(served + "broken.html", lambda tab: None)
    assert "boom" in errors
    assert any("undefinedThing" in e for e in errors)


def test_generated_option_docs_keep_the_docstrings_indentation() -> None:
    """Each option is its own numpydoc entry, in functions and in methods alike."""
    from polars_azurechat.functions import Completer, complete, complete_many
    from polars_azurechat.namespace import ChatNamespace
    from polars_azurechat.plan import plan

    for obj in (complete, complete_many, Completer, ChatNamespace.complete, plan):
        doc = inspect.cleandoc(obj.__doc__ or "")
        for field in dataclasses.fields(ChatOptions):
            assert f"\n{field.name} : " in doc, (obj, field.name)
            assert f"\n    {field.metadata['doc']}" in doc, (obj, field.name)
