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

pydantic models are dumped to JSON values (``model_dump(mode="json", by_alias=True)``)
after pydantic validated them, then converted by the same rules, so a pydantic model
and the equivalent dict schema give the same column.
"""

from __future__ import annotations

import copy
import importlib
import datetime as dt
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

import polars as pl

__all__ = ["OutputSchema", "SchemaMismatchError"]

logger = logging.getLogger(__name__)

#: What ``json_schema.name`` may be (Azure and OpenAI refuse anything else).
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: The ``json_schema.name`` used when the user's type gives none.
DEFAULT_NAME: Final = "answer"
#: ``schema_tokens``: characters of compact JSON per token (the usual rule of thumb).
CHARS_PER_TOKEN: Final = 4
#: Keywords dropped from the strict schema: every property is required in strict mode,
#: so a default can never apply, and some api-versions refuse the keyword.
_DROPPED_KEYWORDS: Final = frozenset({"default"})
#: ``$ref`` siblings that are only annotations (dropped rather than inlining the target).
_ANNOTATIONS: Final = frozenset({"title", "description", "default", "examples"})
_ACCEPTS: Final = (
    "a pydantic BaseModel subclass, a JSON-schema dict (an object schema or "
    '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}), '
    "or a pl.Struct dtype"
)

_Conv = Callable[[Any], Any]
#: What an :class:`OutputSchema` was built from.
Source = Literal["pydantic", "json_schema", "struct"]


class SchemaMismatchError(ValueError):
    """An answer is not valid JSON or does not match the output schema.

    Attributes
    ----------
    path : str
        Where the first problem is (``"customer.address.city"``, ``"tags[1]"``), or
        ``""`` for the whole answer (invalid JSON, a non-object).
    """

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _where(path: str) -> str:
    return path or "<root>"


def _unsupported(path: str, what: str) -> TypeError:
    return TypeError(f"output schema: {_where(path)}: {what}")


# ---------------------------------------------------------------------------------------
# Converters: validated JSON values -> the Python values a Polars column takes.


def _check_str(value: Any, path: str, fmt: str) -> str:
    if not isinstance(value, str):
        raise SchemaMismatchError(
            f"answer does not match the schema: {_where(path)}: {value!r} is not a "
            f"{fmt} string",
            path=path,
        )
    return value


def _bad_format(value: str, path: str, fmt: str) -> SchemaMismatchError:
    return SchemaMismatchError(
        f"answer does not match the schema: {_where(path)}: {value!r} is not a valid "
        f"{fmt}",
        path=path,
    )


def _date_conv(path: str) -> _Conv:
    def conv(value: Any) -> dt.date | None:
        if value is None:
            return None
        text = _check_str(value, path, "date")
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            raise _bad_format(text, path, "date") from None

    return conv


def _datetime_conv(path: str, time_zone: str | None) -> _Conv:
    """Parse to UTC; aware for a zoned column, naive UTC wall time for a naive one."""
    aware = time_zone is not None

    def conv(value: Any) -> dt.datetime | None:
        if value is None:
            return None
        text = _check_str(value, path, "date-time")
        try:
            stamp = dt.datetime.fromisoformat(text)
        except ValueError:
            raise _bad_format(text, path, "date-time") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        else:
            stamp = stamp.astimezone(dt.UTC)
        return stamp if aware else stamp.replace(tzinfo=None)

    return conv


def _time_conv(path: str) -> _Conv:
    def conv(value: Any) -> dt.time | None:
        if value is None:
            return None
        text = _check_str(value, path, "time")
        try:
            # an offset cannot be applied to a time of day without a date: dropped
            return dt.time.fromisoformat(text).replace(tzinfo=None)
        except ValueError:
            raise _bad_format(text, path, "time") from None

    return conv


def _int_conv(value: Any) -> Any:
    # JSON Schema's "integer" accepts 3.0; the Int64 column wants 3
    if value is None or type(value) is int:
        return value
    return int(value)


def _json_text_conv(value: Any) -> Any:
    # the String column of an enum of mixed values: non-strings as their JSON text
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _list_conv(inner: _Conv | None) -> _Conv | None:
    if inner is None:
        return None

    def conv(value: Any) -> list[Any] | None:
        if value is None:
            return None
        return [inner(v) for v in value]

    return conv


def _struct_conv(fields: Sequence[tuple[str, _Conv | None]]) -> _Conv:
    """Keep exactly the schema's fields (pydantic dumps computed fields and extras too)."""
    fields = tuple(fields)

    def conv(value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        get = value.get
        return {name: get(name) if c is None else c(get(name)) for name, c in fields}

    return conv


# ---------------------------------------------------------------------------------------
# Strict mode: the schema Azure is sent.


def _is_null_schema(schema: Any) -> bool:
    return (
        isinstance(schema, dict) and schema.get("type") == "null" and len(schema) == 1
    )


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` that also accepts null (unchanged when it already does)."""
    t = schema.get("type")
    if "anyOf" in schema:
        if any(_is_null_schema(m) for m in schema["anyOf"]):
            return schema
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    if isinstance(t, list) and "null" in t:
        return schema
    if isinstance(t, str) and "$ref" not in schema:
        out = {**schema, "type": [t, "null"]}
        for key in ("enum",):
            if key in out and None not in out[key]:
                out[key] = [*out[key], None]
        if "const" in out:
            out["enum"] = [out.pop("const"), None]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


class _Strict:
    """Rewrites a JSON schema into strict mode; checks happen later, in :class:`_Compiler`.

    ``optional_nullable``: a property missing from ``required`` becomes nullable (dict
    schemas), or simply required (pydantic: such a field has a default, and pydantic
    would refuse a null for it unless its type is already nullable).
    """

    def __init__(self, root: dict[str, Any], *, optional_nullable: bool) -> None:
        self.root = root
        self.optional_nullable = optional_nullable

    def defs(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for key in ("$defs", "definitions"):
            block = self.root.get(key)
            if isinstance(block, dict):
                out.update({f"#/{key}/{k}": v for k, v in block.items()})
        return out

    def run(self) -> dict[str, Any]:
        out = self.rewrite(self.root)
        for key in ("$defs", "definitions"):
            block = self.root.get(key)
            if isinstance(block, dict):
                out[key] = {
                    k: self.rewrite(v) if isinstance(v, dict) else v
                    for k, v in block.items()
                }
        return out

    def rewrite(self, schema: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key in _DROPPED_KEYWORDS or key in ("$defs", "definitions"):
                continue
            if key in ("properties", "patternProperties") and isinstance(value, dict):
                out[key] = {
                    k: self.rewrite(v) if isinstance(v, dict) else v
                    for k, v in value.items()
                }
            elif key in ("items", "additionalProperties", "not") and isinstance(
                value, dict
            ):
                out[key] = self.rewrite(value)
            elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(
                value, list
            ):
                out[key] = [
                    self.rewrite(v) if isinstance(v, dict) else v for v in value
                ]
            else:
                out[key] = value
        if "oneOf" in out and "anyOf" not in out:  # strict mode knows only anyOf
            out["anyOf"] = out.pop("oneOf")
        all_of = out.get("allOf")
        if (
            isinstance(all_of, list)
            and len(all_of) == 1
            and isinstance(all_of[0], dict)
        ):
            # pydantic 1-style ``allOf: [{$ref}]`` wrapper: merge it in
            del out["allOf"]
            out = {**out, **all_of[0]}
        if "$ref" in out and set(out) - _ANNOTATIONS - {"$ref"}:
            # strict mode takes no keywords beside $ref: inline the target
            target = self.defs().get(out["$ref"])
            if isinstance(target, dict):
                merged = {**self.rewrite(target), **out}
                del merged["$ref"]
                out = merged
        elif "$ref" in out:
            out = {"$ref": out["$ref"]}
        if out.get("type") == "object" or "properties" in out:
            out = self.object(out)
        return out

    def object(self, schema: dict[str, Any]) -> dict[str, Any]:
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            return schema  # a free-form object: the compiler says why it is refused
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return schema  # extra keys with a schema: refused by the compiler
        required = set(schema.get("required") or ())
        if self.optional_nullable:
            props = {
                k: v if k in required or not isinstance(v, dict) else _nullable(v)
                for k, v in props.items()
            }
        return {
            **schema,
            "type": "object",
            "properties": props,
            "required": list(props),
            "additionalProperties": False,
        }


# ---------------------------------------------------------------------------------------
# Compiling: strict schema -> Polars dtype and converter; refuses what has no dtype.


class _Compiler:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.defs: dict[str, Any] = {}
        for key in ("$defs", "definitions"):
            block = root.get(key)
            if isinstance(block, dict):
                self.defs.update({f"#/{key}/{k}": v for k, v in block.items()})
        self.resolving: list[str] = []

    def compile(self, schema: Any, path: str) -> tuple[pl.DataType, _Conv | None]:
        if not isinstance(schema, dict):
            raise _unsupported(path, f"a schema must be an object, not {schema!r}")
        if "$ref" in schema:
            return self.ref(schema["$ref"], path)
        for bad in ("not", "if", "patternProperties", "prefixItems", "allOf"):
            if bad in schema:
                raise _unsupported(
                    path,
                    f"'{bad}' has no Polars dtype (use plain types, anyOf for null)",
                )
        if "anyOf" in schema:
            return self.union(schema["anyOf"], path)
        if "enum" in schema or "const" in schema:
            values = schema["enum"] if "enum" in schema else [schema["const"]]
            return self.enum(values, path)
        t = schema.get("type")
        if isinstance(t, list):
            kinds = [k for k in t if k != "null"]
            if len(kinds) != 1:
                raise _unsupported(
                    path,
                    f"type {t!r}: a value of several types has no single Polars dtype",
                )
            t = kinds[0]
        if t == "string":
            fmt = schema.get("format")
            if fmt == "date":
                return pl.Date(), _date_conv(path)
            if fmt == "date-time":
                return pl.Datetime("us", "UTC"), _datetime_conv(path, "UTC")
            if fmt == "time":
                return pl.Time(), _time_conv(path)
            return pl.String(), None
        if t == "integer":
            return pl.Int64(), _int_conv
        if t == "number":
            return pl.Float64(), None
        if t == "boolean":
            return pl.Boolean(), None
        if t == "array":
            items = schema.get("items")
            if not isinstance(items, dict) or not items:
                raise _unsupported(
                    path,
                    "an array needs an 'items' schema (a list of anything has no dtype)",
                )
            inner, conv = self.compile(items, f"{path}[]")
            return pl.List(inner), _list_conv(conv)
        if t == "object" or "properties" in schema:
            return self.object(schema, path)
        if t == "null":
            raise _unsupported(path, "a value that is always null has no use")
        raise _unsupported(
            path, f"no supported 'type' (got {t!r}); a value of any type has no dtype"
        )

    def ref(self, ref: Any, path: str) -> tuple[pl.DataType, _Conv | None]:
        if ref not in self.defs:
            raise _unsupported(path, f"$ref {ref!r} is not in $defs/definitions")
        if ref in self.resolving:
            raise _unsupported(
                path, f"$ref {ref!r} is recursive: a recursive type has no Polars dtype"
            )
        self.resolving.append(ref)
        try:
            return self.compile(self.defs[ref], path)
        finally:
            self.resolving.pop()

    def union(self, members: Any, path: str) -> tuple[pl.DataType, _Conv | None]:
        if not isinstance(members, list):
            raise _unsupported(path, "anyOf must be a list")
        rest = [m for m in members if not _is_null_schema(m)]
        if not rest:
            raise _unsupported(path, "a value that is always null has no use")
        compiled = [self.compile(m, path) for m in rest]
        dtypes = {repr(d) for d, _ in compiled}
        if len(dtypes) > 1:
            raise _unsupported(
                path,
                f"a union of {' | '.join(sorted(dtypes))} has no single Polars dtype "
                "(make it one type, or one object type with optional fields)",
            )
        return compiled[0]

    def enum(self, values: Any, path: str) -> tuple[pl.DataType, _Conv | None]:
        if not isinstance(values, list):
            raise _unsupported(path, "enum must be a list")
        present = [v for v in values if v is not None]
        if not present:
            raise _unsupported(path, "an enum of only null has no use")
        if all(isinstance(v, str) for v in present):
            return pl.Enum(list(dict.fromkeys(present))), None
        if all(isinstance(v, bool) for v in present):
            return pl.Boolean(), None
        if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            return pl.Int64(), _int_conv
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
            return pl.Float64(), None
        return pl.String(), _json_text_conv

    def object(
        self, schema: dict[str, Any], path: str
    ) -> tuple[pl.DataType, _Conv | None]:
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            raise _unsupported(
                path,
                "an object without 'properties' (a free-form dict) has no Polars "
                "dtype; list its fields, or make it a string",
            )
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            raise _unsupported(
                path,
                "additionalProperties with a schema (a dict of any keys) has no Polars "
                "dtype; list its fields instead",
            )
        fields: list[pl.Field] = []
        convs: list[tuple[str, _Conv | None]] = []
        for name, sub in props.items():
            dtype, conv = self.compile(sub, _join(path, name))
            fields.append(pl.Field(name, dtype))
            convs.append((name, conv))
        return pl.Struct(fields), _struct_conv(convs)


# ---------------------------------------------------------------------------------------
# pl.Struct dtype -> strict schema and converter.


def _from_dtype(dtype: Any, path: str) -> tuple[dict[str, Any], _Conv | None]:
    if isinstance(dtype, type) and issubclass(dtype, pl.DataType):
        try:
            dtype = dtype()  # pl.String, pl.Int64, ...: the class means its default
        except TypeError:
            raise _unsupported(
                path, f"give {dtype.__name__} with its parameters, not the bare class"
            ) from None
    if dtype == pl.String or dtype == pl.Categorical:
        return {"type": "string"}, None
    if isinstance(dtype, pl.Enum):
        return {"type": "string", "enum": dtype.categories.to_list()}, None
    if dtype.is_integer():
        return {"type": "integer"}, _int_conv
    if dtype.is_float():
        return {"type": "number"}, None
    if dtype == pl.Boolean:
        return {"type": "boolean"}, None
    if dtype == pl.Date:
        return {"type": "string", "format": "date"}, _date_conv(path)
    if isinstance(dtype, pl.Datetime):
        return {"type": "string", "format": "date-time"}, _datetime_conv(
            path, dtype.time_zone
        )
    if dtype == pl.Time:
        return {"type": "string", "format": "time"}, _time_conv(path)
    if isinstance(dtype, pl.List | pl.Array):
        items, conv = _from_dtype(dtype.inner, f"{path}[]")
        schema: dict[str, Any] = {"type": "array", "items": items}
        if isinstance(dtype, pl.Array):
            schema["minItems"] = schema["maxItems"] = dtype.size
        return schema, _list_conv(conv)
    if isinstance(dtype, pl.Struct):
        if not dtype.fields:
            raise _unsupported(path, "a Struct without fields has no use")
        props: dict[str, Any] = {}
        convs: list[tuple[str, _Conv | None]] = []
        for f in dtype.fields:
            props[f.name], conv = _from_dtype(f.dtype, _join(path, f.name))
            convs.append((f.name, conv))
        return {
            "type": "object",
            "properties": props,
            "required": list(props),
            "additionalProperties": False,
        }, _struct_conv(convs)
    raise _unsupported(
        path,
        f"{dtype} has no JSON-schema counterpart (use String, integers, floats, "
        "Boolean, Enum, Date, Datetime, Time, List, Array or Struct)",
    )


# ---------------------------------------------------------------------------------------


def _valid_name(name: Any) -> str:
    """``name`` made a valid ``json_schema.name`` (invalid characters become ``_``)."""
    if not isinstance(name, str) or not name:
        return DEFAULT_NAME
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]


def _jsonschema() -> Any:
    # no type stubs ship with jsonschema: imported as Any rather than through a
    # mypy override (and only on first use: import cost)
    return importlib.import_module("jsonschema")


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
        "_conv",
        "_format",
        "_model",
        "_tokens",
        "_validator",
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
        conv: _Conv,
        source: Source,
        model: Any = None,
        description: str | None = None,
    ) -> None:
        # private: use from_user()
        self.name = name
        self.dtype = dtype
        self.source = source
        self._conv = conv
        self._model = model
        self._validator: Any = None
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
        strict = _Strict(raw, optional_nullable=False).run()
        dtype, conv = cls._compile_root(strict)
        doc = raw.get("description")
        return cls(
            name=_valid_name(model.__name__),
            schema=strict,
            dtype=dtype,
            conv=conv,
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
        strict = _Strict(raw, optional_nullable=True).run()
        dtype, conv = cls._compile_root(strict)
        return cls(
            name=name,
            schema=strict,
            dtype=dtype,
            conv=conv,
            source="json_schema",
            description=description,
        )

    @classmethod
    def _from_struct(cls, dtype: pl.Struct) -> OutputSchema:
        schema, conv = _from_dtype(dtype, "")
        assert conv is not None  # noqa: S101 - a Struct always has a converter
        return cls(
            name=DEFAULT_NAME, schema=schema, dtype=dtype, conv=conv, source="struct"
        )

    @staticmethod
    def _compile_root(strict: dict[str, Any]) -> tuple[pl.Struct, _Conv]:
        dtype, conv = _Compiler(strict).compile(strict, "")
        if not isinstance(dtype, pl.Struct) or conv is None:
            msg = f"output schema: the root must be an object schema, not {dtype}"
            raise TypeError(msg)
        return dtype, conv

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
            dict and Struct schemas by ``jsonschema`` (every keyword of the schema:
            ``pattern``, ``minimum``, ``maxItems``, ... is checked).

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
        polars_azurechat._schema.SchemaMismatchError: answer does not match the schema: priority: 'urgent' is not one of ['low', 'high']
        """
        if not isinstance(text, str | bytes):
            msg = f"parse() takes the answer's text (str), not {type(text).__name__}"
            raise TypeError(msg)
        if self._model is not None:
            return self._parse_pydantic(text)
        try:
            value = json.loads(text)
        except ValueError as err:
            raise SchemaMismatchError(
                f"answer is not valid JSON ({err}); was it cut at max_tokens?"
            ) from None
        self._validate(value)
        out: dict[str, Any] = self._convert(value)
        return out

    def _convert(self, value: Any) -> Any:
        try:
            return self._conv(value)
        except (ValueError, TypeError, AttributeError, OverflowError) as err:
            if isinstance(err, SchemaMismatchError):
                raise
            raise SchemaMismatchError(
                f"answer does not match the schema: {err}"
            ) from None

    def _parse_pydantic(self, text: str | bytes) -> dict[str, Any]:
        import pydantic

        try:
            obj = self._model.model_validate_json(text)
        except pydantic.ValidationError as err:
            errors = err.errors(include_url=False)
            first = errors[0]
            if first.get("type") == "json_invalid":
                raise SchemaMismatchError(
                    f"answer is not valid JSON ({first.get('msg')}); was it cut at "
                    "max_tokens?"
                ) from None
            path = ""
            for key in first.get("loc", ()):
                path = _join(path, key)
            problem = f"{first.get('msg')}"
            if first.get("type") != "missing":
                problem += f" (got {first.get('input')!r:.80})"
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise SchemaMismatchError(
                f"answer does not match the schema: {_where(path)}: {problem}{more}",
                path=path,
            ) from None
        out: dict[str, Any] = self._convert(obj.model_dump(mode="json", by_alias=True))
        return out

    def _validate(self, value: Any) -> None:
        # jsonschema rather than an own walker: a user's dict schema may carry any
        # keyword (pattern, minimum, maxItems, ...) and it checks every one with
        # precise paths; imported on first use (import cost), one validator per schema.
        validator = self._validator
        if validator is None:
            jsonschema = _jsonschema()
            cls = jsonschema.validators.validator_for(
                self._format["json_schema"]["schema"], jsonschema.Draft202012Validator
            )
            validator = cls(
                self._format["json_schema"]["schema"],
                format_checker=cls.FORMAT_CHECKER,
            )
            self._validator = validator
        error = next(iter(validator.iter_errors(value)), None)
        if error is None:
            return
        error = _jsonschema().exceptions.best_match(validator.iter_errors(value))
        path = ""
        for key in error.absolute_path:
            path = _join(path, key)
        raise SchemaMismatchError(
            f"answer does not match the schema: {_where(path)}: {error.message}",
            path=path,
        )

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
        return pl.Series(name, values, dtype=self.dtype)
