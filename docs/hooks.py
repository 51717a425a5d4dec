"""MkDocs hooks: pages generated at build time from the code, and docstring roles.

- ``<!-- cli-reference -->`` becomes the reference of every ``polars-azurechat``
  command, read from the Typer app (its Click commands, as ``typer.main.get_command`` builds them): usage, help, and each
  argument and flag with its type, default and help.
- ``<!-- options-table -->`` becomes the table of every ``ChatOptions`` field: its
  name, type, default and doc (the one definition every entry point is built from).
- ``<!-- api-index -->`` becomes the table of every name in
  ``polars_azurechat.__all__``, each a cross-reference to its API page (a name with
  no page fails the strict build).
- ``<!-- api: MODULE -->`` becomes the mkdocstrings directive for the names in the
  module's ``__all__``.
- ``<!-- include: NAME -->`` becomes the text of ``docs/NAME`` (``design.md`` stays
  where the tests and other documents point to it).
- The docstrings use Sphinx roles (``:class:`~polars_azurechat.Completer```); in the
  rendered HTML each becomes code, linked to its API entry when it has one.
"""

from __future__ import annotations

import dataclasses
import html
import re
import typing
from pathlib import Path
from typing import Any

DOCS = Path(__file__).parent

_API = re.compile(r"<!-- api: ([\w.]+) -->")
_INCLUDE = re.compile(r"<!-- include: ([\w.-]+) -->")
_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|attr|mod|exc|data|obj|const):<code>(~?)([\w.]+)(\(\))?</code>"
)


def on_config(config: Any) -> Any:
    """Keep the API reference's import of the package from running the CLI.

    The reference is read from the imported modules (``force_inspection``: the option
    docs are put into the docstrings at import time), and griffe imports every
    submodule, ``__main__`` included, which would run the command. It gets a stand-in.
    """
    import sys
    import types

    import polars_azurechat

    if str(DOCS) not in sys.path:  # griffe_extensions.py, named in mkdocs.yml
        sys.path.insert(0, str(DOCS))
    name = "polars_azurechat.__main__"
    if name not in sys.modules:
        stand_in = types.ModuleType(name, "``python -m polars_azurechat``: the CLI.")
        stand_in.__file__ = str(
            Path(polars_azurechat.__file__).with_name("__main__.py")
        )
        sys.modules[name] = stand_in
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Fill the generated parts of a page."""
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", cli_reference())
    if "<!-- options-table -->" in markdown:
        markdown = markdown.replace("<!-- options-table -->", options_table())
    if "<!-- api-index -->" in markdown:
        markdown = markdown.replace("<!-- api-index -->", api_index())
    markdown = _API.sub(lambda m: api_directive(m.group(1)), markdown)
    return _INCLUDE.sub(
        lambda m: (DOCS / m.group(1)).read_text(encoding="utf-8"), markdown
    )


def on_page_content(html_text: str, page: Any, config: Any, files: Any) -> str:
    """Turn the docstrings' Sphinx roles into code, linked when the target is documented."""

    def link(m: re.Match[str]) -> str:
        short, target, call = m.group(1), m.group(2), m.group(3) or ""
        shown = target.rsplit(".", 1)[-1] if short else target
        ident = (
            target
            if target.startswith("polars_azurechat")
            else f"polars_azurechat.{target}"
        )
        return (
            f'<autoref identifier="{html.escape(ident)}" optional>'
            f"<code>{html.escape(shown + call)}</code></autoref>"
        )

    return _ROLE.sub(link, html_text)


# --- the CLI reference -------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    """Code in a table cell (a ``|`` inside backticks would end the cell)."""
    shown = html.escape(" ".join(text.split())).replace("|", "&#124;")
    return f"<code>{shown}</code>"


def _default(param: Any) -> str:
    value = param.default
    if value is None or repr(value).startswith(("Sentinel", "<")) or callable(value):
        return ""
    if getattr(param, "is_flag", False) and param.secondary_opts:
        return _code(param.opts[0] if value else param.secondary_opts[0])
    if isinstance(value, (list, tuple)):
        return "" if not value else _code(" ".join(map(str, value)))
    return _code(str(value))


def _type(param: Any) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    kind = getattr(param, "type", None)
    if kind is not None and hasattr(kind, "choices"):
        return " \\| ".join(f"`{c}`" for c in kind.choices)
    descriptor = getattr(param, "type_descriptor", None)
    hint = descriptor.annotation if descriptor is not None else kind
    return _code(_type_name(hint)) + (" (repeatable)" if param.multiple else "")


