"""The tasks' prompts, typed answers and columns. Internal: see :mod:`polars_azurechat.tasks`.

A :class:`Task` is what one task call sends and gives: its system message (a prompt
of :data:`PROMPTS` with its placeholders filled), the strict ``response_format`` of
its answer and how the answer becomes the column (one property of it, and the answer's
probability from its tokens: :func:`answer_confidence`).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import inspect
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import polars as pl

from polars_azurechat.options import output_schema

if TYPE_CHECKING:
    from polars_azurechat._types import ChatResult

__all__ = [
    "BUILDERS",
    "CLASSIFY_PROMPT",
    "EXTRACT_PROMPT",
    "FILTER_PROMPT",
    "PROMPTS",
    "SENTIMENT_LABELS",
    "SENTIMENT_PROMPT",
    "SUMMARIZE_PROMPT",
    "TRANSLATE_PROMPT",
    "Task",
    "answer_confidence",
    "build_task",
]

#: ``classify``'s system message; ``{labels}`` is one line per label
#: (``- label: description``), ``{instructions}`` yours (a line), if any.
CLASSIFY_PROMPT: Final = (
    "Classify the text the user sends into exactly one of these labels:\n"
    "{labels}\n"
    "{instructions}"
    'Answer in JSON as {"label": "<label>"}, the label spelt exactly as listed.'
)
#: ``filter``'s system message; ``{condition}`` is the condition.
FILTER_PROMPT: Final = (
    'Decide whether the text the user sends meets this condition: "{condition}"\n'
    "{instructions}"
    'Answer in JSON as {"match": true} when it does, {"match": false} when it '
    "does not."
)
#: ``sentiment``'s system message (``{labels}`` as for ``classify``).
SENTIMENT_PROMPT: Final = (
    "Classify the sentiment the text the user sends expresses, as one of:\n"
    "{labels}\n"
    "{instructions}"
    'Answer in JSON as {"label": "<label>"}.'
)
#: ``extract``'s system message.
EXTRACT_PROMPT: Final = (
    "Extract the fields of the JSON schema from the text the user sends. Use null "
    "for a field the text does not give, where the schema allows null; do not "
    "guess.\n"
    "{instructions}"
    "Answer in JSON following the schema."
)
#: ``summarize``'s system message; ``{max_words}`` is the word bound.
SUMMARIZE_PROMPT: Final = (
    "Summarize the text the user sends in at most {max_words} words, in its "
    "language.\n"
    "{instructions}"
    'Answer in JSON as {"summary": "<summary>"}.'
)
#: ``translate``'s system message; ``{language}`` is the target language.
TRANSLATE_PROMPT: Final = (
    "Translate the text the user sends into {language}. Keep its meaning, tone and "
    "formatting; translate nothing else.\n"
    "{instructions}"
    'Answer in JSON as {"translation": "<translation>"}.'
)
#: Every task's default prompt, by name.
PROMPTS: Final = {
    "classify": CLASSIFY_PROMPT,
    "filter": FILTER_PROMPT,
    "sentiment": SENTIMENT_PROMPT,
    "extract": EXTRACT_PROMPT,
    "summarize": SUMMARIZE_PROMPT,
    "translate": TRANSLATE_PROMPT,
}
#: ``sentiment``'s labels.
SENTIMENT_LABELS: Final = ("positive", "neutral", "negative")

#: A placeholder, or one written twice over (``{{labels}}``: the text ``{labels}``).
_PLACEHOLDER = re.compile(
    r"\{\{\{([A-Za-z_]\w*)\}\}\}|\{\{([A-Za-z_]\w*)\}\}|\{([A-Za-z_]\w*)\}"
)
#: Names other tools fill with the row's text: in a task's prompt, a mistake.
_ROW_NAMES = frozenset(
    {"text", "input", "row", "content", "document", "message", "prompt", "question"}
)


def _render(template: str, **values: str) -> str:
    r"""``template`` with its placeholders filled (other braces are left as they are).

    A prompt of one's own lacking ``{instructions}`` gets them on a line at its end;
    lacking another placeholder of the task (``{labels}``, ``{condition}``, ...), it
    is refused: what was given would not be sent; so is a placeholder the task does
    not fill that looks meant (``{text}``, a near miss of the task's: it would be sent
    as it is). A name in double braces (``{{labels}}``, ``{{text}}``) is written in
    single ones, a placeholder in triple braces filled inside single ones, as
    ``str.format`` does; other braces stay as written (``{a}``, ``{3}``, JSON).

    Examples
    --------
    >>> _render("Sort it.", instructions="Be strict.\n")
    'Sort it.\nBe strict.'
    >>> _render("Pick from {labels} ({{labels}}).", labels="a, b")
    'Pick from a, b ({labels}).'
    """
    found = [m.group(1) or m.group(3) for m in _PLACEHOLDER.finditer(template)]
    present = {name for name in found if name}
    unknown = sorted(
        name
        for name in present - set(values)  # {a} in LaTeX, say, stays as written
        if name in _ROW_NAMES or difflib.get_close_matches(name, values, cutoff=0.75)
    )
    if unknown:  # a typo, or a placeholder another tool fills ({text}): sent as it is
        shown = ", ".join("{" + name + "}" for name in values)
        close = difflib.get_close_matches(unknown[0], values, n=1, cutoff=0.75)
        meant = f"did you mean {{{close[0]}}}? " if close else ""
        msg = (
            f"prompt= has {{{unknown[0]}}}, which this task does not fill ({meant}it "
            f"fills {shown}; the row's text is the user message); write "
            f"{{{{{unknown[0]}}}}} for the braces themselves"
        )
        raise ValueError(msg)
    for name, value in values.items():
        if value and name not in present:
            if name != "instructions":
                msg = (
                    f"prompt= has no {{{name}}}: the task's {name} would not be sent; "
                    f"put {{{name}}} where it goes (explain_prompt() shows the "
                    "task's own prompt)"
                )
                raise ValueError(msg)
            template = template.rstrip("\n") + "\n{instructions}"

    def fill(m: re.Match[str]) -> str:
        if m.group(2):  # {{name}}: the name in single braces
            return "{" + m.group(2) + "}"
        if m.group(1):  # {{{name}}}: the value in single braces, as str.format does
            return (
                "{" + values[m.group(1)] + "}" if m.group(1) in values else m.group(0)
            )
        return values.get(m.group(3), m.group(0))

    filled = _PLACEHOLDER.sub(fill, template)
    return filled.rstrip("\n") if template.endswith("{instructions}") else filled


def _instructions(text: str | None) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        msg = f"instructions must be a str, got {type(text).__name__}"
        raise TypeError(msg)
    return text.strip() + "\n" if text.strip() else ""


def _prompt(prompt: str | None, default: str) -> str:
    if prompt is None:
        return default
    if not isinstance(prompt, str) or not prompt.strip():
        msg = f"prompt must be a non-empty str, got {prompt!r:.60}"
        raise TypeError(msg)
    return prompt


@dataclasses.dataclass(frozen=True)
class Task:
    """One task, ready to run: its system message, its answer's type, its column.

    Built by the task functions (and :func:`explain_prompt`); read it to see exactly
    what is sent.

    Attributes
    ----------
    name
        The task (``"classify"``, ...).
    system
        The system message sent with every row.
    response_format
        The answer's type (a JSON-schema dict, or the model given to ``extract``).
    field
        The answer's property that makes the column (``None``: the whole Struct).
    confidence
        Whether the column adds the answer's probability.
    """

    name: str
    system: str
    response_format: Any
    field: str | None
    confidence: bool = False

    @functools.cached_property
    def answer_dtype(self) -> pl.Struct:
        """The typed answer's Struct (what ``complete`` would give)."""
        schema = output_schema(self.response_format)
        assert schema is not None  # noqa: S101 - a task's answer is always typed
        return schema.dtype

    @functools.cached_property
    def dtype(self) -> pl.DataType:
        """The column's dtype."""
        answer = self.answer_dtype
        if self.field is None:
            return answer
        value = next(f.dtype for f in answer.fields if f.name == self.field)
        assert isinstance(value, pl.DataType)  # noqa: S101 - a Struct's field
        if not self.confidence:
            return value
        return pl.Struct({self.field: value, "confidence": pl.Float64()})

    def column(self, results: Sequence[ChatResult | None], name: str) -> pl.Series:
        """The column of ``results`` (a failed or null row is null)."""
        field = self.field
        assert field is not None  # noqa: S101 - extract keeps complete's column
        values = [
            None if r is None or r.parsed is None else r.parsed[field] for r in results
        ]
        dtype = self.dtype
        if not self.confidence:
            return pl.Series(name, values, dtype=dtype)
        assert isinstance(dtype, pl.Struct)  # noqa: S101
        key = dtype.fields[0].name
        rows = [
            None
            if v is None or r is None
            else {key: v, "confidence": answer_confidence(r.content, r.logprobs, field)}
            for v, r in zip(values, results, strict=True)
        ]
        return pl.Series(name, rows, dtype=dtype)


