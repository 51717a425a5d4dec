"""Polars dtypes, Arrow types and Spark types of the columns. Not meant for outside use.

Spark plans a ``mapInArrow`` from the output schema it is given, before anything runs,
and reads back exactly the Arrow types that schema maps to. The answer columns are
built by Polars (``large_string``, dictionaries for enums, ``fixed_size_list`` for
vectors), so each is cast to the type Spark expects (:func:`spark_arrow_type`) on the
way out; the input columns are handed back untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["plain_arrow_type", "polars_dtype_of", "spark_arrow_type", "spark_type_of"]


def plain_arrow_type(t: pa.DataType) -> pa.DataType:
    """``t`` in the Arrow types Spark maps: no large, view, dictionary or fixed-size types.

    Examples
    --------
    >>> import pyarrow as pa
    >>> plain_arrow_type(pa.struct([("v", pa.list_(pa.large_string(), 2))]))
    StructType(struct<v: list<item: string>>)
    """
    import pyarrow as pa

    types = pa.types
    if types.is_dictionary(t):
        return plain_arrow_type(t.value_type)
    if types.is_large_string(t) or types.is_string_view(t):
        return pa.string()
    if types.is_large_binary(t) or types.is_binary_view(t):
        return pa.binary()
    if (
        types.is_list(t)
        or types.is_large_list(t)
        or types.is_fixed_size_list(t)
        or types.is_list_view(t)
        or types.is_large_list_view(t)
    ):
        return pa.list_(plain_arrow_type(t.value_type))
    if types.is_struct(t):
        return pa.struct([pa.field(f.name, plain_arrow_type(f.type)) for f in t])
    return t


def spark_type_of(dtype: pl.DataType) -> Any:
    """The Spark type of a Polars dtype (through its Arrow type).

    Raises
    ------
    TypeError
        Spark has no type for it (an unsigned integer, for instance).
    """
    from pyspark.sql.pandas.types import from_arrow_type

    empty = pl.Series("x", [], dtype=dtype).to_arrow(
        compat_level=pl.CompatLevel.oldest()
    )
    try:
        return from_arrow_type(plain_arrow_type(empty.type))
    except Exception as exc:  # noqa: BLE001 - pyspark raises its own error classes
        msg = f"Spark has no type for a column of {dtype} ({type(exc).__name__})"
        raise TypeError(msg) from None


def spark_arrow_type(spark_type: Any, *, large: bool) -> pa.DataType:
    """The Arrow type Spark reads a column of ``spark_type`` as."""
    from pyspark.sql.pandas.types import to_arrow_type

    return to_arrow_type(spark_type, prefers_large_types=large)


def polars_dtype_of(spark_type: Any) -> pl.DataType:
    """The Polars dtype a column of ``spark_type`` arrives as (to check it up front)."""
    import pyarrow as pa

    t = spark_arrow_type(spark_type, large=False)
    return pl.Series("x", pa.array([], type=t)).dtype
