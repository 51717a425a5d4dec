"""The emulator's log-probabilities (``logprobs: true``), deterministic and its own.

An answer is cut into tokens its own way (runs of letters, of digits, of spaces, of
other characters: ``{"label":"billing"}`` is ``{"``, ``label``, ``":"``, ``billing``,
``"}``), and each token gets a log-probability:

- punctuation and spaces: ``0.0`` (structured outputs force them: the grammar
  leaves no other choice);
- a word or number the prompt contains (any case): a probability in ``[0.90, 0.99]``
  (the model is sure of what it read);
- any other word: a probability in ``[0.40, 0.85]``;

both from a hash of the prompt, the token and its place. ``top_logprobs`` lists the
token itself first, then variants of it (less likely), up to the number asked.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

__all__ = ["logprobs_content"]

_TOKEN = re.compile(r"[^\W\d_]+|\d+|\s+|[^\w\s]+|_+")


def _unit(prompt: bytes, token: str, index: int) -> float:
    """A number in ``[0, 1]`` from the prompt, the token and its place."""
    digest = hashlib.sha256(prompt + f"\x00{index}\x00{token}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 0xFFFFFFFF


def logprobs_content(answer: str, prompt: str, top: int = 0) -> list[dict[str, Any]]:
    """``choices[0].logprobs.content`` of ``answer`` to ``prompt``.

    Parameters
    ----------
    answer
        The answer's text.
    prompt
        The last user message.
    top
        ``top_logprobs`` asked (0: an empty list each).

    Examples
    --------
    >>> out = logprobs_content('{"label":"billing"}', "my billing address")
    >>> [t["token"] for t in out]
    ['{"', 'label', '":"', 'billing', '"}']
    >>> out[0]["logprob"], 0.9 <= math.exp(out[3]["logprob"]) <= 0.99
    (0.0, True)
    """
    seen = prompt.lower()
    raw = prompt.encode("utf-8", "surrogatepass")
    out = []
    for i, token in enumerate(_TOKEN.findall(answer)):
        if not token.strip() or not any(c.isalnum() for c in token):
            logprob = 0.0
        else:
            u = _unit(raw, token, i)
            p = 0.90 + 0.09 * u if token.lower() in seen else 0.40 + 0.45 * u
            logprob = math.log(p)
        entry: dict[str, Any] = {
            "token": token,
            "logprob": logprob,
            "bytes": list(token.encode()),
            "top_logprobs": [],
        }
        if top:  # the others share what the chosen one leaves: halves, so at most it
            rest = max(1e-9, 1.0 - math.exp(logprob))
            others = [f"{token}{'_' * k}" for k in range(1, top)]
            entry["top_logprobs"] = [
                {"token": token, "logprob": logprob, "bytes": list(token.encode())}
            ] + [
                {
                    "token": t,
                    "logprob": math.log(rest / 2**k),
                    "bytes": list(t.encode()),
                }
                for k, t in enumerate(others, 1)
            ]
        out.append(entry)
    return out
