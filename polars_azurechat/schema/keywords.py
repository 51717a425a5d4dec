"""Typed answers: the keywords of a schema position the compiler reads or refuses.

Keywords that constrain values beyond the subset the compiler implements are refused
(:func:`refuse_keywords`); ``anyOf`` members take the keywords beside them
(:func:`union_members`); a ``type`` list names one kind (:func:`single_type`); numeric
limits and counts are checked at construction (:func:`numeric_limits`, :func:`count`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

from polars_azurechat.schema.errors import bad_value, unsupported
from polars_azurechat.schema.strict import is_null_schema

__all__ = [
    "count",
    "numeric_limits",
    "refuse_keywords",
    "single_type",
    "union_members",
]

#: Keywords that constrain values and that the walker does not implement: refused.
_REFUSED_KEYWORDS: Final = (
    "not",
    "if",
    "then",
    "else",
    "allOf",
    "oneOf",
    "patternProperties",
    "prefixItems",
    "contains",
    "minContains",
    "maxContains",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "unevaluatedProperties",
    "unevaluatedItems",
    "$dynamicRef",
    "$recursiveRef",
)


#: Keys beside ``anyOf`` that are not merged into its branches.
_UNION_IGNORED: Final = frozenset(
    {"anyOf", "title", "description", "examples", "$comment", "type", "enum", "const"}
)


def numeric_limits(schema: dict[str, Any], path: str) -> Callable[[float], None] | None:
    """The check of a number's bounds and ``multipleOf``, or ``None`` without any."""
    limits: list[tuple[str, float]] = []
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = schema.get(key)
        if bound is None:
            continue
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            raise unsupported(path, f"{key} must be a number, not {bound!r}")
        limits.append((key, bound))
    multiple = schema.get("multipleOf")
    if multiple is not None and (
        isinstance(multiple, bool)
        or not isinstance(multiple, int | float)
        or multiple <= 0
    ):
        raise unsupported(
            path, f"multipleOf must be a positive number, not {multiple!r}"
        )
    if not limits and multiple is None:
        return None

    def check(value: float) -> None:
        for key, bound in limits:
            if key == "minimum" and value < bound:
                rest = f"is less than the minimum of {bound}"
            elif key == "maximum" and value > bound:
                rest = f"is greater than the maximum of {bound}"
            elif key == "exclusiveMinimum" and value <= bound:
                rest = f"is less than or equal to the minimum of {bound}"
            elif key == "exclusiveMaximum" and value >= bound:
                rest = f"is greater than or equal to the maximum of {bound}"
            else:
                continue
            raise bad_value(value, rest, path)
        if multiple is not None:
            quotient = value / multiple
            if not math.isfinite(quotient) or int(quotient) != quotient:
                raise bad_value(value, f"is not a multiple of {multiple}", path)

    return check


def count(schema: dict[str, Any], key: str, path: str) -> int | None:
    """The non-negative integer ``schema[key]`` (``minLength``, ...), or ``None``."""
    value = schema.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise unsupported(path, f"{key} must be a non-negative integer, not {value!r}")
    return value


def refuse_keywords(schema: dict[str, Any], path: str) -> None:
    """Raise on the first keyword of :data:`_REFUSED_KEYWORDS` in ``schema``."""
    for bad in _REFUSED_KEYWORDS:
        if bad in schema:
            raise unsupported(
                path,
                f"the keyword {bad!r} is not supported (use plain types, and anyOf "
                "only to make a value nullable)",
            )


def union_members(schema: dict[str, Any]) -> Any:
    """The ``anyOf`` members, each with the keywords beside ``anyOf`` merged in."""
    members = schema["anyOf"]
    outer = {k: v for k, v in schema.items() if k not in _UNION_IGNORED}
    if outer and isinstance(members, list):
        # keywords beside anyOf (pydantic puts a field's format there) hold for every
        # branch
        members = [
            {**outer, **m} if isinstance(m, dict) and not is_null_schema(m) else m
            for m in members
        ]
    return members


def single_type(t: Any, path: str) -> tuple[Any, bool]:
    """The one non-null kind of a ``type`` and whether it also allows null."""
    if not isinstance(t, list):
        return t, False
    kinds = [k for k in t if k != "null"]
    if not kinds:
        raise unsupported(path, "a value that is always null has no use")
    if len(kinds) != 1:
        raise unsupported(
            path,
            f"type {t!r}: a value of several types has no single Polars dtype",
        )
    return kinds[0], len(kinds) < len(t)
