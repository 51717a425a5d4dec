"""A griffe extension for the API reference: module data documented by ``#:`` comments.

The reference is read from the imported modules (``force_inspection``), where a
constant has no docstring of its own: griffe shows its type's (a ``str``'s, a
``frozenset``'s). The package documents its constants with ``#:`` comments above them
(as Sphinx reads them); this extension takes those instead, or no docstring at all.
"""

from __future__ import annotations

import inspect
import re
from functools import cache
from pathlib import Path
from typing import Any

import griffe


@cache
def _lines(path: str) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def comment_doc(
    path: str, name: str, start: int = 1, end: int | None = None
) -> str | None:
    """The ``#:`` comment lines right above ``name``'s assignment, or None.

    ``start``/``end`` (1-based, inclusive) bound the search to a class's body.
    """
    lines = _lines(path)
    pattern = re.compile(rf"^\s*{re.escape(name)}\s*(:[^=]*)?=")
    for i in range(start - 1, min(end or len(lines), len(lines))):
        line = lines[i]
        if pattern.match(line):
            doc: list[str] = []
            j = i - 1
            while j >= 0 and lines[j].lstrip().startswith("#:"):
                doc.insert(0, lines[j].lstrip()[2:].strip())
                j -= 1
            return " ".join(doc) or None
    return None


class CommentDocs(griffe.Extension):
    """Constants and fields: their ``#:`` comment, never their type's docstring."""

    def on_attribute_instance(
        self, *, node: Any, attr: griffe.Attribute, agent: Any, **kwargs: Any
    ) -> None:
        """Replace a docstring taken from the value's type."""
        value = getattr(node, "obj", None)
        parent = attr.parent
        if parent is None or value is None:
            return
        own = getattr(type(value), "__doc__", None)
        if attr.docstring is not None and not (
            isinstance(own, str) and attr.docstring.value == inspect.cleandoc(own)
        ):
            return
        path = parent.filepath
        text = None
        if isinstance(path, Path) and isinstance(parent, griffe.Module):
            text = comment_doc(str(path), attr.name)
        elif isinstance(path, Path) and parent.lineno is not None:
            text = comment_doc(str(path), attr.name, parent.lineno, parent.endlineno)
        attr.docstring = griffe.Docstring(text, parent=attr) if text else None
