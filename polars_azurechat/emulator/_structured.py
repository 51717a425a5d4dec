"""The emulator's answers to structured-output requests (``response_format`` json_schema).

The emulator plays the independent server: it reads the request's JSON schema its own
way (nothing here comes from the client's modules) and writes a compact JSON value that
validates against it, deterministically from the prompt. A schema is compiled once (per
JSON text) into a writer of nested closures, as a job sends the same one each time:

- objects: every property, in schema order (strict mode requires them all);
- ``$ref`` into ``$defs``/``definitions``: followed (a recursive type stops at null);
- ``anyOf`` / type lists: the first type that is not null (the answer fills every
  field it can);
- ``enum``: the string value the prompt names (a whole word, any case, ``_`` read
  as a space; the earliest one it names), else one value chosen by a hash of the
  prompt and the field path (so a classifier answers the label a text names);
  ``const``: it;
- strings: the prompt's first words (directives left out); formats ``date``,
  ``date-time`` (UTC, ``Z``), ``time``, ``email``, ``uuid`` get a value of that
  format derived from the hash; ``minLength``/``maxLength`` are honoured, ``pattern``
  is not (a limitation of the emulator);
- integers and numbers: the result of the prompt's arithmetic question ("What is
  6 x 7?" gives 42) when it asks one, else a small number from the hash; kept within
  ``minimum``/``maximum``;
- booleans: when the system message quotes a condition (its first ``"..."``),
  whether the prompt shares one of its words (4 letters or more, not a common word; the first 5
  letters compared, so "refunds" meets "refund"); else from the hash; arrays: 1 or 2
  items (within ``minItems``/``maxItems``).

:func:`broken_answer` gives an answer that breaks the schema (``[emu:bad_json]``).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from polars_azurechat.emulator._answers import arithmetic, strip_directives

__all__ = [
    "REFUSAL",
    "ResponseFormatError",
    "broken_answer",
    "requested_schema",
    "structured_answer",
]

#: ``message.refusal`` of a refused answer (``[emu:refuse]``).
REFUSAL = "I'm sorry, I can't help with that."

_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
#: Words of the prompt a string field gets.
STRING_WORDS = 5
#: The day the generated dates count from.
EPOCH = dt.date(2024, 1, 1)


class ResponseFormatError(ValueError):
    """A request's ``response_format`` Azure refuses; the message is Azure's."""


def requested_schema(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a request's answer must follow, or ``None`` for free text.

    Parameters
    ----------
    body
        The request body.

    Returns
    -------
    dict or None
        ``response_format.json_schema.schema`` when ``response_format`` is of type
        ``json_schema``; ``None`` without ``response_format`` or for ``text`` and
        ``json_object``. ``strict`` is not required (a schema without
        ``additionalProperties: false`` is accepted, as Azure does without strict);
        with ``strict: true`` the schema must follow strict mode's rules (an object
        root; every object ``additionalProperties: false`` and every property
        required), or Azure's 400 names the first place that does not.

    Raises
    ------
    ResponseFormatError
        The message of Azure's 400 (``param="response_format"``): a ``json_schema``
        without ``json_schema``, ``schema`` or a valid ``name``, or an unknown type.

    Examples
    --------
    >>> requested_schema(
    ...     {"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}
    ... )
    Traceback (most recent call last):
    ...
    polars_azurechat.emulator._structured.ResponseFormatError: Missing required parameter: 'response_format.json_schema.schema'.
    """
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        return None
    if kind != "json_schema":
        msg = (
            f"Invalid value: {kind!r}. Supported values are: 'text', 'json_object', "
            "and 'json_schema'."
        )
        raise ResponseFormatError(msg)
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        msg = "Missing required parameter: 'response_format.json_schema'."
        raise ResponseFormatError(msg)
    name = spec.get("name")
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        msg = (
            "Missing required parameter: 'response_format.json_schema.name'."
            if name is None
            else f"Invalid 'response_format.json_schema.name': {name!r} must match "
            "^[a-zA-Z0-9_-]{1,64}$."
        )
        raise ResponseFormatError(msg)
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        msg = "Missing required parameter: 'response_format.json_schema.schema'."
        raise ResponseFormatError(msg)
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        msg = (
            "Invalid type for 'response_format.json_schema.strict': expected a "
            f"boolean, but got {type(strict).__name__} instead."
        )
        raise ResponseFormatError(msg)
    if strict:
        problem = _strict_problem(schema)
        if problem is not None:
            msg = f"Invalid schema for response_format '{name}': {problem}"
            raise ResponseFormatError(msg)
    return schema