def answer_confidence(
    content: str | None,
    logprobs: Sequence[tuple[str, float]] | None,
    field: str,
) -> float | None:
    """The probability of the value of ``field`` in a JSON answer, from its tokens.

    ``exp`` of the sum of the log-probabilities of the tokens that overlap the
    value's characters (a string's inside its quotes; ``true``/``false``).
    ``None`` when there are none, or the tokens do not spell ``content``.

    Examples
    --------
    >>> tokens = [('{"', 0.0), ("label", 0.0), ('":"', 0.0), ("bill", -0.1)]
    >>> tokens += [("ing", -0.2), ('"}', 0.0)]
    >>> round(answer_confidence('{"label":"billing"}', tokens, "label"), 4)
    0.7408
    """
    if not content or not logprobs:
        return None
    span = _value_span(content, field)
    if span is None:
        return None
    start, end = span
    total, position, used = 0.0, 0, False
    for token, logprob in logprobs:
        after = position + len(token)
        if after > start and position < end:
            total += logprob
            used = True
        position = after
    if position != len(content) or not used:
        return None
    return math.exp(total)


_LITERAL = re.compile(r"true|false|-?\d+(?:\.\d+)?")


def _value_span(content: str, field: str) -> tuple[int, int] | None:
    """Where the value of ``field`` is in ``content`` (a string's without quotes)."""
    m = re.search(r'"' + re.escape(field) + r'"\s*:\s*', content)
    if m is None:
        return None
    i = m.end()
    if content.startswith('"', i):
        try:
            _, end = json.decoder.scanstring(content, i + 1)  # type: ignore[attr-defined]
        except ValueError:
            return None
        return i + 1, end - 1
    literal = _LITERAL.match(content, i)
    return None if literal is None else literal.span()


