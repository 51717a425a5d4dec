"""The emulator's embedding vectors: deterministic, unit length, and meaningful.

A text's vector is a hashed bag of words over a faint dense background. Each
lower-cased word (a run of letters, digits or ``_``) is hashed, with the model's
name, to :data:`COORDINATES_PER_WORD` coordinates of the model's native size, each
given a sign; the words' coordinates are summed (a word said twice counts twice). The
background is a pseudo-random vector of the whole text (its norm a quarter of one
word's), so no vector is zero and unrelated texts are near orthogonal, not exactly.
The sum is normalized. Texts that share words are closer (higher cosine) than texts
that share none, so a nearest-neighbour search over them finds what a test expects.

With ``dimensions=d`` the vector is the first ``d`` coordinates of the native one,
re-normalized, as ``text-embedding-3`` models shorten theirs. Floats are float32
values, so ``encoding_format="base64"`` (little-endian float32) decodes to exactly
the floats sent as JSON. Plain Python (``array``, ``hashlib``): numpy is no
dependency of the package.
"""

from __future__ import annotations

import array
import base64
import functools
import hashlib
import math
import re
import sys

__all__ = ["COORDINATES_PER_WORD", "embed", "to_base64"]

#: How many coordinates each word is hashed to.
COORDINATES_PER_WORD = 4
#: The background's norm, against one word's (2.0: four coordinates of 1).
BACKGROUND_NORM = 0.5

_WORD = re.compile(r"\w+")


@functools.lru_cache(maxsize=1 << 16)
def _word(model: str, native: int, word: str) -> tuple[tuple[int, float], ...]:
    """The coordinates of ``word`` in ``model``'s space, and their signs."""
    digest = hashlib.blake2b(
        f"{model}\0{word}".encode(), digest_size=4 * COORDINATES_PER_WORD
    ).digest()
    out = []
    for i in range(COORDINATES_PER_WORD):
        x = int.from_bytes(digest[4 * i : 4 * i + 4], "little")
        out.append(((x >> 1) % native, 1.0 if x & 1 else -1.0))
    return tuple(out)


def embed(text: str, model: str, native: int, dimensions: int) -> list[float]:
    """The unit vector of ``text`` for ``model``, cut to ``dimensions`` coordinates.

    Parameters
    ----------
    text
        The input to embed.
    model
        The embedding model's name (each model has its own space).
    native
        The model's native number of dimensions.
    dimensions
        How many of the first coordinates to keep (``native``: all).

    Returns
    -------
    list[float]
        ``dimensions`` float32 values, of norm 1 (to float32 precision).

    Examples
    --------
    >>> a = embed("red apples", "text-embedding-3-small", 1536, 1536)
    >>> b = embed("green apples", "text-embedding-3-small", 1536, 1536)
    >>> c = embed("stock market", "text-embedding-3-small", 1536, 1536)
    >>> len(a), round(sum(x * x for x in a), 5)
    (1536, 1.0)
    >>> cos = lambda u, v: sum(x * y for x, y in zip(u, v))
    >>> cos(a, b) > 0.3 > abs(cos(a, c))
    True
    """
    seed = hashlib.blake2b(f"{model}\0{text}".encode(), digest_size=32).digest()
    # a prefix of the native background: the same first coordinates at any size
    noise = hashlib.shake_256(seed).digest(dimensions)
    # bytes are uniform on [0, 255]: (b - 127.5) / 127.5 has variance ~1/3
    scale = BACKGROUND_NORM / (127.5 * math.sqrt(native / 3))
    vec = [(b - 127.5) * scale for b in noise]
    for word in _WORD.findall(text.lower()):
        for index, sign in _word(model, native, word):
            if index < dimensions:
                vec[index] += sign
    norm = math.hypot(*vec)
    return array.array("f", [x / norm for x in vec]).tolist()


def to_base64(vector: list[float]) -> str:
    """``vector`` as ``encoding_format="base64"`` sends it: little-endian float32.

    Examples
    --------
    >>> to_base64([1.0, -2.0])
    'AACAPwAAAMA='
    """
    packed = array.array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")
