"""Typed answers: :class:`SchemaMismatchError` and the wording of schema problems.

An answer that breaks the output schema raises :class:`SchemaMismatchError` with the
field path; a schema that has no Polars dtype raises ``TypeError`` (:func:`unsupported`).
Messages name a value by its kind only (:func:`kind_of`) where they must not carry the
answer's text.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DumpMismatchError",
    "SchemaMismatchError",
    "bad_value",
    "join_path",
    "kind_of",
    "show",
    "unsupported",
]


class SchemaMismatchError(ValueError):
    """An answer is not valid JSON or does not match the output schema.

    Attributes
    ----------
    path : str
        Where the first problem is (``"customer.address.city"``, ``"tags[1]"``), or
        ``""`` for the whole answer (invalid JSON, a non-object).
    problem : str
        What did not validate there (``"'urgent' is not one of ['low', 'high']"``).
    safe_problem : str
        The same without the answer's values (``"a string of 6 characters is not one
        of ['low', 'high']"``), for messages that must not carry the answer's text.
    """

    def __init__(
        self,
        problem: str,
        *,
        path: str = "",
        json_error: bool = False,
        safe: str | None = None,
    ) -> None:
        if json_error:
            message = f"answer is not valid JSON ({problem}); was it cut at max_tokens?"
        else:
            message = f"answer does not match the schema: {_where(path)}: {problem}"
        super().__init__(message)
        self.path = path
        self.problem = problem
        self.json_error = json_error
        #: ``problem`` with the answer's values replaced by their kind (``"a string of
        #: 6 characters is not one of ['low', 'high']"``): what a per-row error shows
        self.safe_problem = problem if safe is None else safe


def join_path(path: str, key: str | int) -> str:
    """The path of ``key`` inside ``path`` (``"a.b"``, ``"tags[1]"``)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _where(path: str) -> str:
    return path or "<root>"


def unsupported(path: str, what: str) -> TypeError:
    """The ``TypeError`` of a schema that cannot be used, saying where and why."""
    return TypeError(f"output schema: {_where(path)}: {what}")


def kind_of(value: Any) -> str:
    """What a JSON value is, without its content (for messages that must not show it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def bad_value(value: Any, rest: str, path: str) -> SchemaMismatchError:
    """``<value> <rest>`` at ``path``; the safe problem names the value's kind only."""
    return SchemaMismatchError(
        f"{show(value)} {rest}", path=path, safe=f"{kind_of(value)} {rest}"
    )


def show(value: Any) -> str:
    """The ``repr`` of a value for a message, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class DumpMismatchError(ValueError):
    """A validated answer's model dump does not fit the column (the model's doing).

    Raised by a pydantic model's parser when its ``model_dump`` gives values its JSON
    schema does not describe (a custom serializer): not the answer's fault.
    """