# -- building the tasks ---------------------------------------------------------------


def _labels(labels: Any, task: str = "classify") -> dict[str, str]:
    """The labels as ``{label: description}`` (``""``: none), checked."""
    if isinstance(labels, type) and issubclass(labels, enum.Enum):
        labels = [m.value for m in labels]
    elif isinstance(labels, pl.Enum):
        labels = labels.categories.to_list()
    if isinstance(labels, Mapping):
        out = dict(labels)
    elif isinstance(labels, Sequence) and not isinstance(labels, str | bytes):
        out = dict.fromkeys(labels, "")
        if 1 < len(out) < len(labels):  # (one label, repeated: refused below)
            twice = next(x for i, x in enumerate(labels) if x in labels[:i])
            msg = f"labels must be distinct: {twice!r} is given twice"
            raise ValueError(msg)
    else:
        msg = (
            "labels must be a list of strings, a {label: description} dict, an Enum "
            f"class or a pl.Enum, got {type(labels).__name__}"
        )
        raise TypeError(msg)
    seen: dict[str, str] = {}
    for label, description in out.items():
        if not isinstance(label, str) or not label.strip():
            msg = f"labels must be non-empty strings, got {label!r}"
            raise TypeError(msg)
        if "\n" in label or "\r" in label:  # it would read as more labels
            msg = f"a label is one line, got {label!r}"
            raise ValueError(msg)
        twin = seen.setdefault(label.strip(), label)
        if twin != label:
            msg = (
                f"labels must be distinct: {twin!r} and {label!r} differ only in "
                "spaces (the prompt shows them alike)"
            )
            raise ValueError(msg)
        if not isinstance(description, str):
            msg = f"the description of label {label!r} must be a str"
            raise TypeError(msg)
    if len(out) < 2:
        msg = f"{task} needs at least 2 distinct labels, got {list(out)}"
        raise ValueError(msg)
    return out