def _command(name: str, cmd: Any) -> str:
    args = [p for p in cmd.params if p.param_type_name == "argument"]
    usage = " ".join(["[OPTIONS]", *((p.name or "").upper() for p in args)])
    lines = [
        f"## `{name}`",
        "",
        "```text",
        f"polars-azurechat {name} {usage}",
        "```",
        "",
        (cmd.help or "").strip(),
        "",
    ]
    opts = [p for p in cmd.params if p.param_type_name == "option" and not p.hidden]
    if args:
        lines += ["| argument | type | help |", "|---|---|---|"]
        for p in args:
            helptext = getattr(p, "help", None) or ""
            lines.append(
                f"| `{(p.name or '').upper()}` | {_type(p)} | {_cell(helptext)} |"
            )
        lines.append("")
    if opts:
        lines += ["| flag | type | default | help |", "|---|---|---|---|"]
        for p in opts:
            flags = " / ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
            lines.append(
                f"| {flags} | {_type(p)} | {_default(p)} | {_cell(p.help or '')} |"
            )
        lines.append("")
    return "\n".join(lines)


def cli_reference() -> str:
    """The reference of every command, from the Typer app."""
    import typer

    from polars_azurechat.cli import app

    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="polars-azurechat")
    parts = [(group.help or "").strip(), ""]
    for name in group.list_commands(root):
        cmd = group.get_command(root, name)
        if cmd is not None and not cmd.hidden:
            parts.append(_command(name, cmd))
    return "\n".join(parts)


# --- the options table and the API index --------------------------------------------


def _type_name(hint: Any) -> str:
    text = str(hint).replace("typing.", "").replace("NoneType", "None")
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text)
    return re.sub(r"\b(?:[a-z_]+\.)+([A-Z]\w*)", r"\1", text)


def options_table() -> str:
    """Every ``ChatOptions`` field: name, type, default and doc."""
    from polars_azurechat.options import ChatOptions

    hints = typing.get_type_hints(ChatOptions, include_extras=False, localns=_localns())
    lines = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(ChatOptions):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = ""
        kind = _type_name(hints.get(f.name, f.type))
        doc = _cell(f.metadata.get("doc", ""))
        lines.append(f"| `{f.name}` | {_code(kind)} | {_code(default)} | {doc} |")
    return "\n".join(lines)


def _localns() -> dict[str, Any]:
    import polars as pl

    from polars_azurechat.deployments import Deployment
    from polars_azurechat.schema.output import OutputSchema

    ns: dict[str, Any] = {
        "pl": pl,
        "Deployment": Deployment,
        "OutputSchema": OutputSchema,
    }
    try:
        from pydantic import BaseModel

        ns["BaseModel"] = BaseModel
    except ImportError:  # pragma: no cover - pydantic comes with openai
        pass
    return ns


def api_directive(module_name: str) -> str:
    """A mkdocstrings directive for the names the module exports (its ``__all__``).

    The reference is read from the imported module, where a module's imports look like
    its own names: listing ``__all__`` keeps each page to what the module exports.
    """
    import importlib

    module = importlib.import_module(module_name)
    names = [n for n in module.__all__ if not n.startswith("_")]
    return "\n".join(
        [
            f"::: {module_name}",
            "    options:",
            "      show_root_heading: false",
            f"      members: [{', '.join(names)}]",
            # the jobs' close() lives in a shared base (polars_azurechat._handle)
            "      inherited_members: [close]",
        ]
    )


def api_index() -> str:
    """Every name of ``polars_azurechat.__all__``, linked to where it is documented."""
    import polars_azurechat as pac

    lines = ["| name | kind | module |", "|---|---|---|"]
    for name in pac.__all__:
        if name == "__version__":
            lines.append(
                "| `__version__` | str | `polars_azurechat` (the installed version) |"
            )
            continue
        obj = getattr(pac, name)
        module = obj.__module__
        kind = (
            "exception"
            if isinstance(obj, type) and issubclass(obj, BaseException)
            else ("class" if isinstance(obj, type) else "function")
        )
        lines.append(f"| [`{name}`][{module}.{name}] | {kind} | `{module}` |")
    return "\n".join(lines)
