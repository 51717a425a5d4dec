"""Texts to embeddings requests, and vectors back to a column. Internal.

The embeddings counterpart of :mod:`polars_azurechat.engine.convert`, light to
import (the package imports it): :class:`EmbeddingSpec` (a job's vector size and
packing limits, checked before any request), :func:`texts_to_requests` (one
:class:`TextsRequest` per row: ``None`` for a null, an input error for an empty or
over-long text) and :func:`vectors_to_series` (the base64 vectors to an
``Array(Float32, n)`` column through one Arrow buffer).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

from polars_azurechat._types import ChatRequest, ChatResult
from polars_azurechat.errors import InputError, MalformedResponseError
from polars_azurechat.transport import tokens as _tokens

__all__ = [
    "EMBEDDING_MODELS",
    "MAX_INPUTS",
    "MAX_INPUT_TOKENS",
    "REQUEST_TOKENS",
    "EmbeddingSpec",
    "TextsRequest",
    "check_text_dtype",
    "texts_to_requests",
    "vectors_to_series",
]

#: Azure's embedding models and their native sizes (the column's width when
#: ``dimensions`` is not given); ``dimensions`` is taken by ``text-embedding-3`` only.
EMBEDDING_MODELS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
#: Azure's limits: inputs per request, tokens per input, tokens per request.
MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8192
REQUEST_TOKENS = 300_000


@dataclasses.dataclass(frozen=True, slots=True)
class EmbeddingSpec:
    """What an embeddings job asks: its model, its vectors' size, its packing.

    Parameters
    ----------
    size
        The vectors' length (the column's ``Array`` width).
    dimensions
        Sent as ``dimensions`` (``None``: the model's native size, not sent).
    inputs_per_request, request_tokens
        The packing limits.
    truncate
        Cut a text over :data:`MAX_INPUT_TOKENS` to fit (else the row fails).
    """

    size: int
    dimensions: int | None = None
    inputs_per_request: int = MAX_INPUTS
    request_tokens: int = REQUEST_TOKENS
    truncate: bool = False

    @classmethod
    def build(
        cls,
        *,
        deployment: str,
        model: str | None,
        dimensions: int | None,
        inputs_per_request: int = MAX_INPUTS,
        request_tokens: int = REQUEST_TOKENS,
        truncate: bool = False,
    ) -> EmbeddingSpec:
        """The spec of a job, checked before any request.

        The model is ``model``, else the deployment's name when it starts with one of
        :data:`EMBEDDING_MODELS` (longest first). Without ``dimensions`` the model's
        native size must be known.

        Examples
        --------
        >>> EmbeddingSpec.build(
        ...     deployment="text-embedding-3-small", model=None, dimensions=None
        ... ).size
        1536
        >>> EmbeddingSpec.build(deployment="emb", model=None, dimensions=256).size
        256
        >>> EmbeddingSpec.build(deployment="emb", model=None, dimensions=None)
        Traceback (most recent call last):
        ...
        ValueError: the size of deployment 'emb''s vectors is not known: give dimensions=, or model= (one of text-embedding-3-small, text-embedding-3-large, text-embedding-ada-002)
        """
        model = model or _model_of(deployment)
        native = EMBEDDING_MODELS.get(model) if model else None
        for name, value, top in (
            ("inputs_per_request", inputs_per_request, MAX_INPUTS),
            ("request_tokens", request_tokens, None),
        ):
            if not isinstance(value, int) or value < 1 or (top and value > top):
                limit = f" and <= {top:,}" if top else ""
                msg = f"{name} must be an integer >= 1{limit}, got {value!r}"
                raise ValueError(msg)
        if dimensions is None:
            if native is None:
                msg = (
                    f"the size of deployment {deployment!r}'s vectors is not known: "
                    "give dimensions=, or model= (one of "
                    f"{', '.join(EMBEDDING_MODELS)})"
                )
                raise ValueError(msg)
            return cls(native, None, inputs_per_request, request_tokens, truncate)
        if isinstance(dimensions, bool) or not isinstance(dimensions, int):
            msg = f"dimensions must be an integer, got {dimensions!r}"
            raise TypeError(msg)
        if dimensions < 1 or (native is not None and dimensions > native):
            msg = f"dimensions must be 1 to {native or 'the model size'}, got {dimensions}"
            raise ValueError(msg)
        if model == "text-embedding-ada-002":
            msg = "text-embedding-ada-002 takes no dimensions= (its vectors are 1536)"
            raise ValueError(msg)
        return cls(dimensions, dimensions, inputs_per_request, request_tokens, truncate)


def _model_of(deployment: str) -> str | None:
    name = deployment.lower()
    found = [m for m in EMBEDDING_MODELS if name.startswith(m)]
    return max(found, key=len) if found else None


@dataclasses.dataclass(slots=True)
class TextsRequest(ChatRequest):
    """Texts to embed (one for a row, several for a request) and their tokens."""

    texts: list[str] = dataclasses.field(default_factory=list)
    tokens: int = 0


def texts_to_requests(
    rows: Iterable[Any], *, truncate: bool = False
) -> list[TextsRequest | None]:
    """One request per row: ``None`` for a null, an input error for an empty text.

    A text over :data:`MAX_INPUT_TOKENS` tokens is an input error too, unless
    ``truncate`` (it is then cut to fit).

    Examples
    --------
    >>> out = texts_to_requests(["red apples", None, ""])
    >>> out[0].texts, out[0].tokens, out[1], type(out[2].error).__name__
    (['red apples'], 2, None, 'InputError')
    """
    out: list[TextsRequest | None] = []
    for text in rows:
        if text is None:
            out.append(None)
        elif not isinstance(text, str):
            error = InputError(
                f"a text to embed must be a string, not {type(text).__name__}"
            )
            out.append(TextsRequest([], error))
        elif not text:
            error = InputError("an empty text cannot be embedded (Azure refuses '')")
            out.append(TextsRequest([], error))
        else:
            out.append(_text_request(text, truncate=truncate))
    return out


def _text_request(text: str, *, truncate: bool) -> TextsRequest:
    tokens = _tokens.text_tokens(text)
    if tokens > MAX_INPUT_TOKENS:
        if not truncate:
            error = InputError(
                f"the text has {tokens:,} tokens, over the {MAX_INPUT_TOKENS:,} an "
                "embedding input may have (truncate=True cuts it to fit)"
            )
            return TextsRequest([], error)
        text = _tokens.truncate_text(text, MAX_INPUT_TOKENS)
        tokens = _tokens.text_tokens(text)
    return TextsRequest([], None, [text], tokens)


def vectors_to_series(
    results: Sequence[ChatResult | None], size: int, name: str
) -> pl.Series:
    """The ``Array(Float32, size)`` column of ``results`` (null where a row has none).

    Each answered row's ``content`` is its vector's base64; all are decoded into one
    buffer handed to Arrow, then to Polars, without a copy per element.

    Examples
    --------
    >>> one = base64.b64encode(bytes.fromhex("0000803f00000040")).decode()
    >>> vectors_to_series([ChatResult(content=one), None], 2, "v").to_list()
    [[1.0, 2.0], None]
    """
    import pyarrow as pa

    width = 4 * size
    zero = bytes(width)
    chunks: list[bytes] = []
    valid: list[bool] = []
    for r in results:
        if r is None or r.exception is not None or r.content is None:
            chunks.append(zero)
            valid.append(False)
        else:
            raw = base64.b64decode(r.content)
            if len(raw) != width:
                msg = f"a vector of {len(raw) // 4} values in a column of {size}"
                raise MalformedResponseError(msg)
            chunks.append(raw)
            valid.append(True)
    n = len(results)
    values = pa.Array.from_buffers(
        pa.float32(), n * size, [None, pa.py_buffer(b"".join(chunks))]
    )
    nulls = valid.count(False)
    bitmap = pa.array(valid, pa.bool_()).buffers()[1] if nulls else None
    arr = pa.FixedSizeListArray.from_buffers(
        pa.list_(pa.float32(), size), n, [bitmap], null_count=nulls, children=[values]
    )
    out = pl.Series(name, arr)
    dtype = pl.Array(pl.Float32, size)
    return out if out.dtype == dtype else out.cast(dtype)


def check_text_dtype(dtype: pl.DataType) -> None:
    """Raise ``TypeError`` unless ``dtype`` is String (or Null: every row null)."""
    if dtype == pl.String or dtype == pl.Null:
        return
    msg = f"chat.embed() takes a String column of texts, not {dtype}"
    raise TypeError(msg)
