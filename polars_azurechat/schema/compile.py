"""Typed answers, compiling: a strict schema to a Polars dtype, validator and converter.

:func:`compile_root` walks the strict schema once into a tree of :class:`Node` (one
per schema position) and refuses, with a ``TypeError`` naming the field path, what
has no Polars dtype (a union of different types, a free-form dict, a recursive type,
...). The keywords it reads or refuses beside the types are in
:mod:`polars_azurechat.schema.keywords`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import polars as pl

from polars_azurechat.schema.errors import (
    SchemaMismatchError,
    bad_value,
    join_path,
    kind_of,
    show,
    unsupported,
)
from polars_azurechat.schema.keywords import (
    count,
    numeric_limits,
    refuse_keywords,
    single_type,
    union_members,
)
from polars_azurechat.schema.strict import defs, is_null_schema
from polars_azurechat.schema.values import (
    Conv,
    int_value,
    json_text,
    list_conv,
    nullable_conv,
    parse_datetime,
    parse_time,
    struct_conv,
)

__all__ = ["Node", "compile_root"]

# Compiling: strict schema -> Polars dtype, validator and converter; refuses what has no
# dtype. An own walker rather than the ``jsonschema`` library: the compiler already
# limits schemas to a small subset (the one strict mode and Polars dtypes share), the
# validator is compiled once into closures (10-25 us per answer where jsonschema takes
# ~300 us: 6 s of CPU per 20,000 rows), it converts in the same pass, and it adds no
# dependency. Validation keywords outside the subset are refused at construction, so
# nothing in a schema is silently left unchecked (but ``format`` values other than
# date, date-time and time, which are annotations in JSON Schema too).


@dataclasses.dataclass(frozen=True, slots=True)
class Node:
    """One schema position: its dtype, its validator-converter, its converter."""

    dtype: pl.DataType
    #: validates a JSON value (``None`` included) and returns it for the column
    check: Conv
    #: converts a value already valid (pydantic's dump); ``None``: used as is
    conv: Conv | None


def _nullable_node(node: Node) -> Node:
    inner = node.check

    def check(value: Any) -> Any:
        return None if value is None else inner(value)

    return Node(node.dtype, check, node.conv)


def _type_error(path: str, value: Any, kind: str) -> SchemaMismatchError:
    return bad_value(value, f"is not of type {kind!r}", path)


class _Compiler:
    """Strict schema -> :class:`Node` tree.

    ``time_zones`` gives the time zone of the ``Datetime`` at a path (a ``pl.Struct``
    input says it); elsewhere date-times are UTC.
    """

    def __init__(
        self, root: dict[str, Any], time_zones: Mapping[str, str | None] | None = None
    ) -> None:
        self.defs = defs(root)
        self.time_zones = time_zones or {}
        self.resolving: list[str] = []

    def compile(self, schema: Any, path: str) -> Node:
        if not isinstance(schema, dict):
            raise unsupported(path, f"a schema must be an object, not {schema!r}")
        if "$ref" in schema:
            return self.ref(schema["$ref"], path)
        refuse_keywords(schema, path)
        if "anyOf" in schema:
            return self.union(union_members(schema), path)
        t, nullable = single_type(schema.get("type"), path)
        if "enum" in schema or "const" in schema:
            values = schema["enum"] if "enum" in schema else [schema["const"]]
            node = self.enum(values, path)
            nullable = nullable or (isinstance(values, list) and None in values)
        else:
            node = self.typed(schema, t, path)
        return _nullable_node(node) if nullable else node

    def typed(self, schema: dict[str, Any], t: Any, path: str) -> Node:
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

    def ref(self, ref: Any, path: str) -> Node:
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

    def union(self, members: Any, path: str) -> Node:
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

            node = Node(node.dtype, check, node.conv)
        return _nullable_node(node) if len(rest) < len(members) else node

    def enum(self, values: Any, path: str) -> Node:
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

            return Node(pl.Enum(list(dict.fromkeys(present))), check_str, None)
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

        return Node(dtype, check, conv)

    def string(self, schema: dict[str, Any], path: str) -> Node:
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
        shortest = count(schema, "minLength", path)
        longest = count(schema, "maxLength", path)
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

        return Node(dtype, check, None if parse is None else nullable_conv(parse))

    def number(self, schema: dict[str, Any], path: str, *, integer: bool) -> Node:
        limits = numeric_limits(schema, path)
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

            return Node(pl.Int64(), check, int_value)

        def check_number(value: Any) -> Any:
            kind = type(value)
            if kind is not float and kind is not int:
                raise _type_error(path, value, "number")
            if limits is not None:
                limits(value)
            return value

        return Node(pl.Float64(), check_number, None)

    def boolean(self, path: str) -> Node:
        def check(value: Any) -> Any:
            if type(value) is bool:
                return value
            raise _type_error(path, value, "boolean")

        return Node(pl.Boolean(), check, None)

    def array(self, schema: dict[str, Any], path: str) -> Node:
        items = schema.get("items")
        if not isinstance(items, dict) or not items:
            raise unsupported(
                path,
                "an array needs an 'items' schema (a list of anything has no dtype)",
            )
        inner = self.compile(items, f"{path}[]")
        fewest = count(schema, "minItems", path)
        most = count(schema, "maxItems", path)
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

        return Node(pl.List(inner.dtype), check, list_conv(inner.conv))

    def object(self, schema: dict[str, Any], path: str) -> Node:
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

        return Node(
            pl.Struct([pl.Field(name, node.dtype) for name, node in nodes.items()]),
            check,
            struct_conv([(name, node.conv) for name, node in nodes.items()]),
        )


def compile_root(
    strict: dict[str, Any], time_zones: dict[str, str | None] | None = None
) -> tuple[pl.Struct, Node]:
    """The Struct dtype and :class:`Node` of a strict schema whose root is an object.

    Raises ``TypeError`` when part of the schema has no Polars dtype (naming the field
    path) or the root is not an object schema.
    """
    node = _Compiler(strict, time_zones).compile(strict, "")
    if not isinstance(node.dtype, pl.Struct) or node.conv is None:
        msg = f"output schema: the root must be an object schema, not {node.dtype}"
        raise TypeError(msg)
    return node.dtype, node
