"""A chat completion's log-probabilities, as the tokens that spell its answer. Internal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["token_logprobs"]


def token_logprobs(value: Any) -> tuple[tuple[str, float], ...] | None:
    r"""``choices[0].logprobs.content`` as ``(token, logprob)`` pairs (``None``: absent).

    A character the model wrote in several tokens (CJK, emoji: each token's ``bytes``
    holds part of its UTF-8) is one pair: the character, and the sum of the parts'
    log-probabilities (the probability of all of them). So the tokens spell the
    answer, as the confidence of a label needs.

    Examples
    --------
    >>> token_logprobs(
    ...     {
    ...         "content": [
    ...             {"token": "bytes:\xe6\x97", "logprob": -0.1, "bytes": [230, 151]},
    ...             {"token": "bytes:\xa5", "logprob": -0.2, "bytes": [165]},
    ...             {"token": "本", "logprob": -0.3, "bytes": [230, 156, 172]},
    ...         ]
    ...     }
    ... )
    (('日', -0.30000000000000004), ('本', -0.3))
    """
    content = value.get("content") if isinstance(value, Mapping) else None
    if not isinstance(content, list):
        return None
    out: list[tuple[str, float]] = []
    pending, held = b"", 0.0  # the bytes of a character not yet whole
    for t in content:
        token, logprob, raw = str(t["token"]), float(t["logprob"]), t.get("bytes")
        if not pending and (not isinstance(raw, list) or raw == list(token.encode())):
            out.append((token, logprob))  # the common case: whole characters
            continue
        pending += bytes(raw) if isinstance(raw, list) else token.encode()
        held += logprob
        try:
            out.append((pending.decode("utf-8"), held))
        except UnicodeDecodeError as exc:
            if exc.reason != "unexpected end of data":  # not UTF-8 at all
                out.append((token, held))
            else:
                continue
        pending, held = b"", 0.0
    if pending:
        out.append((pending.decode("utf-8", "replace"), held))
    return tuple(out)
