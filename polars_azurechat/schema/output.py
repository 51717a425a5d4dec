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
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import polars as pl

from polars_azurechat.schema.compile import Node, compile_root
from polars_azurechat.schema.dtypes import from_dtype
from polars_azurechat.schema.errors import SchemaMismatchError
from polars_azurechat.schema.models import ModelParser, alias_problem, is_pydantic_model
from polars_azurechat.schema.strict import to_strict

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


def _valid_name(name: Any) -> str:
    """``name`` made a valid ``json_schema.name`` (invalid characters become ``_``)."""
    if not isinstance(name, str) or not name:
        return DEFAULT_NAME
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]


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
        "_node",
        "_parser",
        "_tokens",
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
        node: Node,
        source: Source,
        model: Any = None,
        description: str | None = None,
    ) -> None:
        # private: use from_user()
        self.name = name
        self.dtype = dtype
        self.source = source
        self._node = node
        self._arrow_type: Any = None
        self._parser = None if model is None else ModelParser(model, dtype, node.conv)
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
        if is_pydantic_model(obj):
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
        problem = alias_problem(model)
        if problem is not None:
            raise TypeError(problem)
        raw = model.model_json_schema(by_alias=True, mode="validation")
        strict = to_strict(raw, optional_nullable=False)
        dtype, node = compile_root(strict)
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
        dtype, node = compile_root(strict)
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
        schema = from_dtype(dtype, "", time_zones)
        _, node = compile_root(schema, time_zones)
        return cls(
            name=DEFAULT_NAME, schema=schema, dtype=dtype, node=node, source="struct"
        )

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
        if self._parser is not None:
            return self._parser.parse(text)
        try:
            value = json.loads(text)
        except ValueError as err:
            raise SchemaMismatchError(str(err), json_error=True) from None
        out: dict[str, Any] = self._node.check(value)
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
