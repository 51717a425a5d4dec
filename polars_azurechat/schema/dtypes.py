"""Typed answers: a ``pl.Struct`` dtype to its strict JSON schema.

:func:`from_dtype` gives the schema Azure is sent for a Struct given as the answer's
type: every field required and not nullable, integer dtypes narrower than ``Int64``
bounded, and each ``Datetime``'s time zone noted for the compiler.
"""

from __future__ import annotations

from typing import Any, Final

import polars as pl

from polars_azurechat.schema.errors import join_path, unsupported

__all__ = ["from_dtype"]

#: Bounds of the integer dtypes narrower than Int64 (the model is told, and checked).
_INT_BOUNDS: Final = {
    pl.Int8: (-(2**7), 2**7 - 1),
    pl.Int16: (-(2**15), 2**15 - 1),
    pl.Int32: (-(2**31), 2**31 - 1),
    pl.UInt8: (0, 2**8 - 1),
    pl.UInt16: (0, 2**16 - 1),
    pl.UInt32: (0, 2**32 - 1),
    pl.UInt64: (0, 2**64 - 1),
}


def from_dtype(
    dtype: Any, path: str, time_zones: dict[str, str | None]
) -> dict[str, Any]:
    """The strict schema of a dtype; ``time_zones`` collects each Datetime's zone."""
    dtype = _dtype_instance(dtype, path)
    schema = _scalar_schema(dtype, path, time_zones)
    if schema is not None:
        return schema
    if isinstance(dtype, pl.List | pl.Array):
        return _array_schema(dtype, path, time_zones)
    if isinstance(dtype, pl.Struct):
        return _struct_schema(dtype, path, time_zones)
    raise unsupported(
        path,
        f"{dtype} has no JSON-schema counterpart (use String, integers, floats, "
        "Boolean, Enum, Date, Datetime, Time, List, Array or Struct)",
    )


def _dtype_instance(dtype: Any, path: str) -> Any:
    """``dtype``, a bare class (``pl.String``, ``pl.Int64``) made its default."""
    if isinstance(dtype, type) and issubclass(dtype, pl.DataType):
        try:
            return dtype()  # pl.String, pl.Int64, ...: the class means its default
        except TypeError:
            raise unsupported(
                path, f"give {dtype.__name__} with its parameters, not the bare class"
            ) from None
    return dtype


def _scalar_schema(
    dtype: Any, path: str, time_zones: dict[str, str | None]
) -> dict[str, Any] | None:
    """The strict schema of a dtype without inner dtypes, or ``None`` for others."""
    if dtype == pl.String or dtype == pl.Categorical:
        return {"type": "string"}
    if isinstance(dtype, pl.Enum):
        return {"type": "string", "enum": dtype.categories.to_list()}
    if dtype.is_integer():
        bounds = _INT_BOUNDS.get(type(dtype))
        if bounds is None:
            return {"type": "integer"}
        return {"type": "integer", "minimum": bounds[0], "maximum": bounds[1]}
    if dtype.is_float():
        return {"type": "number"}
    if dtype == pl.Boolean:
        return {"type": "boolean"}
    if dtype == pl.Date:
        return {"type": "string", "format": "date"}
    if isinstance(dtype, pl.Datetime):
        time_zones[path] = dtype.time_zone
        return {"type": "string", "format": "date-time"}
    if dtype == pl.Time:
        return {"type": "string", "format": "time"}
    return None


def _array_schema(
    dtype: pl.List | pl.Array, path: str, time_zones: dict[str, str | None]
) -> dict[str, Any]:
    """The strict schema of a List or Array: its items' schema, an Array's size."""
    schema: dict[str, Any] = {
        "type": "array",
        "items": from_dtype(dtype.inner, f"{path}[]", time_zones),
    }
    if isinstance(dtype, pl.Array):
        schema["minItems"] = schema["maxItems"] = dtype.size
    return schema


def _struct_schema(
    dtype: pl.Struct, path: str, time_zones: dict[str, str | None]
) -> dict[str, Any]:
    """The strict schema of a Struct: an object of its fields, all required."""
    if not dtype.fields:
        raise unsupported(path, "a Struct without fields has no use")
    props = {
        f.name: from_dtype(f.dtype, join_path(path, f.name), time_zones)
        for f in dtype.fields
    }
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }
