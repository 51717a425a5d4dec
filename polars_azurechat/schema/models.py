"""Typed answers from pydantic models: validation, and the column's values.

:class:`ModelParser` validates a model's answers with pydantic and gives the column's
values: read straight from the validated instance for a plain model
(:func:`pydantic_reader`), else dumped to JSON values and converted.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from enum import Enum
from typing import Any, Final

import polars as pl

from polars_azurechat.schema.errors import (
    DumpMismatchError,
    SchemaMismatchError,
    join_path,
    kind_of,
    show,
)
from polars_azurechat.schema.values import Conv, list_conv, nullable_conv, utc

__all__ = ["ModelParser", "is_pydantic_model", "pydantic_reader"]

logger = logging.getLogger(__name__)

# pydantic: the column's values read straight from a validated instance.
#
# ``model_dump(mode="json")`` then the converters (values.py) give the column's values
# from any model, but cost two walks more per answer (about 3 us warm, 14 us in the
# middle of a busy event loop, where the caches are cold). For a model whose values are
# exactly what it validated (no custom validator or serializer anywhere, only the plain
# types below), a reader compiled once per model copies them from the instances'
# ``__dict__``: the same values (a test compares the two ways), a fraction of the work.
# Any other model keeps the dump.


class _NotPlain(Exception):  # noqa: N818 - internal signal, never escapes
    """The model needs its dump: a custom validator or serializer, or another type."""


#: pydantic's ``Annotated`` metadata that only constrains a value (with every class of
#: the ``annotated_types`` module): others (``GetPydanticSchema``, ``EncodedStr``, a
#: validator or serializer) may change it, and keep the dump.
_CONSTRAINTS: Final = frozenset(
    {"FieldInfo", "Strict", "StringConstraints", "AllowInfNan"}
)


def pydantic_reader(model: Any, dtype: pl.Struct) -> Conv | None:
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


def is_pydantic_model(obj: Any) -> bool:
    """Whether ``obj`` is a pydantic ``BaseModel`` subclass."""
    # pydantic is not imported unless the user's code imported it (import cost)
    pydantic = sys.modules.get("pydantic")
    return (
        pydantic is not None
        and isinstance(obj, type)
        and issubclass(obj, pydantic.BaseModel)
    )


def alias_problem(model: Any) -> str | None:
    """Where ``model`` (or a model in it) names a field two ways, or hides it.

    The schema asks the model that answers for each field by the name pydantic
    validates (``validation_alias``, else ``alias``, else the attribute); the column
    is read from the model's dump (``serialization_alias``, else ``alias``, else the
    attribute). Where the two differ, the field's value would be lost.

    Examples
    --------
    >>> from pydantic import BaseModel, Field
    >>> class Person(BaseModel):
    ...     full_name: str = Field(serialization_alias="fullName")
    >>> print(alias_problem(Person))
    Person.full_name is asked for as 'full_name' but dumped as 'fullName': the column would lose that field's value; give it one name (alias=)
    """
    import pydantic

    secrets = (pydantic.SecretStr, pydantic.SecretBytes)
    seen: set[Any] = set()
    stack = [model]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        for attr, info in current.model_fields.items():
            where = f"{current.__name__}.{attr}"
            asked = info.validation_alias
            if asked is None:
                asked = info.alias or attr
            if not isinstance(asked, str):
                return f"{where} has a validation_alias of {type(asked).__name__}"
            dumped = info.serialization_alias or info.alias or attr
            lost = "the column would lose that field's value"
            if asked != dumped:
                return (
                    f"{where} is asked for as {asked!r} but dumped as {dumped!r}: "
                    f"{lost}; give it one name (alias=)"
                )
            types = list(_types_in(info.annotation))
            secret = next((t for t in types if issubclass(t, secrets)), None)
            if secret is not None:
                return (
                    f"{where} is a {secret.__name__}, which dumps masked "
                    f"('**********'): {lost}; use str"
                )
            stack.extend(t for t in types if is_pydantic_model(t))
    return None


def _types_in(annotation: Any) -> Iterator[type]:
    """The classes an annotation names (inside lists, unions, ``Annotated``)."""
    if isinstance(annotation, type):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _types_in(arg)


class ModelParser:
    """Parses a pydantic model's answers into the column's values.

    pydantic validates each answer (the model's own validators run); a plain model's
    values are then read from the instance (:func:`pydantic_reader`), any other
    model's are dumped (``model_dump(mode="json", by_alias=True)``) and converted by
    ``conv``, the root's converter.
    """

    __slots__ = ("_conv", "_invalid", "_read", "_validate")

    def __init__(self, model: Any, dtype: pl.Struct, conv: Conv | None) -> None:
        import pydantic

        # what model_validate_json calls, without its Python frame
        self._validate = model.__pydantic_validator__.validate_json
        self._invalid = pydantic.ValidationError
        self._read = pydantic_reader(model, dtype)
        self._conv = conv

    def parse(self, text: str | bytes) -> dict[str, Any]:
        """Validate one answer with pydantic and return its value for the column."""
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
        conv = self._conv
        assert conv is not None  # noqa: S101 - the root is a Struct
        dumped = obj.model_dump(mode="json", by_alias=True)
        try:
            out = conv(dumped)
        except (ValueError, TypeError, AttributeError) as err:
            # a custom serializer dumped what the schema does not say
            raise DumpMismatchError(type(err).__name__) from None  # no answer values
        return out
