"""Series to requests and results back to a Series. Not meant for outside use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from polars_azurechat._types import (
    ROLES,
    ChatRequest,
    ChatResult,
    OutputKind,
    result_dtype,
)
from polars_azurechat.errors import InputError

if TYPE_CHECKING:
    from polars_azurechat.schema.output import OutputSchema

__all__ = ["check_dtype", "results_to_series", "rows_to_requests", "series_to_requests"]

#: Chunks of at least this many rows are converted through Arrow.
ARROW_MIN_ROWS = 4096


def check_dtype(dtype: pl.DataType) -> None:
    """Raise ``TypeError`` naming ``dtype`` unless it is String or List(Struct{role, content}).

    ``Null`` (a column whose every value is null) is accepted: every row stays null.
    """
    if dtype == pl.String or dtype == pl.Null:
        return
    if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct):
        fields = {f.name: f.dtype for f in dtype.inner.fields}
        missing = [name for name in ("role", "content") if name not in fields]
        if missing:
            msg = (
                f"messages struct {dtype.inner} lacks field(s) {', '.join(missing)}: "
                "each message needs 'role' and 'content'"
            )
            raise TypeError(msg)
        wrong = [
            n for n in ("role", "content") if fields[n] not in (pl.String, pl.Null)
        ]
        if wrong:
            msg = (
                f"messages struct {dtype.inner}: field(s) {', '.join(wrong)} must be "
                "String"
            )
            raise TypeError(msg)
        return
    msg = (
        f"chat.complete() takes a String column of prompts or a "
        f"List(Struct{{role, content}}) column of messages, not {dtype}"
    )
    raise TypeError(msg)


def series_to_requests(
    series: pl.Series, *, system: str | None = None
) -> list[ChatRequest | None]:
    """Turn one Polars chunk into requests, one per row, ``None`` for a null row."""
    check_dtype(series.dtype)
    if series.dtype == pl.Null:
        return [None] * len(series)
    # Through Arrow is ~2x faster per row for nested data, but the first use imports
    # pyarrow (~100 ms): small chunks take the direct path.
    if len(series) < ARROW_MIN_ROWS:
        return rows_to_requests(series.to_list(), system=system)
    return rows_to_requests(series.to_arrow().to_pylist(), system=system)


def rows_to_requests(
    rows: Sequence[Any], *, system: str | None = None
) -> list[ChatRequest | None]:
    """Turn Python rows (prompt strings or message lists) into requests.

    A ``None`` row gives ``None``; a row that cannot be sent gives a request carrying an
    :class:`InputError` that says why (the row fails, the others go on).
    """
    out: list[ChatRequest | None] = []
    for row in rows:
        if row is None:
            out.append(None)
        elif isinstance(row, str):
            messages = [{"role": "user", "content": row}]
            if system is not None:
                messages.insert(0, {"role": "system", "content": system})
            out.append(ChatRequest(messages))
        else:
            out.append(_message_list(row))
    return out


def _message_list(row: Any) -> ChatRequest:
    if not isinstance(row, (list, tuple)):
        return ChatRequest(
            [],
            InputError(f"a row must be a list of messages, not {type(row).__name__}"),
        )
    if not row:
        return ChatRequest([], InputError("empty message list"))
    messages: list[dict[str, str]] = []
    for i, msg in enumerate(row):
        if msg is None:
            return ChatRequest([], InputError(f"message {i} is null"))
        if not isinstance(msg, dict):
            return ChatRequest(
                [],
                InputError(f"message {i} is a {type(msg).__name__}, not a struct/dict"),
            )
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            shown = (
                repr(role)
                if role is None or (isinstance(role, str) and len(role) < 30)
                else "?"
            )
            return ChatRequest(
                [],
                InputError(
                    f"message {i} has role {shown}; expected one of {sorted(ROLES)}"
                ),
            )
        if not isinstance(content, str):
            what = "null" if content is None else f"a {type(content).__name__}"
            return ChatRequest(
                [], InputError(f"message {i} content is {what}, not a string")
            )
        messages.append({"role": role, "content": content})
    return ChatRequest(messages)


def results_to_series(
    results: Sequence[ChatResult | None],
    *,
    output: OutputKind,
    name: str,
    schema: OutputSchema | None = None,
) -> pl.Series:
    """Build the result Series (one value per row, nulls where a row has no answer).

    With a ``schema`` (a typed answer), ``output="content"`` gives the parsed values
    (the schema's Struct) and ``output="struct"`` carries them as its ``parsed`` field.
    """
    if output == "struct":
        return _struct_series(results, name, schema)
    if schema is not None:
        return schema.series([None if r is None else r.parsed for r in results], name)
    return pl.Series(
        name, [None if r is None else r.content for r in results], dtype=pl.String
    )


def _struct_series(
    results: Sequence[ChatResult | None], name: str, schema: OutputSchema | None
) -> pl.Series:
    """``output="struct"`` built column by column (fast for nested typed answers)."""
    dtype = result_dtype(None if schema is None else schema.dtype)
    columns: list[pl.Series] = []
    for field in dtype.fields:
        if field.name == "parsed":
            assert schema is not None  # noqa: S101 - the field is there with a schema
            parsed = [None if r is None else r.parsed for r in results]
            columns.append(schema.series(parsed, "parsed"))
        elif field.name == "content_filter":
            flagged = [
                None
                if r is None or r.content_filter is None
                else list(r.content_filter)
                for r in results
            ]
            columns.append(pl.Series(field.name, flagged, dtype=field.dtype))
        else:
            values = [None if r is None else getattr(r, field.name) for r in results]
            columns.append(pl.Series(field.name, values, dtype=field.dtype))
    frame = pl.DataFrame(columns)
    struct = pl.struct(pl.all())
    if any(r is None for r in results):  # a null row is a null struct, not one of nulls
        present = pl.Series([r is not None for r in results])
        struct = pl.when(present).then(struct)
    out = frame.select(struct.alias(name)).to_series()
    if out.dtype != dtype:  # pragma: no cover - every column has its declared dtype
        out = out.cast(dtype)
    return out