def _object(name: str, key: str, prop: dict[str, Any]) -> dict[str, Any]:
    """A strict ``response_format`` of one property ``key``."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": name,
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {key: prop},
                "required": [key],
                "additionalProperties": False,
            },
        },
    }


def _classify_task(
    labels: Any,
    instructions: str | None = None,
    prompt: str | None = None,
    confidence: bool = False,
    *,
    _name: str = "classify",
    _default: str = CLASSIFY_PROMPT,
) -> Task:
    chosen = _labels(labels, _name)
    lines = "\n".join(
        f"- {label}: {about}" if about else f"- {label}"
        for label, about in chosen.items()
    )
    system = _render(
        _prompt(prompt, _default),
        labels=lines,
        instructions=_instructions(instructions),
    )
    fmt = _object(_name, "label", {"type": "string", "enum": list(chosen)})
    return Task(_name, system, fmt, "label", _flag("confidence", confidence))


def _sentiment_task(
    instructions: str | None = None,
    prompt: str | None = None,
    confidence: bool = False,
    labels: Any = SENTIMENT_LABELS,
) -> Task:
    return _classify_task(
        labels,
        instructions,
        prompt,
        confidence,
        _name="sentiment",
        _default=SENTIMENT_PROMPT,
    )


def _filter_task(
    condition: str,
    instructions: str | None = None,
    prompt: str | None = None,
    confidence: bool = False,
) -> Task:
    if not isinstance(condition, str) or not condition.strip():
        msg = f"condition must be a non-empty str, got {condition!r:.60}"
        raise TypeError(msg)
    system = _render(
        _prompt(prompt, FILTER_PROMPT),
        condition=condition.strip(),
        instructions=_instructions(instructions),
    )
    fmt = _object("filter", "match", {"type": "boolean"})
    return Task("filter", system, fmt, "match", _flag("confidence", confidence))


def _extract_task(
    schema: Any, instructions: str | None = None, prompt: str | None = None
) -> Task:
    try:
        typed = output_schema(schema)  # a typed answer's type, checked now
    except TypeError as exc:  # it named response_format, which the user did not give
        said = str(exc).replace("response_format must be", "extract's schema must be")
        raise TypeError(said) from None
    if typed is None:
        msg = "extract needs a pydantic model, a JSON-schema dict or a pl.Struct"
        raise TypeError(msg)
    system = _render(
        _prompt(prompt, EXTRACT_PROMPT), instructions=_instructions(instructions)
    )
    return Task("extract", system, schema, None)


def _summarize_task(
    max_words: int = 50, instructions: str | None = None, prompt: str | None = None
) -> Task:
    if not isinstance(max_words, int) or isinstance(max_words, bool):
        msg = f"max_words must be an integer >= 1, got {max_words!r}"
        raise TypeError(msg)
    if max_words < 1:
        msg = f"max_words must be an integer >= 1, got {max_words!r}"
        raise ValueError(msg)
    system = _render(
        _prompt(prompt, SUMMARIZE_PROMPT),
        max_words=str(max_words),
        instructions=_instructions(instructions),
    )
    fmt = _object("summary", "summary", {"type": "string"})
    return Task("summarize", system, fmt, "summary")


def _translate_task(
    to: str, instructions: str | None = None, prompt: str | None = None
) -> Task:
    if not isinstance(to, str) or not to.strip():
        msg = f"to must be a language name (a non-empty str), got {to!r:.60}"
        raise TypeError(msg)
    system = _render(
        _prompt(prompt, TRANSLATE_PROMPT),
        language=to.strip(),
        instructions=_instructions(instructions),
    )
    fmt = _object("translation", "translation", {"type": "string"})
    return Task("translate", system, fmt, "translation")


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        msg = f"{name} must be True or False, got {value!r}"
        raise TypeError(msg)
    return value


BUILDERS: Final[dict[str, Callable[..., Task]]] = {
    "classify": _classify_task,
    "filter": _filter_task,
    "sentiment": _sentiment_task,
    "extract": _extract_task,
    "summarize": _summarize_task,
    "translate": _translate_task,
}


def build_task(name: str, arguments: Mapping[str, Any]) -> Task:
    """The task ``name`` with ``arguments`` (its own), checked."""
    builder = BUILDERS.get(name)
    if builder is None:
        msg = f"no task {name!r}; the tasks are {', '.join(BUILDERS)}"
        raise ValueError(msg)
    own = {k for k in inspect.signature(builder).parameters if not k.startswith("_")}
    unknown = sorted(set(arguments) - own)
    if unknown:
        close = difflib.get_close_matches(unknown[0], own, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        msg = (
            f"{name}() takes no argument {unknown[0]!r}{hint}; its arguments are "
            f"{', '.join(sorted(own))}"
        )
        raise TypeError(msg)
    needed = [
        k
        for k, p in inspect.signature(builder).parameters.items()
        if p.default is inspect.Parameter.empty and k not in arguments
    ]
    if needed:
        msg = f"{name}() needs {', '.join(f'{k}=' for k in needed)}"
        raise TypeError(msg)
    return builder(**arguments)
