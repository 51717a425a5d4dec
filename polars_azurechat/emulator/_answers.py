"""The emulator's deterministic answers and the ``[emu:...]`` directives in prompts."""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["answer_for", "parse_directives"]

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
    m = _ARITH.search(prompt)
    if m is None:
        return f"Echo: {_DIRECTIVE.sub('', prompt).strip()}"
    a, op, b = Fraction(m.group(1)), m.group(2), Fraction(m.group(3))
    if op == "+":
        value = a + b
    elif op == "-":
        value = a - b
    elif op in "*x\u00d7":
        value = a * b
    elif b == 0:
        return "undefined"
    else:
        value = a / b
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


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
