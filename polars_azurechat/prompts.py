"""Build chat messages per row with Polars expressions.

:func:`messages` turns a system prompt, few-shot examples and a user prompt (plain
strings or expressions over a row's columns) into the column the engine consumes:
``List(Struct{role: String, content: String})``, one list per row. It is a pure Polars
expression (no Python per row), so it runs eagerly, lazily and in the streaming engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import polars as pl

__all__ = ["MESSAGES_DTYPE", "messages"]

#: The dtype :func:`messages` returns (the one ``chat.complete`` takes).
MESSAGES_DTYPE: Final = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))

Part = str | pl.Expr


def _part(value: object, name: str, *, allowed: str = "a str or a pl.Expr") -> pl.Expr:
    """``value`` as a String expression; ``TypeError`` naming the argument otherwise."""
    if isinstance(value, str):
        return pl.lit(value, dtype=pl.String)
    if isinstance(value, pl.Expr):
        return value.cast(pl.String)
    msg = f"messages(): {name} must be {allowed}, not {type(value).__name__}"
    raise TypeError(msg)


def _optional_part(value: object, name: str) -> pl.Expr | None:
    if value is None:
        return None
    return _part(value, name, allowed="a str, a pl.Expr or None")


def _message(role: str, content: pl.Expr) -> pl.Expr:
    return pl.struct(role=pl.lit(role, dtype=pl.String), content=content)


def messages(
    *,
    system: Part | None = None,
    user: Part,
    examples: Iterable[tuple[Part, Part]] = (),
    assistant: Part | None = None,
) -> pl.Expr:
    """An expression giving each row its chat messages.

    The list of a row is: the system message (if given); for each ``(input, output)``
    of ``examples``, a user message then an assistant message (few-shot examples); the
    user message; the assistant message (if given: the start of the answer, or the
    last turn of a conversation).

    Parameters
    ----------
    system
        The system message: a ``str`` (the same for every row) or a ``pl.Expr``.
    user
        The user message, usually an expression over the row
        (``pl.format("Classify: {}", pl.col("text"))``); a ``str`` is the same for
        every row.
    examples
        ``(input, output)`` pairs, each part a ``str`` or a ``pl.Expr``.
    assistant
        A last assistant message, a ``str`` or a ``pl.Expr``.

    Returns
    -------
    pl.Expr
        Of dtype ``List(Struct{role: String, content: String})``, named
        ``"messages"``. Expressions that are not String are cast to String.

        Nulls: a row whose user message is null gives a null list (the engine sends
        no request for a null row and leaves its answer null). A null system or
        assistant message is left out of that row's list, and so is an example pair
        when either of its parts is null. With only ``str`` arguments the expression
        is a single literal list, broadcast over the frame by ``with_columns``.

    Raises
    ------
    TypeError
        An argument is not a ``str`` or a ``pl.Expr`` (``examples``: not pairs of
        them); the message names the argument.

    Examples
    --------
    >>> import polars as pl
    >>> from polars_azurechat.prompts import messages
    >>> df = pl.DataFrame({"text": ["I love it", None, "Broken on arrival"]})
    >>> out = df.with_columns(
    ...     messages=messages(
    ...         system="Answer positive or negative.",
    ...         examples=[("Great value", "positive")],
    ...         user=pl.format("Review: {}", pl.col("text")),
    ...     )
    ... )
    >>> out.schema["messages"]
    List(Struct({'role': String, 'content': String}))
    >>> print(
    ...     out.select(
    ...         roles=pl.col("messages")
    ...         .list.eval(pl.element().struct.field("role"))
    ...         .list.join(","),
    ...         last=pl.col("messages").list.last().struct.field("content"),
    ...     )
    ... )
    shape: (3, 2)
    ┌────────────────────────────┬───────────────────────────┐
    │ roles                      ┆ last                      │
    │ ---                        ┆ ---                       │
    │ str                        ┆ str                       │
    ╞════════════════════════════╪═══════════════════════════╡
    │ system,user,assistant,user ┆ Review: I love it         │
    │ null                       ┆ null                      │
    │ system,user,assistant,user ┆ Review: Broken on arrival │
    └────────────────────────────┴───────────────────────────┘
    >>> out["messages"][2].to_list()[-1]
    {'role': 'user', 'content': 'Review: Broken on arrival'}
    """
    user_expr = _part(user, "user")
    system_expr = _optional_part(system, "system")
    assistant_expr = _optional_part(assistant, "assistant")
    if isinstance(examples, str | bytes | pl.Expr) or not isinstance(
        examples, Iterable
    ):
        msg = (
            "messages(): examples must be an iterable of (input, output) pairs, not "
            f"{type(examples).__name__}"
        )
        raise TypeError(msg)

    parts: list[pl.Expr] = []
    # a message whose content may be null for some rows is dropped from those rows
    may_be_null = False
    if system_expr is not None:
        parts.append(_message("system", system_expr))
        may_be_null |= isinstance(system, pl.Expr)
    for i, pair in enumerate(examples):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            msg = (
                f"messages(): examples[{i}] must be an (input, output) pair, not "
                f"{type(pair).__name__}"
                + (f" of length {len(pair)}" if isinstance(pair, tuple | list) else "")
            )
            raise TypeError(msg)
        ask = _part(pair[0], f"examples[{i}][0]")
        answer = _part(pair[1], f"examples[{i}][1]")
        if isinstance(pair[0], pl.Expr) or isinstance(pair[1], pl.Expr):
            # both messages of a pair, or neither
            ask, answer = (
                pl.when(answer.is_not_null()).then(ask),
                pl.when(ask.is_not_null()).then(answer),
            )
            may_be_null = True
        parts.append(_message("user", ask))
        parts.append(_message("assistant", answer))
    parts.append(_message("user", user_expr))
    if assistant_expr is not None:
        parts.append(_message("assistant", assistant_expr))
        may_be_null |= isinstance(assistant, pl.Expr)

    out = pl.concat_list(parts)
    if may_be_null:
        out = out.list.eval(
            pl.element().filter(pl.element().struct.field("content").is_not_null())
        )
    if isinstance(user, pl.Expr):
        out = pl.when(user_expr.is_not_null()).then(out)
    return out.alias("messages")