def _strict_problem(schema: dict[str, Any]) -> str | None:
    """What strict mode refuses in ``schema``, in Azure's words, or ``None``.

    The root is an object; every object sets ``additionalProperties: false`` and
    lists every property in ``required`` (structured outputs' documented rules).
    """
    if schema.get("type") != "object":
        return (
            "schema must be a JSON Schema of 'type: \"object\"', got "
            f"'type: \"{schema.get('type')}\"'."
        )
    stack: list[tuple[Any, tuple[str, ...]]] = [(schema, ())]
    while stack:
        node, where = stack.pop()
        if not isinstance(node, dict):
            continue
        if node.get("type") == "object" or "properties" in node:
            context = f"In context={where!r}, "
            if node.get("additionalProperties") is not False:
                return (
                    f"{context}'additionalProperties' is required to be supplied and "
                    "to be false."
                )
            properties = node.get("properties") or {}
            required = node.get("required")
            missing = [
                k
                for k in properties
                if not isinstance(required, list) or k not in required
            ]
            if missing:
                return (
                    f"{context}'required' is required to be supplied and to be an "
                    f"array including every key in properties. Missing '{missing[0]}'."
                )
            stack.extend((v, (*where, "properties", k)) for k, v in properties.items())
        stack.extend(
            (v, (*where, key, k))
            for key in ("$defs", "definitions")
            for k, v in (node.get(key) or {}).items()
        )
        stack.extend(
            (m, (*where, "anyOf", str(i)))
            for i, m in enumerate(node.get("anyOf") or [])
        )
        if isinstance(node.get("items"), dict):
            stack.append((node["items"], (*where, "items")))
    return None


def structured_answer(
    schema: dict[str, Any],
    prompt: str,
    *,
    schema_text: str | None = None,
    context: str = "",
) -> str:
    """A compact JSON answer to ``prompt`` that validates against ``schema``.

    Parameters
    ----------
    schema
        The request's ``response_format.json_schema.schema``.
    prompt
        The last user message.
    schema_text
        ``json.dumps(schema)``, when the caller has it: the schema is compiled once
        per text (computed here otherwise).
    context
        The system message: a condition quoted there decides the booleans.

    Returns
    -------
    str
        Compact JSON (no spaces), the same for the same schema and prompt.

    Examples
    --------
    >>> schema = {
    ...     "type": "object",
    ...     "properties": {
    ...         "question": {"type": "string"},
    ...         "result": {"type": "integer"},
    ...         "unit": {"type": ["string", "null"], "enum": ["m", None]},
    ...     },
    ...     "required": ["question", "result", "unit"],
    ...     "additionalProperties": False,
    ... }
    >>> structured_answer(schema, "What is 6 x 7?")
    '{"question":"What is 6 x 7?","result":42,"unit":"m"}'
    """
    value = _plan(schema, schema_text)(_Prompt(prompt, context))
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def broken_answer(schema: dict[str, Any], prompt: str) -> str:
    """Valid JSON that breaks ``schema``: the valid answer less its first property.

    When the root has no properties (not a strict schema), a JSON array is sent
    instead of an object.

    Examples
    --------
    >>> broken_answer(
    ...     {
    ...         "type": "object",
    ...         "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}},
    ...     },
    ...     "What is 1 + 1?",
    ... )
    '{"b":true}'
    """
    value = _plan(schema)(_Prompt(prompt))
    if isinstance(value, dict) and value:
        del value[next(iter(value))]
    else:
        value = [value]
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


#: A compiled schema: the answer's value for one prompt.
_Fill = Callable[["_Prompt"], Any]
#: Compiled schemas by their JSON text (a job sends one schema with every request).
_PLANS: dict[str, _Fill] = {}
_MAX_PLANS = 256


def _plan(schema: dict[str, Any], text: str | None = None) -> _Fill:
    """The compiled writer of ``schema`` (compiled once per schema text)."""
    key = json.dumps(schema) if text is None else text
    fill = _PLANS.get(key)
    if fill is None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        fill = _PLANS[key] = _Compiler(schema).compile(schema, "", ())
    return fill


