"""Series to requests and results back to a Series. Not meant for outside use.

The column a job takes is String (one prompt per row) or a list of messages,
``List(Struct{role: String, content: C})``, where ``C`` is ``String`` (text) or a list
of parts, ``List(Struct{type: String, text: String, image_url: Struct{url: String,
detail: String}})`` (:data:`~polars_azurechat.prompts.PARTS_DTYPE`; every field but
``type`` may be missing or null): a text part ``{"type": "text", "text": ...}``, an
image part ``{"type": "image_url", "image_url": {"url": ..., "detail": ...}}``. An
image part's URL is ``https://`` or a base64 ``data:`` URL of PNG, JPEG, GIF or WEBP
bytes; a row with another, a broken data URL, or more images than Azure takes
(``_images.MAX_IMAGES``) fails alone with an :class:`InputError`, before any request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from polars_azurechat._images import DETAILS, MAX_IMAGES, url_problem
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

__all__ = [
    "check_dtype",
    "results_to_series",
    "rows_to_requests",
    "say_system_unsent",
    "series_to_requests",
    "to_requests",
]

logger = logging.getLogger(__name__)

#: Chunks of at least this many rows are converted through Arrow.
ARROW_MIN_ROWS = 4096


def _parts_dtype_problem(dtype: Any) -> str | None:
    """Why ``dtype`` is not a list of content parts, or ``None``."""
    if not (isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)):
        return "must be String or a List(Struct{type, text, image_url}) of parts"
    fields = {f.name: f.dtype for f in dtype.inner.fields}
    if fields.get("type") not in (pl.String, pl.Null):
        return "parts need a String field 'type'"
    if fields.get("text", pl.Null) not in (pl.String, pl.Null):
        return "a part's 'text' must be String"
    image = fields.get("image_url", pl.Null)
    if image == pl.Null:
        return None
    if not isinstance(image, pl.Struct) or any(
        f.name in ("url", "detail") and f.dtype not in (pl.String, pl.Null)
        for f in image.fields
    ):
        return "a part's 'image_url' must be Struct{url: String, detail: String}"
    return None


def check_dtype(dtype: pl.DataType) -> None:
    """Raise ``TypeError`` naming ``dtype`` unless the engine takes it.

    String, or ``List(Struct{role: String, content: C})`` with ``C`` String or a list
    of parts (see the module docstring). ``Null`` (a column whose every value is null)
    is accepted: every row stays null.
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
        wrong = [n for n in ("role",) if fields[n] not in (pl.String, pl.Null)]
        if fields["content"] not in (pl.String, pl.Null):
            problem = _parts_dtype_problem(fields["content"])
            if problem is not None:
                msg = f"messages struct {dtype.inner}: field 'content' {problem}"
                raise TypeError(msg)
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
    if dtype == pl.Binary or (isinstance(dtype, pl.List) and dtype.inner == pl.Binary):
        # image bytes: they go in a message, with its text
        msg += " (images: build the messages with polars_azurechat.messages(images=))"
    raise TypeError(msg)


def series_to_requests(
    series: pl.Series, *, system: str | None = None
) -> list[ChatRequest | None]:
    """Turn one Polars chunk into requests, one per row, ``None`` for a null row."""
    check_dtype(series.dtype)
    if series.dtype == pl.Null:
        return [None] * len(series)
    # Through Arrow is ~2x faster per row for nested data, but the first use imports
    # pyarrow (~100 ms): small chunks take the direct path. Polars' own string views
    # go to Arrow as they are: the default (large strings) copied every string, 70 us
    # a row for a 50 KB image's data URL.
    if len(series) < ARROW_MIN_ROWS:
        return rows_to_requests(series.to_list(), system=system)
    arrow = series.to_arrow(compat_level=pl.CompatLevel.newest())
    return rows_to_requests(arrow.to_pylist(), system=system)


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
    messages: list[dict[str, Any]] = []
    images = 0
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
        if isinstance(content, list | tuple):
            parts, problem = _parts(content, i, role)
            if problem is not None:
                return ChatRequest([], InputError(problem))
            images += sum(p["type"] == "image_url" for p in parts)
            messages.append({"role": role, "content": parts})
            continue
        if not isinstance(content, str):
            what = "null" if content is None else f"a {type(content).__name__}"
            return ChatRequest(
                [],
                InputError(f"message {i} content is {what}, not a string or parts"),
            )
        messages.append({"role": role, "content": content})
    if images > MAX_IMAGES:
        return ChatRequest(
            [],
            InputError(
                f"{images} images in one request; Azure takes at most {MAX_IMAGES}"
            ),
        )
    return ChatRequest(messages)


def _parts(
    content: Sequence[Any], i: int, role: str
) -> tuple[list[dict[str, Any]], str | None]:
    """Message ``i``'s parts as sent (null fields left out), or what is wrong."""
    parts: list[dict[str, Any]] = []
    if not content:
        return parts, f"message {i} has an empty list of parts"
    for j, part in enumerate(content):
        where = f"message {i} part {j}"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                return parts, f"{where} is a text part without a string 'text'"
            parts.append({"type": "text", "text": text})
        elif kind == "image_url":
            if role != "user":
                return parts, f"{where} is an image in a {role} message (user only)"
            image = part.get("image_url")
            if isinstance(image, str):
                return parts, (
                    f"{where}: image_url is a string; Azure takes "
                    "{'url': ..., 'detail': ...}"
                )
            image = image if isinstance(image, dict) else {}
            url, detail = image.get("url"), image.get("detail")
            problem = url_problem(url)
            if problem is not None:
                return parts, f"{where}: the image {problem}"
            if detail is not None and detail not in DETAILS:
                return parts, f"{where}: detail {detail!r} is not one of {DETAILS}"
            sent = {"url": url} if detail is None else {"url": url, "detail": detail}
            parts.append({"type": "image_url", "image_url": sent})
        else:
            shown = repr(kind)[:30] if isinstance(part, dict) else type(part).__name__
            return parts, f"{where} has type {shown}; expected 'text' or 'image_url'"
    return parts, None


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


#: Taken to warn once a job (Polars calls from several threads at once).
_SAY_ONCE = threading.Lock()


def say_system_unsent(
    reports: dict[str, Any], rows: pl.Series | list[Any], system: Any
) -> None:
    """Warn once a job (``reports``) that ``system=`` is not sent with messages."""
    if system is None or "sys" in reports:
        return
    if isinstance(rows, pl.Series):
        if not isinstance(rows.dtype, pl.List):
            return
        what = f"column {rows.name!r} holds"
    elif any(isinstance(row, list | tuple) for row in rows):
        what = "these rows hold"
    else:
        return
    with _SAY_ONCE:
        if "sys" in reports:
            return
        reports["sys"] = True
    logger.warning(
        "system= is for String prompts; %s message lists, which carry their own "
        "system message: system= is not sent",
        what,
    )


def to_requests(
    rows: pl.Series | Sequence[Any], system: str | None, reports: dict[str, Any]
) -> list[ChatRequest | None]:
    """A job's requests for ``rows`` (a column, or prompts and message lists).

    ``system`` goes before each String prompt; message lists carry their own (a
    warning says so once a job: ``reports``).
    """
    listed = rows if isinstance(rows, pl.Series) else list(rows)
    say_system_unsent(reports, listed, system)
    if isinstance(listed, pl.Series):
        return series_to_requests(listed, system=system)
    return rows_to_requests(listed, system=system)
