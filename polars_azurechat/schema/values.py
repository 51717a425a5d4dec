"""Typed answers: parsers of string formats and converters of already valid values.

The compiled validator parses dates, date-times and times with these; the converters
turn values already valid (pydantic's dumps, a plain model's instance) into the
column's values.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "Conv",
    "int_value",
    "json_text",
    "list_conv",
    "nullable_conv",
    "parse_datetime",
    "parse_time",
    "struct_conv",
    "utc",
]

#: A converter of one JSON value to the column's value.
Conv = Callable[[Any], Any]


def parse_datetime(time_zone: str | None) -> Callable[[str], dt.datetime]:
    """Parse to UTC; aware for a zoned column, the naive UTC wall time for a naive one."""
    aware = time_zone is not None

    def parse(text: str) -> dt.datetime:
        stamp = utc(dt.datetime.fromisoformat(text))
        return stamp if aware else stamp.replace(tzinfo=None)

    return parse


def parse_time(text: str) -> dt.time:
    """Parse a time of day (naive)."""
    # an offset cannot be applied to a time of day without a date: it is dropped
    return dt.time.fromisoformat(text).replace(tzinfo=None)


def nullable_conv(parse: Callable[[Any], Any]) -> Conv:
    """``parse`` that passes ``None`` through."""

    def conv(value: Any) -> Any:
        return None if value is None else parse(value)

    return conv


def int_value(value: Any) -> Any:
    """An integer value as ``int`` (``None`` passes through)."""
    # JSON Schema's "integer" takes 3.0; the Int64 column wants 3
    if value is None or type(value) is int:
        return value
    return int(value)


def json_text(value: Any) -> Any:
    """A value as a string: strings and ``None`` as they are, others as their JSON."""
    # the String column of an enum of mixed values: non-strings as their JSON text
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def list_conv(inner: Conv | None) -> Conv | None:
    """The converter of a list whose items ``inner`` converts (``None``: as is)."""
    if inner is None:
        return None

    def conv(value: Any) -> list[Any] | None:
        if value is None:
            return None
        return [inner(v) for v in value]

    return conv


def struct_conv(fields: Sequence[tuple[str, Conv | None]]) -> Conv:
    """Keep exactly the schema's fields (pydantic dumps computed fields and extras too)."""
    fields = tuple(fields)

    def conv(value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        get = value.get
        return {name: get(name) if c is None else c(get(name)) for name, c in fields}

    return conv


def utc(stamp: dt.datetime) -> dt.datetime:
    """``stamp`` as an aware UTC date-time."""
    # an answer without an offset is taken as UTC
    if stamp.tzinfo is None:
        return stamp.replace(tzinfo=dt.UTC)
    return stamp.astimezone(dt.UTC)