#: Words a quoted condition's matching leaves out (they say nothing of the topic).
_COMMON = frozenset(
    [
        "about",
        "above",
        "after",
        "also",
        "among",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "could",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "from",
        "have",
        "having",
        "into",
        "itself",
        "just",
        "more",
        "most",
        "must",
        "other",
        "over",
        "same",
        "should",
        "some",
        "such",
        "than",
        "that",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "under",
        "until",
        "very",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "will",
        "with",
        "would",
        "your",
        "text",
        "mentions",
        "mention",
        "says",
        "contains",
    ]
)
_QUOTED = re.compile(r'"([^"]+)"')
_WORD = re.compile(r"[^\W\d_]{4,}")


class _Prompt:
    """What an answer is derived from: the prompt, its words and its arithmetic."""

    __slots__ = ("condition", "number", "raw", "text")

    def __init__(self, prompt: str, context: str = "") -> None:
        self.raw = prompt.encode()
        self.text = strip_directives(prompt)
        self.number: Fraction | None = arithmetic(prompt)
        #: the stems of a condition quoted in the system message (empty: none)
        self.condition: frozenset[str] = frozenset()
        quoted = _QUOTED.search(context) if '"' in context else None
        if quoted is not None:
            self.condition = _stems(quoted.group(1))

    def meets(self) -> bool:
        """Whether the prompt shares a word with the quoted condition."""
        return bool(self.condition & _stems(self.text))

    def hash(self, seed: Any) -> int:
        """A 64-bit hash of the field (``seed``: its path, hashed) and the prompt."""
        h = seed.copy()
        h.update(self.raw)
        return int.from_bytes(h.digest()[:8], "big")


def _stems(text: str) -> frozenset[str]:
    """The first 5 letters of each uncommon word of 4 letters or more."""
    return frozenset(
        w[:5] for w in (m.lower() for m in _WORD.findall(text)) if w not in _COMMON
    )


def _seed(path: str) -> Any:
    return hashlib.sha256(f"{path}\x00".encode())


