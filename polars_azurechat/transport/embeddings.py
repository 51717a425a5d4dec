"""The embeddings API on the wire: its answer read. Not meant for outside use.

An embeddings request (``POST .../embeddings``; the transport builds the URL for the
classic and the v1 surface as for chat) carries many texts in ``input``; the engine
asks for ``encoding_format="base64"``: each vector then comes as the base64 of its
little-endian float32 bytes, about a third of the JSON floats' size, and is never
decoded here. The bytes are decoded once per column into an Arrow buffer
(:func:`polars_azurechat.engine.texts.vectors_to_series`): no Python loop over a
vector's elements anywhere. A server that answers JSON floats anyway has them packed
into the same bytes by :mod:`array` (a C loop).
"""

from __future__ import annotations

import array
import base64
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from polars_azurechat.errors import MalformedResponseError

if TYPE_CHECKING:
    from polars_azurechat.transport.http import Completion

__all__ = ["parse_embeddings"]


def _b64(vector: Any) -> str:
    """A vector as base64 of little-endian float32: as sent, or packed from floats."""
    if isinstance(vector, str):
        return vector
    if not isinstance(vector, list):
        raise TypeError("an embedding is neither base64 nor a list")
    packed = array.array("f", vector)
    if sys.byteorder != "little":  # pragma: no cover - little-endian machines
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def parse_embeddings(raw: bytes, headers: Mapping[str, str]) -> Completion:
    """Read an embeddings answer: its vectors in input order, its usage and headers.

    Examples
    --------
    >>> raw = b'{"data": [{"index": 1, "embedding": [0.5]}, {"index": 0, "embedding": "AACAPw=="}],'
    >>> raw += b' "model": "text-embedding-3-small", "usage": {"prompt_tokens": 3}}'
    >>> c = parse_embeddings(raw, {"x-ratelimit-remaining-tokens": "997"})
    >>> c.vectors, c.prompt_tokens, c.remaining_tokens
    (['AACAPw==', 'AAAAPw=='], 3, 997)
    """
    from polars_azurechat.transport.http import Completion, _int_header

    try:
        body = json.loads(raw)
        data = sorted(body["data"], key=lambda d: d["index"])
        vectors = [_b64(d["embedding"]) for d in data]
        usage = body.get("usage") or {}
        model = body.get("model")
        return Completion(
            content=None,
            finish_reason=None,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=0,
            remaining_requests=_int_header(headers, "x-ratelimit-remaining-requests"),
            remaining_tokens=_int_header(headers, "x-ratelimit-remaining-tokens"),
            model=model if isinstance(model, str) else None,
            limit_requests=_int_header(headers, "x-ratelimit-limit-requests"),
            limit_tokens=_int_header(headers, "x-ratelimit-limit-tokens"),
            request_id=headers.get("apim-request-id") or headers.get("x-request-id"),
            vectors=vectors,
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        msg = f"200 with a body that is not an embeddings answer ({type(exc).__name__})"
        raise MalformedResponseError(msg) from exc
