"""Typed answers: a user's output type as a strict JSON schema, a Polars dtype and a parser.

:class:`OutputSchema` is built once per job from what the user gives as the answer's
type (a pydantic model, a JSON-schema dict or a ``pl.Struct`` dtype). Everything a
request needs and every check that can fail without one happens at construction:

- :attr:`OutputSchema.response_format`: the body field Azure's structured outputs take,
  in strict mode (every object ``additionalProperties: false``, every property
  ``required``, an optional property expressed as nullable);
- :attr:`OutputSchema.dtype`: the Polars dtype of the parsed answers, known before any
  request, so ``map_batches`` can declare its ``return_dtype``;
- constructs with no Polars dtype (a union of different types, a free-form dict, a
  recursive model, ...) raise ``TypeError`` naming the field path.

Per answer, :meth:`OutputSchema.parse` validates the text and returns Python values
ready for the column (dates as :class:`datetime.date`, enums as ``str``), raising
:class:`SchemaMismatchError` with the field path when the answer breaks the schema, and
:meth:`OutputSchema.series` builds the Struct column from parsed rows.

Type mapping (JSON schema -> Polars)
------------------------------------
============================================  ===================================
``string``                                    ``String``
``string`` with ``format: date``              ``Date``
``string`` with ``format: date-time``         ``Datetime("us", "UTC")`` (see below)
``string`` with ``format: time``              ``Time``
``string`` with another format                ``String``
``integer``                                   ``Int64``
``number``                                    ``Float64``
``boolean``                                   ``Boolean``
``array`` of T                                ``List(T)``
``object`` with ``properties``                ``Struct`` (fields in schema order)
``enum``/``const`` of strings                 ``Enum`` of the values, in order
``enum`` of integers / numbers / booleans     ``Int64`` / ``Float64`` / ``Boolean``
``enum`` of mixed values                      ``String`` (non-strings as their JSON)
nullable (``["T", "null"]``, ``anyOf`` null)  the dtype of T (Polars columns are nullable)
``$ref`` to ``$defs``/``definitions``         the dtype of the target
============================================  ===================================

Date-times: every ``date-time`` answer becomes an aware UTC value in a
``Datetime("us", "UTC")`` column: an offset in the answer is converted to UTC; an
answer without one is taken as UTC. (A ``pl.Struct`` input keeps its own ``Datetime``
unit and time zone; a naive ``Datetime`` there gets the UTC wall time.)

pydantic validates a pydantic model's answers. A plain model (no validator or
serializer of its own, only the types of the table) has its values read straight from
the validated instance; any other model is dumped to JSON values
(``model_dump(mode="json", by_alias=True)``) and converted by the same rules. Either
way a pydantic model and the equivalent dict schema give the same column.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import logging
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any, Final, Literal

import polars as pl

from polars_azurechat.schema.errors import (
    SchemaMismatchError,
    bad_value,
    join_path,
    kind_of,
    show,
    unsupported,
)
from polars_azurechat.schema.strict import defs, is_null_schema, to_strict
from polars_azurechat.schema.values import (
    Conv,
    int_value,
    json_text,
    list_conv,
    nullable_conv,
    parse_datetime,
    parse_time,
    struct_conv,
    utc,
)

__all__ = ["OutputSchema"]

logger = logging.getLogger(__name__)

#: What ``json_schema.name`` may be (Azure and OpenAI refuse anything else).
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: The ``json_schema.name`` used when the user's type gives none.
DEFAULT_NAME: Final = "answer"
#: ``series``: from this many rows on, the column is built through Arrow.
ARROW_MIN_ROWS: Final = 1024
#: ``schema_tokens``: characters of compact JSON per token (the usual rule of thumb).
CHARS_PER_TOKEN: Final = 4
_ACCEPTS: Final = (
    "a pydantic BaseModel subclass, a JSON-schema dict (an object schema or "
    '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}), '
    "or a pl.Struct dtype"
)

#: What an :class:`OutputSchema` was built from.
Source = Literal["pydantic", "json_schema", "struct"]


# ---------------------------------------------------------------------------------------
# Compiling: strict schema -> Polars dtype, validator and converter; refuses what has no
# dtype. An own walker rather than the ``jsonschema`` library: the compiler already
# limits schemas to a small subset (the one strict mode and Polars dtypes share), the
# validator is compiled once into closures (10-25 us per answer where jsonschema takes
# ~300 us: 6 s of CPU per 20,000 rows), it converts in the same pass, and it adds no
# dependency. Validation keywords outside the subset are refused at construction, so
# nothing in a schema is silently left unchecked (but ``format`` values other than
# date, date-time and time, which are annotations in JSON Schema too).

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


@dataclasses.dataclass(frozen=True, slots=True)
class _Node:
    """One schema position: its dtype, its validator-converter, its converter."""

    dtype: pl.DataType
    #: validates a JSON value (``None`` included) and returns it for the column
    check: Conv
    #: converts a value already valid (pydantic's dump); ``None``: used as is
    conv: Conv | None


def _nullable_node(node: _Node) -> _Node:
    inner = node.check

    def check(value: Any) -> Any:
        return None if value is None else inner(value)

    return _Node(node.dtype, check, node.conv)


def _type_error(path: str, value: Any, kind: str) -> SchemaMismatchError:
    return bad_value(value, f"is not of type {kind!r}", path)


def _numeric_limits(
    schema: dict[str, Any], path: str
) -> Callable[[float], None] | None:
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


def _count(schema: dict[str, Any], key: str, path: str) -> int | None:
    value = schema.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise unsupported(path, f"{key} must be a non-negative integer, not {value!r}")
    return value


def _refuse_keywords(schema: dict[str, Any], path: str) -> None:
    """Raise on the first keyword of :data:`_REFUSED_KEYWORDS` in ``schema``."""
    for bad in _REFUSED_KEYWORDS:
        if bad in schema:
            raise unsupported(
                path,
                f"the keyword {bad!r} is not supported (use plain types, and anyOf "
                "only to make a value nullable)",
            )


def _union_members(schema: dict[str, Any]) -> Any:
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


def _single_type(t: Any, path: str) -> tuple[Any, bool]:
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


class _Compiler:
    """Strict schema -> :class:`_Node` tree.

    ``time_zones`` gives the time zone of the ``Datetime`` at a path (a ``pl.Struct``
    input says it); elsewhere date-times are UTC.
    """

    def __init__(
        self, root: dict[str, Any], time_zones: Mapping[str, str | None] | None = None
    ) -> None:
        self.defs = defs(root)
        self.time_zones = time_zones or {}
        self.resolving: list[str] = []

    def compile(self, schema: Any, path: str) -> _Node:
        if not isinstance(schema, dict):
            raise unsupported(path, f"a schema must be an object, not {schema!r}")
        if "$ref" in schema:
            return self.ref(schema["$ref"], path)
        _refuse_keywords(schema, path)
        if "anyOf" in schema:
            return self.union(_union_members(schema), path)
        t, nullable = _single_type(schema.get("type"), path)
        if "enum" in schema or "const" in schema:
            values = schema["enum"] if "enum" in schema else [schema["const"]]
            node = self.enum(values, path)
            nullable = nullable or (isinstance(values, list) and None in values)
        else:
            node = self.typed(schema, t, path)
        return _nullable_node(node) if nullable else node

    def typed(self, schema: dict[str, Any], t: Any, path: str) -> _Node:
        """The node of a schema by its (single, non-null) ``type`` ``t``."""
        if t == "string":
            return self.string(schema, path)
        if t == "integer":
            return self.number(schema, path, integer=True)
        if t == "number":
            return self.number(schema, path, integer=False)
        if t == "boolean":
            return self.boolean(path)
        if t == "array":
            return self.array(schema, path)
        if t == "object" or "properties" in schema:
            return self.object(schema, path)
        if t == "null":
            raise unsupported(path, "a value that is always null has no use")
        raise unsupported(
            path,
            f"no supported 'type' (got {t!r}); a value of any type has no dtype",
        )

    def ref(self, ref: Any, path: str) -> _Node:
        if ref not in self.defs:
            raise unsupported(path, f"$ref {ref!r} is not in $defs/definitions")
        if ref in self.resolving:
            raise unsupported(
                path, f"$ref {ref!r} is recursive: a recursive type has no Polars dtype"
            )
        self.resolving.append(ref)
        try:
            return self.compile(self.defs[ref], path)
        finally:
            self.resolving.pop()

    def union(self, members: Any, path: str) -> _Node:
        if not isinstance(members, list):
            raise unsupported(path, "anyOf must be a list")
        rest = [m for m in members if not is_null_schema(m)]
        if not rest:
            raise unsupported(path, "a value that is always null has no use")
        nodes = [self.compile(m, path) for m in rest]
        dtypes = {repr(n.dtype) for n in nodes}
        if len(dtypes) > 1:
            raise unsupported(
                path,
                f"a union of {' | '.join(sorted(dtypes))} has no single Polars dtype "
                "(make it one type, or one object type with optional fields)",
            )
        node = nodes[0]
        if len(nodes) > 1:  # one dtype, several constraints: the first that fits
            checks = [n.check for n in nodes]

            def check(value: Any) -> Any:
                problems, safe = [], []
                for c in checks:
                    try:
                        return c(value)
                    except SchemaMismatchError as err:
                        problems.append(err.problem)
                        safe.append(err.safe_problem)
                rest = "is not valid under any of the given schemas"
                raise SchemaMismatchError(
                    f"{show(value)} {rest} ({'; '.join(problems)})",
                    path=path,
                    safe=f"{kind_of(value)} {rest} ({'; '.join(safe)})",
                )

            node = _Node(node.dtype, check, node.conv)
        return _nullable_node(node) if len(rest) < len(members) else node

    def enum(self, values: Any, path: str) -> _Node:
        if not isinstance(values, list):
            raise unsupported(path, "enum must be a list")
        present = [v for v in values if v is not None]
        if not present:
            raise unsupported(path, "an enum of only null has no use")
        shown = f"is not one of {present!r}"
        if all(isinstance(v, str) for v in present):
            allowed = frozenset(present)

            def check_str(value: Any) -> Any:
                if type(value) is str and value in allowed:
                    return value
                raise bad_value(value, shown, path)

            return _Node(pl.Enum(list(dict.fromkeys(present))), check_str, None)
        # JSON equality: 1 == 1.0, but true is not 1
        keyed = [(isinstance(v, bool), v) for v in present]

        def matches(value: Any) -> bool:
            return (isinstance(value, bool), value) in keyed

        dtype: pl.DataType
        conv: Conv | None = None
        if all(isinstance(v, bool) for v in present):
            dtype = pl.Boolean()
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            dtype, conv = pl.Int64(), int_value
        elif all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in present
        ):
            dtype = pl.Float64()
        else:
            dtype, conv = pl.String(), json_text
        final = conv

        def check(value: Any) -> Any:
            if value is not None and matches(value):
                return value if final is None else final(value)
            raise bad_value(value, shown, path)

        return _Node(dtype, check, conv)

    def string(self, schema: dict[str, Any], path: str) -> _Node:
        fmt = schema.get("format")
        parse: Callable[[str], Any] | None = None
        dtype: pl.DataType = pl.String()
        if fmt == "date":
            parse, dtype = dt.date.fromisoformat, pl.Date()
        elif fmt == "date-time":
            zone = self.time_zones.get(path, "UTC")
            parse, dtype = parse_datetime(zone), pl.Datetime("us", zone)
        elif fmt == "time":
            parse, dtype = parse_time, pl.Time()
        pattern = schema.get("pattern")
        regex = None
        if pattern is not None:
            try:
                regex = re.compile(pattern)
            except (re.error, TypeError) as err:
                raise unsupported(
                    path, f"pattern {pattern!r} is invalid: {err}"
                ) from None
        shortest = _count(schema, "minLength", path)
        longest = _count(schema, "maxLength", path)
        plain = regex is None and shortest is None and longest is None

        def check(value: Any) -> Any:
            if type(value) is not str:
                raise _type_error(path, value, "string")
            if not plain:
                if shortest is not None and len(value) < shortest:
                    raise bad_value(
                        value, f"is shorter than {shortest} characters", path
                    )
                if longest is not None and len(value) > longest:
                    raise bad_value(value, f"is longer than {longest} characters", path)
                if regex is not None and regex.search(value) is None:
                    raise bad_value(value, f"does not match {pattern!r}", path)
            if parse is None:
                return value
            try:
                return parse(value)
            except ValueError:
                raise bad_value(value, f"is not a valid {fmt}", path) from None

        return _Node(dtype, check, None if parse is None else nullable_conv(parse))

    def number(self, schema: dict[str, Any], path: str, *, integer: bool) -> _Node:
        limits = _numeric_limits(schema, path)
        if integer:

            def check(value: Any) -> Any:
                kind = type(value)
                if kind is not int:
                    if kind is float and value.is_integer():
                        value = int(value)
                    else:
                        raise _type_error(path, value, "integer")
                if limits is not None:
                    limits(value)
                return value

            return _Node(pl.Int64(), check, int_value)

        def check_number(value: Any) -> Any:
            kind = type(value)
            if kind is not float and kind is not int:
                raise _type_error(path, value, "number")
            if limits is not None:
                limits(value)
            return value

        return _Node(pl.Float64(), check_number, None)

    def boolean(self, path: str) -> _Node:
        def check(value: Any) -> Any:
            if type(value) is bool:
                return value
            raise _type_error(path, value, "boolean")

        return _Node(pl.Boolean(), check, None)

    def array(self, schema: dict[str, Any], path: str) -> _Node:
        items = schema.get("items")
        if not isinstance(items, dict) or not items:
            raise unsupported(
                path,
                "an array needs an 'items' schema (a list of anything has no dtype)",
            )
        inner = self.compile(items, f"{path}[]")
        fewest = _count(schema, "minItems", path)
        most = _count(schema, "maxItems", path)
        unique = schema.get("uniqueItems") is True
        item = inner.check
        prefix = f"{path}[]"

        def check(value: Any) -> Any:
            if type(value) is not list:
                raise _type_error(path, value, "array")
            if fewest is not None and len(value) < fewest:
                raise bad_value(value, f"has fewer than {fewest} items", path)
            if most is not None and len(value) > most:
                raise bad_value(value, f"has more than {most} items", path)
            if unique:
                seen = {json.dumps(v, sort_keys=True) for v in value}
                if len(seen) < len(value):
                    raise bad_value(value, "has non-unique elements", path)
            out = []
            for i, v in enumerate(value):
                try:
                    out.append(item(v))
                except SchemaMismatchError as err:
                    # name the item: "tags[]..." -> "tags[2]..."
                    where = join_path(path, i) + err.path[len(prefix) :]
                    raise SchemaMismatchError(
                        err.problem, path=where, safe=err.safe_problem
                    ) from None
            return out

        return _Node(pl.List(inner.dtype), check, list_conv(inner.conv))

    def object(self, schema: dict[str, Any], path: str) -> _Node:
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            raise unsupported(
                path,
                "additionalProperties with a schema (a dict of any keys) has no Polars "
                "dtype; list its fields instead",
            )
        if not isinstance(props, dict) or not props:
            raise unsupported(
                path,
                "an object without 'properties' (a free-form dict) has no Polars "
                "dtype; list its fields, or make it a string",
            )
        nodes = {
            name: self.compile(sub, join_path(path, name))
            for name, sub in props.items()
        }
        names = tuple(nodes)
        keys = frozenset(names)
        checks = tuple((name, node.check) for name, node in nodes.items())

        def check(value: Any) -> Any:
            if type(value) is not dict:
                raise _type_error(path, value, "object")
            if value.keys() != keys:
                missing = [k for k in names if k not in value]
                if missing:
                    raise SchemaMismatchError(
                        f"{missing[0]!r} is a required property", path=path
                    )
                unexpected = [k for k in value if k not in keys]
                extra = ", ".join(repr(k) for k in unexpected)
                raise SchemaMismatchError(
                    f"additional properties are not allowed ({extra} unexpected)",
                    path=path,
                    safe=f"additional properties are not allowed ({len(unexpected)} "
                    "unexpected)",
                )
            return {name: c(value[name]) for name, c in checks}

        return _Node(
            pl.Struct([pl.Field(name, node.dtype) for name, node in nodes.items()]),
            check,
            struct_conv([(name, node.conv) for name, node in nodes.items()]),
        )


# ---------------------------------------------------------------------------------------
# pl.Struct dtype -> strict schema.

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


def _from_dtype(
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
        "items": _from_dtype(dtype.inner, f"{path}[]", time_zones),
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
        f.name: _from_dtype(f.dtype, join_path(path, f.name), time_zones)
        for f in dtype.fields
    }
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


# ---------------------------------------------------------------------------------------
# pydantic: the column's values read straight from a validated instance.
#
# ``model_dump(mode="json")`` then the converters above give the column's values from any
# model, but cost two walks more per answer (about 3 us warm, 14 us in the middle of a
# busy event loop, where the caches are cold). For a model whose values are exactly
# what it validated (no custom validator or serializer anywhere, only the plain types
# below), a reader compiled once per model copies them from the instances' ``__dict__``:
# the same values (a test compares the two ways), a fraction of the work. Any other
# model keeps the dump.


class _NotPlain(Exception):  # noqa: N818 - internal signal, never escapes
    """The model needs its dump: a custom validator or serializer, or another type."""


#: pydantic's ``Annotated`` metadata that only constrains a value (with every class of
#: the ``annotated_types`` module): others (``GetPydanticSchema``, ``EncodedStr``, a
#: validator or serializer) may change it, and keep the dump.
_CONSTRAINTS: Final = frozenset(
    {"FieldInfo", "Strict", "StringConstraints", "AllowInfNan"}
)


def _pydantic_reader(model: Any, dtype: pl.Struct) -> Conv | None:
    """Column values straight from a validated ``model`` instance, or ``None``.

    ``None`` when a value may differ from what its type says (a custom validator or
    serializer, a ``model_post_init``) or a type is not one the reader knows: the
    answer is then dumped and converted as before.
    """
    try:
        return _model_reader(model, dtype, ())
    except _NotPlain as why:
        logger.debug("%s: answers go through model_dump (%s)", model.__name__, why)
        return None


def _model_reader(model: Any, dtype: Any, seen: tuple[Any, ...]) -> Conv:
    if not isinstance(dtype, pl.Struct) or model in seen:
        raise _NotPlain(f"{model.__name__} is not a plain Struct")
    decorators = model.__pydantic_decorators__
    for kind in (
        "validators",
        "field_validators",
        "root_validators",
        "field_serializers",
        "model_serializers",
        "model_validators",
    ):
        if getattr(decorators, kind, None):
            raise _NotPlain(f"{model.__name__} has {kind.replace('_', ' ')}")
    if getattr(model, "__pydantic_post_init__", None) is not None:
        raise _NotPlain(f"{model.__name__} has a model_post_init")
    fields = model.model_fields
    if len(fields) != len(dtype.fields):
        raise _NotPlain(f"{model.__name__}: its fields are not the schema's")
    readers: list[tuple[str, str, Conv | None]] = []
    for (attr, info), column in zip(fields.items(), dtype.fields, strict=True):
        key = info.serialization_alias or info.alias or attr
        if key != column.name or info.validation_alias not in (None, info.alias):
            raise _NotPlain(f"{model.__name__}.{attr}: its alias is not the schema's")
        _check_metadata(info.metadata, f"{model.__name__}.{attr}")
        reader = _value_reader(info.annotation, column.dtype, (*seen, model))
        readers.append((column.name, attr, reader))
    plan = tuple(readers)

    def read(obj: Any) -> dict[str, Any] | None:
        if obj is None:
            return None
        values = obj.__dict__
        return {
            name: values[attr] if r is None else r(values[attr])
            for name, attr, r in plan
        }

    return read


def _check_metadata(metadata: Sequence[Any], where: str) -> None:
    for m in metadata:
        kind = type(m)
        if kind.__module__ == "annotated_types":
            continue
        if kind.__module__.startswith("pydantic.") and kind.__name__ in _CONSTRAINTS:
            continue
        raise _NotPlain(f"{where}: {kind.__name__}")


def _value_reader(annotation: Any, dtype: Any, seen: tuple[Any, ...]) -> Conv | None:
    """A reader for one validated value, ``None`` when it is the column's value as is."""
    import pydantic

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        _check_metadata(args[1:], str(annotation))
        return _value_reader(args[0], dtype, seen)
    if origin is typing.Union or origin is types.UnionType:
        present = [a for a in args if a is not type(None)]
        if len(present) != 1:
            raise _NotPlain(f"{annotation}: a union")
        inner = _value_reader(present[0], dtype, seen)
        return None if inner is None else nullable_conv(inner)
    if origin is typing.Literal:
        kinds = {type(a) for a in args if a is not None}
        if (kinds == {str} and isinstance(dtype, pl.Enum | pl.String)) or (
            (kinds == {int} and dtype == pl.Int64)
            or (kinds == {bool} and dtype == pl.Boolean)
        ):
            return None
        raise _NotPlain(f"{annotation}: a Literal of {kinds}")
    if origin is list and len(args) == 1 and isinstance(dtype, pl.List):
        item = _value_reader(args[0], dtype.inner, seen)
        return None if item is None else list_conv(item)
    if origin is not None or not isinstance(annotation, type):
        raise _NotPlain(f"{annotation}: not a plain type")
    if issubclass(annotation, pydantic.BaseModel):
        return _model_reader(annotation, dtype, seen)
    if issubclass(annotation, Enum):
        kinds = {type(m.value) for m in annotation}
        if (kinds == {str} and isinstance(dtype, pl.Enum | pl.String)) or (
            kinds == {int} and dtype == pl.Int64
        ):
            return _enum_value
        raise _NotPlain(f"{annotation.__name__}: an enum of {kinds}")
    plain = {str: pl.String, int: pl.Int64, float: pl.Float64, bool: pl.Boolean}
    if annotation in plain and dtype == plain[annotation]:
        return None
    if annotation is dt.datetime and dtype == pl.Datetime("us", "UTC"):
        return nullable_conv(utc)
    if annotation is dt.date and dtype == pl.Date:
        return None
    if annotation is dt.time and dtype == pl.Time:
        return nullable_conv(_time_of_day)
    raise _NotPlain(f"{annotation.__name__} as {dtype}")