class _Compiler:
    """Turns a schema into nested closures, each filling one node for a prompt."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def resolve(self, ref: str) -> Any:
        node: Any = self.root
        if not ref.startswith("#"):
            return None
        for part in ref.lstrip("#").split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def compile(self, schema: Any, path: str, refs: tuple[str, ...]) -> _Fill:
        if not isinstance(schema, dict):
            return _constant(None)
        ref = schema.get("$ref")
        if isinstance(ref, str):
            if ref in refs:  # a recursive type: stop here
                return _constant(None)
            return self.compile(self.resolve(ref), path, (*refs, ref))
        if "const" in schema:
            return _constant(schema["const"])
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return _enum(enum, path)
        for key in ("anyOf", "oneOf"):
            members = schema.get(key)
            if isinstance(members, list) and members:
                return self.compile(_union_branch(schema, members), path, refs)
        return self.typed(schema, path, refs)

    def typed(self, schema: dict[str, Any], path: str, refs: tuple[str, ...]) -> _Fill:
        """The writer of a schema by its ``type`` (the first non-null one)."""
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object" or (kind is None and "properties" in schema):
            return self.object(schema, path, refs)
        if kind == "array":
            return self.array(schema, path, refs)
        if kind == "string":
            return _string(schema, path)
        if kind == "integer":
            return _integer(schema, path)
        if kind == "number":
            return _real(schema, path)
        if kind == "boolean":
            seed = _seed(path)
            return lambda p: p.meets() if p.condition else p.hash(seed) % 2 == 0
        return _constant(None)

    def object(self, schema: dict[str, Any], path: str, refs: tuple[str, ...]) -> _Fill:
        """The writer of an object: each of its properties written in turn."""
        props = schema.get("properties") or {}
        fields = [
            (name, self.compile(sub, f"{path}.{name}", refs))
            for name, sub in props.items()
        ]
        return lambda p: {name: fill(p) for name, fill in fields}

    def array(self, schema: dict[str, Any], path: str, refs: tuple[str, ...]) -> _Fill:
        lowest, highest = schema.get("minItems"), schema.get("maxItems")
        lowest = lowest if isinstance(lowest, int) else None
        highest = highest if isinstance(highest, int) else None
        most = 2 if lowest is None else max(2, lowest)
        if highest is not None:
            most = min(most, highest)
        items = schema.get("items", {})
        fills = [self.compile(items, f"{path}[{i}]", refs) for i in range(most)]
        seed = _seed(path)

        def fill(p: _Prompt) -> list[Any]:
            count = 1 + p.hash(seed) % 2
            if lowest is not None:
                count = max(count, lowest)
            if highest is not None:
                count = min(count, highest)
            return [f(p) for f in fills[:count]]

        return fill


def _enum(enum: list[Any], path: str) -> _Fill:
    """The writer of an enum: one of its values (not null, if another), by the prompt."""
    values = [v for v in enum if v is not None] or enum
    seed = _seed(path)
    if any(isinstance(v, dict | list) for v in values):
        return lambda p: copy.deepcopy(values[p.hash(seed) % len(values)])
    named = {v.lower(): v for v in values if isinstance(v, str) and v.strip()}
    if not named:
        return lambda p: values[p.hash(seed) % len(values)]
    # the longest first: "very positive" before "positive"
    alternatives = sorted(named, key=len, reverse=True)
    pattern = re.compile(
        r"(?<!\w)("
        + "|".join(re.escape(v).replace("_", "[ _]") for v in alternatives)
        + r")(?!\w)",
        re.IGNORECASE,
    )

    def fill(p: _Prompt) -> Any:
        m = pattern.search(p.text)
        if m is not None:
            return named.get(m.group(1).lower().replace(" ", "_")) or named.get(
                m.group(1).lower(), values[0]
            )
        return values[p.hash(seed) % len(values)]

    return fill


def _union_branch(schema: dict[str, Any], members: list[Any]) -> Any:
    """The member of an anyOf/oneOf an answer follows: the first non-null one."""
    chosen = next(
        (m for m in members if not (isinstance(m, dict) and m.get("type") == "null")),
        members[0],
    )
    if isinstance(chosen, dict):
        # keywords beside anyOf (a format, bounds) hold for every branch
        outer = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
        chosen = {**outer, **chosen}
    return chosen


def _constant(value: Any) -> _Fill:
    if isinstance(value, dict | list):  # each answer gets its own
        return lambda p: copy.deepcopy(value)
    return lambda p: value


def _string(schema: dict[str, Any], path: str) -> _Fill:
    seed = _seed(path)
    fmt = schema.get("format")
    longest, shortest = schema.get("maxLength"), schema.get("minLength")

    def fill(p: _Prompt) -> str:
        if fmt in ("date", "date-time", "time", "email", "uuid"):
            h = p.hash(seed)
            day = EPOCH + dt.timedelta(days=h % 366)
            clock = dt.time(h % 24, (h >> 8) % 60, (h >> 16) % 60)
            if fmt == "date":
                return day.isoformat()
            if fmt == "date-time":
                return f"{day.isoformat()}T{clock.isoformat()}Z"
            if fmt == "time":
                return clock.isoformat()
            if fmt == "email":
                return f"user{h % 1000}@example.com"
            return str(uuid.UUID(int=h << 64 | h))
        text = " ".join(p.text.split()[:STRING_WORDS]) or "answer"
        if isinstance(longest, int):
            text = text[:longest]
        if isinstance(shortest, int) and len(text) < shortest:
            text = text.ljust(shortest, ".")
        return text

    return fill


def _integer(schema: dict[str, Any], path: str) -> _Fill:
    seed = _seed(path)
    lowest, highest = _bounds(schema)

    def fill(p: _Prompt) -> int:
        value = round(p.number) if p.number is not None else p.hash(seed) % 100
        if lowest is not None and value < lowest:
            value = math.ceil(lowest)
        if highest is not None and value > highest:
            value = math.floor(highest)
        return int(value)

    return fill


def _real(schema: dict[str, Any], path: str) -> _Fill:
    seed = _seed(path)
    lowest, highest = _bounds(schema)

    def fill(p: _Prompt) -> float | int:
        value: float | int
        number = p.number
        if number is not None:
            value = number.numerator if number.denominator == 1 else float(number)
        else:
            value = (p.hash(seed) % 1000) / 10
        if lowest is not None and value < lowest:
            value = lowest
        if highest is not None and value > highest:
            value = highest
        return value

    return fill


def _bounds(schema: dict[str, Any]) -> tuple[float | None, float | None]:
    """Inclusive bounds (exclusive ones moved in by a little)."""
    lowest, highest = _number(schema.get("minimum")), _number(schema.get("maximum"))
    low_x, high_x = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(low_x, int | float) and not isinstance(low_x, bool):
        step = 1 if schema.get("type") == "integer" else 1e-6
        lowest = low_x + step if lowest is None else max(lowest, low_x + step)
    if isinstance(high_x, int | float) and not isinstance(high_x, bool):
        step = 1 if schema.get("type") == "integer" else 1e-6
        highest = high_x - step if highest is None else min(highest, high_x - step)
    return lowest, highest


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return None
