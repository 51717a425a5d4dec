"""The emulator's deterministic answers and the ``[emu:...]`` directives in prompts."""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["answer_for", "arithmetic", "parse_directives", "strip_directives"]

_DIRECTIVE = re.compile(r"\[emu:([^\]]*)\]")
_ARITH = re.compile(
    r"what\s+is\s+(-?\d+(?:\.\d+)?)\s*([-+*/x\u00d7\u00f7])\s*(-?\d+(?:\.\d+)?)",
    re.IGNORECASE,
)


def answer_for(prompt: str) -> str:
    """The emulator's deterministic answer to a user prompt.

    Parameters
    ----------
    prompt
        The last user message.

    Returns
    -------
    str
        The result of an arithmetic question (``"What is 6 x 7?"``), else
        ``"Echo: <prompt>"`` without its ``[emu:...]`` directives.

    Examples
    --------
    >>> answer_for("What is 53 + 53?")
    '106'
    >>> answer_for("What is 7 / 2?")
    '3.5'
    >>> answer_for("Say hi")
    'Echo: Say hi'
    """
    if _ARITH.search(prompt) is None:
        return f"Echo: {strip_directives(prompt)}"
    value = arithmetic(prompt)
    if value is None:
        return "undefined"
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


def arithmetic(prompt: str) -> Fraction | None:
    """The exact result of the prompt's arithmetic question, if it asks one.

    ``None`` when there is no question, or it divides by zero.

    Examples
    --------
    >>> arithmetic("What is 6 x 7?"), arithmetic("What is 7 / 2?"), arithmetic("hi")
    (Fraction(42, 1), Fraction(7, 2), None)
    """
    m = _ARITH.search(prompt)
    if m is None:
        return None
    a, op, b = _exact(m.group(1)), m.group(2), _exact(m.group(3))
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op in "*x\u00d7":
        return a * b
    if b == 0:
        return None
    return a / b


def _exact(number: str) -> Fraction:
    # an integer's Fraction is several times cheaper to make than a parsed one's
    return Fraction(int(number)) if "." not in number else Fraction(number)


def strip_directives(text: str) -> str:
    """``text`` without its ``[emu:...]`` directives, stripped.

    Examples
    --------
    >>> strip_directives("[emu:500*1] Say hi ")
    'Say hi'
    """
    return _DIRECTIVE.sub("", text).strip()


def parse_directives(text: str) -> dict[str, str]:
    """The ``[emu:...]`` directives in a prompt, as ``{name: argument}``.

    ``500*2`` and ``delay=50`` both give a name and an argument; a bare ``filter``
    gives an empty argument.

    Examples
    --------
    >>> parse_directives("[emu:429*1, delay=5] hi [emu:filter]")
    {'429': '1', 'delay': '5', 'filter': ''}
    """
    out: dict[str, str] = {}
    for block in _DIRECTIVE.findall(text):
        for item in block.split(","):
            item = item.strip()
            if not item:
                continue
            if "=" in item:
                k, v = item.split("=", 1)
            elif "*" in item:
                k, v = item.split("*", 1)
            else:
                k, v = item, ""
            out[k.strip()] = v.strip()
    return out