def _enum_value(value: Any) -> Any:
    # use_enum_values=True keeps the value itself
    return value.value if isinstance(value, Enum) else value


def _time_of_day(value: dt.time) -> dt.time:
    return value.replace(tzinfo=None)


# ---------------------------------------------------------------------------------------


def _valid_name(name: Any) -> str:
    """``name`` made a valid ``json_schema.name`` (invalid characters become ``_``)."""
    if not isinstance(name, str) or not name:
        return DEFAULT_NAME
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]


def _is_pydantic_model(obj: Any) -> bool:
    # pydantic is not imported unless the user's code imported it (import cost)
    pydantic = sys.modules.get("pydantic")
    return (
        pydantic is not None
        and isinstance(obj, type)
        and issubclass(obj, pydantic.BaseModel)
    )


class OutputSchema:
    """The type of a typed answer: strict ``response_format``, Polars dtype and parser.

    Build it with :meth:`from_user`. It is immutable; one instance serves a whole job
    and any number of threads.

    Attributes
    ----------
    name : str
        The ``json_schema.name`` sent (``^[A-Za-z0-9_-]{1,64}$``).
    dtype : pl.Struct
        The Polars dtype of parsed answers (see the module docstring for the mapping).
    source : {"pydantic", "json_schema", "struct"}
        ``"pydantic"``, ``"json_schema"`` or ``"struct"``: what it was built from.

    Examples
    --------
    >>> import polars as pl
    >>> from pydantic import BaseModel
    >>> from typing import Literal
    >>> class Ticket(BaseModel):
    ...     title: str
    ...     priority: Literal["low", "high"]
    ...     hours: float | None
    >>> schema = OutputSchema.from_user(Ticket)
    >>> schema.dtype
    Struct({'title': String, 'priority': Enum(categories=['low', 'high']), 'hours': Float64})
    >>> row = schema.parse('{"title": "printer", "priority": "high", "hours": null}')
    >>> row
    {'title': 'printer', 'priority': 'high', 'hours': None}
    >>> schema.series([row, None]).to_list()
    [{'title': 'printer', 'priority': 'high', 'hours': None}, None]
    """

    __slots__ = (
        "_arrow_type",
        "_format",
        "_invalid",
        "_model",
        "_node",
        "_read",
        "_tokens",
        "_validate",
        "dtype",
        "name",
        "source",
    )

    def __init__(
        self,
        *,
        name: str,
        schema: dict[str, Any],
        dtype: pl.Struct,
        node: _Node,
        source: Source,
        model: Any = None,
        description: str | None = None,
    ) -> None:
        # private: use from_user()
        self.name = name
        self.dtype = dtype
        self.source = source
        self._node = node
        self._model = model
        self._arrow_type: Any = None
        self._read: Conv | None = None
        if model is not None:
            import pydantic

            # what model_validate_json calls, without its Python frame
            self._validate = model.__pydantic_validator__.validate_json
            self._invalid = pydantic.ValidationError
            self._read = _pydantic_reader(model, dtype)
        json_schema: dict[str, Any] = {"name": name, "strict": True, "schema": schema}
        if description:
            json_schema["description"] = description
        self._format: dict[str, Any] = {
            "type": "json_schema",
            "json_schema": json_schema,
        }
        self._tokens = math.ceil(
            len(json.dumps(self._format, separators=(",", ":"))) / CHARS_PER_TOKEN
        )

    def __repr__(self) -> str:
        return f"OutputSchema(name={self.name!r}, source={self.source!r}, dtype={self.dtype!r})"

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_user(cls, obj: Any) -> OutputSchema:
        """Build the output schema from what the user gave as the answer's type.

        Parameters
        ----------
        obj
            One of:

            - a pydantic ``BaseModel`` subclass: its JSON schema
              (``model_json_schema()``, aliases used) made strict; every field is
              required (a field with a default too: strict mode has no optional
              field), a field whose type allows ``None`` is nullable; answers are
              validated by pydantic;
            - a JSON-schema dict whose root is an object schema, or the OpenAI shape
              ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}``
              (``strict`` is always sent as true); a property missing from
              ``required`` becomes required and nullable;
            - a ``pl.Struct`` dtype: every field is required and not nullable (a
              Struct cannot say otherwise), and :attr:`dtype` is that Struct;
            - an ``OutputSchema``, returned as is.

        Returns
        -------
        OutputSchema

        Raises
        ------
        TypeError
            ``obj`` is none of these, or part of the schema has no Polars dtype (a
            union of different types, a free-form dict, a recursive type, ...); the
            message names the field path.
        ValueError
            The OpenAI shape is malformed (no ``schema``, an invalid ``name``).

        Examples
        --------
        >>> import polars as pl
        >>> OutputSchema.from_user(
        ...     pl.Struct({"city": pl.String, "visits": pl.List(pl.Date)})
        ... ).dtype
        Struct({'city': String, 'visits': List(Date)})
        >>> OutputSchema.from_user(
        ...     {"type": "object", "properties": {"meta": {"type": "object"}}}
        ... )
        Traceback (most recent call last):
        ...
        TypeError: output schema: meta: an object without 'properties' (a free-form dict) has no Polars dtype; list its fields, or make it a string
        """
        if isinstance(obj, OutputSchema):
            return obj
        if _is_pydantic_model(obj):
            return cls._from_pydantic(obj)
        if isinstance(obj, Mapping):
            return cls._from_dict(dict(obj))
        if isinstance(obj, pl.Struct):
            return cls._from_struct(obj)
        if obj is pl.Struct:
            msg = "output schema: give pl.Struct({...}) with its fields, not the bare class"
            raise TypeError(msg)
        what = (
            f"the class {obj.__qualname__}"
            if isinstance(obj, type)
            else (f"a {type(obj).__name__} ({obj!r:.60})")
        )
        msg = f"response_format must be {_ACCEPTS}, not {what}"
        raise TypeError(msg)

    @classmethod
    def _from_pydantic(cls, model: Any) -> OutputSchema:
        # model_json_schema() and our own strict rewrite, rather than the openai SDK's
        # to_strict_json_schema: that lives in a private module (openai.lib._pydantic)
        # that may move, importing openai costs ~0.5 s, and one rewrite then serves
        # pydantic and dict schemas alike (tests check the strict shape).
        raw = model.model_json_schema(by_alias=True, mode="validation")
        strict = to_strict(raw, optional_nullable=False)
        dtype, node = cls._compile_root(strict)
        doc = raw.get("description")
        return cls(
            name=_valid_name(model.__name__),
            schema=strict,
            dtype=dtype,
            node=node,
            source="pydantic",
            model=model,
            description=doc if isinstance(doc, str) else None,
        )

    @classmethod
    def _from_dict(cls, obj: dict[str, Any]) -> OutputSchema:
        description = None
        if obj.get("type") == "json_schema":
            spec = obj.get("json_schema")
            if not isinstance(spec, Mapping) or not isinstance(
                spec.get("schema"), Mapping
            ):
                msg = (
                    "response_format of type 'json_schema' needs "
                    '"json_schema": {"name": ..., "schema": {...}}'
                )
                raise ValueError(msg)
            name = spec.get("name", DEFAULT_NAME)
            if not isinstance(name, str) or not _NAME_RE.match(name):
                msg = f"json_schema.name {name!r} must be 1-64 letters, digits, '_' or '-'"
                raise ValueError(msg)
            if spec.get("strict") is False:
                logger.debug("json_schema %r: strict=False given; sent strict", name)
            raw = copy.deepcopy(dict(spec["schema"]))
            desc = spec.get("description")
            description = desc if isinstance(desc, str) else None
        elif isinstance(obj.get("type"), str) and obj.get("type") in (
            "text",
            "json_object",
        ):
            msg = (
                f"response_format {{'type': {obj['type']!r}}} has no schema: typed "
                f"answers need {_ACCEPTS}"
            )
            raise TypeError(msg)
        else:
            raw = copy.deepcopy(obj)
            name = _valid_name(raw.get("title"))
        if raw.get("type") != "object" and "properties" not in raw:
            msg = (
                "output schema: the root must be an object schema "
                f'({{"type": "object", "properties": {{...}}}}), not {raw.get("type")!r}'
            )
            raise TypeError(msg)
        strict = to_strict(raw, optional_nullable=True)
        dtype, node = cls._compile_root(strict)
        return cls(
            name=name,
            schema=strict,
            dtype=dtype,
            node=node,
            source="json_schema",
            description=description,
        )

    @classmethod
    def _from_struct(cls, dtype: pl.Struct) -> OutputSchema:
        time_zones: dict[str, str | None] = {}
        schema = _from_dtype(dtype, "", time_zones)
        _, node = cls._compile_root(schema, time_zones)
        return cls(
            name=DEFAULT_NAME, schema=schema, dtype=dtype, node=node, source="struct"
        )

    @staticmethod
    def _compile_root(
        strict: dict[str, Any], time_zones: dict[str, str | None] | None = None
    ) -> tuple[pl.Struct, _Node]:
        node = _Compiler(strict, time_zones).compile(strict, "")
        if not isinstance(node.dtype, pl.Struct) or node.conv is None:
            msg = f"output schema: the root must be an object schema, not {node.dtype}"
            raise TypeError(msg)
        return node.dtype, node

    # -- what a request carries -----------------------------------------------------

    @property
    def response_format(self) -> dict[str, Any]:
        """The request's ``response_format``: Azure's strict structured-output shape.

        ``{"type": "json_schema", "json_schema": {"name": ..., "strict": True,
        "schema": {...}}}``; a fresh copy on each access (change it freely).

        Examples
        --------
        >>> fmt = OutputSchema.from_user(
        ...     {
        ...         "title": "City",
        ...         "type": "object",
        ...         "properties": {
        ...             "name": {"type": "string"},
        ...             "size": {"type": "integer"},
        ...         },
        ...         "required": ["name"],
        ...     }
        ... ).response_format
        >>> fmt["json_schema"]["name"], fmt["json_schema"]["strict"]
        ('City', True)
        >>> schema = fmt["json_schema"]["schema"]
        >>> (
        ...     schema["required"],
        ...     schema["additionalProperties"],
        ...     schema["properties"]["size"],
        ... )
        (['name', 'size'], False, {'type': ['integer', 'null']})
        """
        return copy.deepcopy(self._format)

    def schema_tokens(self) -> int:
        """Estimated prompt tokens the schema adds to each request (Azure counts them).

        The rule: the compact JSON of :attr:`response_format`, one token per 4
        characters, rounded up. JSON keys and punctuation are dense in tokens, so
        this is rough (within tens of percent of what the model's tokenizer says).

        Examples
        --------
        >>> import polars as pl
        >>> OutputSchema.from_user(pl.Struct({"n": pl.Int64})).schema_tokens()
        45
        """
        return self._tokens

    # -- answers -------------------------------------------------------------------

    def parse(self, text: str | bytes) -> dict[str, Any]:
        """Validate one answer and return its value for the column.

        Parameters
        ----------
        text
            The answer's ``message.content``.

        Returns
        -------
        dict
            One value per field, ready for ``pl.Series(values, dtype=self.dtype)``:
            dates as ``datetime.date``, date-times as ``datetime.datetime``, enums as
            ``str``, lists and nested dicts as such.

        Raises
        ------
        SchemaMismatchError
            The text is not JSON, or breaks the schema; the message says what did not
            validate and where (``"priority: 'urgent' is not one of ['low', 'high']"``).
            pydantic models are validated by pydantic (their own validators run);
            dict and Struct schemas by this module's compiled walker (types, enums,
            required and unexpected keys, ``pattern``, ``minLength``/``maxLength``,
            ``minimum``/``maximum`` (also exclusive), ``multipleOf``,
            ``minItems``/``maxItems``, ``uniqueItems``, and the formats date,
            date-time and time; other formats are not checked).

        Examples
        --------
        >>> import polars as pl
        >>> s = OutputSchema.from_user(
        ...     {
        ...         "type": "object",
        ...         "properties": {"priority": {"enum": ["low", "high"]}},
        ...         "required": ["priority"],
        ...     }
        ... )
        >>> s.parse('{"priority": "urgent"}')
        Traceback (most recent call last):
        ...
        polars_azurechat.schema.errors.SchemaMismatchError: answer does not match the schema: priority: 'urgent' is not one of ['low', 'high']
        """
        if not isinstance(text, str | bytes):
            msg = f"parse() takes the answer's text (str), not {type(text).__name__}"
            raise TypeError(msg)
        if self._model is not None:
            return self._parse_pydantic(text)
        try:
            value = json.loads(text)
        except ValueError as err:
            raise SchemaMismatchError(str(err), json_error=True) from None
        out: dict[str, Any] = self._node.check(value)
        return out

    def _parse_pydantic(self, text: str | bytes) -> dict[str, Any]:
        try:
            obj = self._validate(text)
        except self._invalid as err:
            errors = err.errors(include_url=False)
            first = errors[0]
            if first.get("type") == "json_invalid":
                raise SchemaMismatchError(
                    str(first.get("msg")), json_error=True
                ) from None
            path = ""
            for key in first.get("loc", ()):
                path = join_path(path, key)
            problem = safe = f"{first.get('msg')}"
            if first.get("type") != "missing":
                problem += f" (got {show(first.get('input'))})"
                safe += f" (got {kind_of(first.get('input'))})"
            if len(errors) > 1:
                more = f" (and {len(errors) - 1} more)"
                problem += more
                safe += more
            raise SchemaMismatchError(problem, path=path, safe=safe) from None
        read = self._read
        if read is not None:  # a plain model: its values as validated
            out: dict[str, Any] = read(obj)
            return out
        conv = self._node.conv
        assert conv is not None  # noqa: S101 - the root is a Struct
        dumped = obj.model_dump(mode="json", by_alias=True)
        try:
            out = conv(dumped)
        except (ValueError, TypeError, AttributeError) as err:
            # a custom serializer dumped what the schema does not say
            raise SchemaMismatchError(
                f"{type(err).__name__}: {err}", safe=type(err).__name__
            ) from None
        return out

    def series(
        self, values: Sequence[dict[str, Any] | None], name: str = ""
    ) -> pl.Series:
        """Build the answer column from parsed values (``None`` rows become null).

        Parameters
        ----------
        values
            One :meth:`parse` result (or ``None``) per row.
        name
            The Series name.

        Returns
        -------
        pl.Series
            Of dtype :attr:`dtype`.

        Examples
        --------
        >>> import polars as pl
        >>> s = OutputSchema.from_user(pl.Struct({"n": pl.Int64, "ok": pl.Boolean}))
        >>> s.series([s.parse('{"n": 1, "ok": true}'), None], name="a").to_list()
        [{'n': 1, 'ok': True}, None]
        """
        if len(values) < ARROW_MIN_ROWS:
            return pl.Series(name, values, dtype=self.dtype)
        # Through Arrow: pyarrow converts nested Python values in C++, ~20-50x faster
        # than pl.Series for lists and aware date-times (20,000 rows with a list field:
        # ~5 ms against ~240 ms); small inputs skip it (the first use imports pyarrow).
        import pyarrow as pa

        arrow_type = self._arrow_type
        if arrow_type is None:
            arrow_type = self._arrow_type = (
                pl.Series(dtype=self.dtype)
                .to_arrow(compat_level=pl.CompatLevel.oldest())
                .type
            )
        series = pl.from_arrow(pa.array(values, type=arrow_type))
        assert isinstance(series, pl.Series)  # noqa: S101 - an array gives a Series
        if series.dtype != self.dtype:
            series = series.cast(self.dtype)
        return series.alias(name)
