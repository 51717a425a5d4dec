"""Using the vectors: cosine similarity and the top ``k`` rows, on the Arrow buffer.

:func:`cosine_similarity` scores every row of an ``Array(Float32, n)`` column (what
:func:`~polars_azurechat.embed` makes) against one query vector, as a Series or as an
expression; :func:`top_k` gives the ``k`` rows most similar to one query, and
:func:`top_k_many` those of each of several queries (one matrix product). The names
are those Polars (``Expr.top_k``, ``DataFrame.top_k``) and scikit-learn
(``sklearn.metrics.pairwise.cosine_similarity``) users know; ``_many`` is this
package's suffix for "several at once" (``complete_many``, ``embed_many``).

The column is read as one ``(rows, n)`` numpy array over its Arrow buffer: no copy
when it is one chunk without nulls (else Polars makes one copy, null rows as NaN),
and no Python loop over rows. Both the query and each row are normalised: Azure's
embeddings are unit length, so their cosine is their dot product, but vectors from
elsewhere need not be, and a silent assumption would give wrong scores without an
error. The norms cost one more pass over the buffer (about 70 ms for 1,000,000 rows
of 256 numbers). A null vector, one with a null or NaN number, or a zero vector has a
null similarity and is never among the top ``k``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import polars as pl

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["cosine_similarity", "top_k", "top_k_many"]

logger = logging.getLogger(__name__)

#: At most this many similarities (rows x queries) are held at once by ``top_k_many``.
BLOCK_SCORES = 1 << 24

Vector = Sequence[float] | pl.Series | Any  # a list, a 1-d numpy array, a Series
Vectors = Sequence[Sequence[float]] | pl.Series | Any  # a 2-d array, an Array Series


def _as_query(query: Vector) -> npt.NDArray[np.float64]:
    """The query as a unit 1-d float64 array; a clear error for what cannot be one."""
    if isinstance(query, pl.Series):
        if isinstance(query.dtype, pl.Array | pl.List):
            if len(query) != 1:
                msg = f"a query Series of vectors must hold one vector, not {len(query)}; use top_k_many for several"
                raise ValueError(msg)
            query = query[0]
        if query.null_count():
            msg = "the query vector has null numbers"
            raise ValueError(msg)
        q = query.cast(pl.Float64).to_numpy()
    else:
        q = np.asarray(query, dtype=np.float64)
    if q.ndim != 1 or q.size == 0:
        msg = f"a query is one non-empty vector of numbers; got shape {q.shape}"
        raise ValueError(msg)
    unit: npt.NDArray[np.float64] = _unit_rows(q[None, :], "the query")[0]
    return unit


def _unit_rows(m: npt.NDArray[np.float64], what: str) -> npt.NDArray[np.float64]:
    norms = np.linalg.norm(m, axis=1)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        msg = f"{what} must be finite and not zero (its cosine is undefined)"
        raise ValueError(msg)
    unit: npt.NDArray[np.float64] = m / norms[:, None]
    return unit


def _as_queries(
    queries: Vectors,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.intp]]:
    """Several queries as unit rows, and their positions (a null vector is none)."""
    if not isinstance(queries, pl.Series):
        m = np.asarray(queries, dtype=np.float64)
        if m.ndim != 2:
            msg = f"queries are vectors of one length (2-d); got shape {m.shape}"
            raise ValueError(msg)
        return _unit_rows(m, "each query"), np.arange(m.shape[0])
    dtype = queries.dtype
    if isinstance(dtype, pl.List):
        lengths = queries.list.len().drop_nulls().unique()
        if len(lengths) > 1:
            msg = f"the query vectors have different lengths: {sorted(lengths)}"
            raise ValueError(msg)
        dtype = pl.Array(pl.Float64, int(lengths[0]) if len(lengths) else 0)
    if not isinstance(dtype, pl.Array):
        msg = f"queries must be a Series of vectors (Array or List), not {dtype}"
        raise TypeError(msg)
    width = dtype.size
    m = queries.cast(pl.Array(pl.Float64, width)).to_numpy().reshape(-1, width)
    usable = np.flatnonzero(np.isfinite(m).all(axis=1))  # null rows and numbers: NaN
    return _unit_rows(m[usable], "each query"), usable


def _matrix(vectors: pl.Series, width: int) -> npt.NDArray[np.floating[Any]]:
    """The column as a ``(rows, n)`` array over its Arrow buffer (null rows NaN)."""
    dtype = vectors.dtype
    if not isinstance(dtype, pl.Array) or not dtype.inner.is_numeric():
        hint = (
            f"; cast it first: .cast(pl.Array(pl.Float32, {width}))"
            if isinstance(dtype, pl.List)
            else ""
        )
        msg = f"column {vectors.name!r} is {dtype}, not an Array of numbers such as embed() makes{hint}"
        raise TypeError(msg)
    if dtype.size != width:
        msg = (
            f"dimension mismatch: the vectors of {vectors.name!r} have {dtype.size} "
            f"numbers, the query {width} (embed both with the same model and dimensions)"
        )
        raise ValueError(msg)
    if dtype.inner not in (pl.Float32, pl.Float64):
        vectors = vectors.cast(pl.Array(pl.Float64, width))
    m = vectors.to_numpy()
    return m.reshape(len(vectors), width)


def _scores(
    m: npt.NDArray[np.floating[Any]], queries: npt.NDArray[np.float64]
) -> npt.NDArray[np.floating[Any]]:
    """Cosine of each row against each unit query: ``(rows, queries)``, NaN for none."""
    dots = m @ queries.T.astype(m.dtype)
    norms = np.sqrt(np.einsum("ij,ij->i", m, m))
    with np.errstate(invalid="ignore", divide="ignore"):
        dots /= norms[:, None]
    dots[norms == 0] = np.nan  # a zero vector (NaN rows and numbers are NaN already)
    np.clip(dots, -1.0, 1.0, out=dots)
    return dots


def _top_indices(scores: npt.NDArray[np.floating[Any]], k: int) -> npt.NDArray[np.intp]:
    """The ``k`` best rows, best first; ties in row order; NaN rows never."""
    valid = ~np.isnan(scores)
    k = min(k, int(valid.sum()))
    if k <= 0:
        return np.empty(0, dtype=np.intp)
    s = np.where(valid, scores, -np.inf)
    n = s.size
    threshold = s[np.argpartition(s, n - k)[n - k :]].min()
    above = np.flatnonzero(s > threshold)
    ties = np.flatnonzero(s == threshold)[: k - above.size]
    idx = np.concatenate([above, ties])
    return idx[np.lexsort((idx, -s[idx]))]


@overload
def cosine_similarity(vectors: pl.Series, query: Vector) -> pl.Series: ...
@overload
def cosine_similarity(vectors: pl.Expr | str, query: Vector) -> pl.Expr: ...
def cosine_similarity(
    vectors: pl.Series | pl.Expr | str, query: Vector
) -> pl.Series | pl.Expr:
    """The cosine similarity of every row's vector with ``query``: Float64 in [-1, 1].

    Parameters
    ----------
    vectors
        An ``Array`` column of numbers (``embed()``'s ``Array(Float32, n)``): a
        Series, or an expression or column name.
    query
        One vector of ``n`` numbers: a list, a 1-d numpy array, a numeric Series, or
        a one-row Series of vectors (``df["v"].head(1)``). Normalised here.

    Returns
    -------
    pl.Series or pl.Expr
        A Series for a Series, else an expression (elementwise: it works in lazy and
        streaming queries). Null where the row's vector is null, holds a null or NaN,
        or is zero.

    Raises
    ------
    ValueError
        The query is not one finite non-zero vector, or its length is not the
        column's width (for an expression: when the query runs).
    TypeError
        The column is not an ``Array`` of numbers (a ``List`` column: cast it).

    Examples
    --------
    >>> import polars as pl
    >>> from polars_azurechat.vectors import cosine_similarity
    >>> s = pl.Series(
    ...     "v", [[1, 0], [3, 4], None, [0, -2]], dtype=pl.Array(pl.Float32, 2)
    ... )
    >>> cosine_similarity(s, [1, 0]).round(2).to_list()
    [1.0, 0.6, None, 0.0]
    >>> df = pl.DataFrame({"v": s})
    >>> df.with_columns(sim=cosine_similarity("v", [0.0, 1.0]))["sim"].round(
    ...     2
    ... ).to_list()
    [0.0, 0.8, None, -1.0]
    """
    q = _as_query(query)

    def scores(s: pl.Series) -> pl.Series:
        out = _scores(_matrix(s, q.size), q[None, :])[:, 0].astype(np.float64)
        return pl.Series(s.name, out, dtype=pl.Float64, nan_to_null=True)

    if isinstance(vectors, pl.Series):
        return scores(vectors)
    expr = pl.col(vectors) if isinstance(vectors, str) else vectors
    return expr.map_batches(scores, return_dtype=pl.Float64, is_elementwise=True)


def top_k(
    df: pl.DataFrame,
    column: str,
    query: Vector,
    k: int = 10,
    *,
    name: str = "similarity",
) -> pl.DataFrame:
    """The ``k`` rows of ``df`` whose vectors are most similar (cosine) to ``query``.

    Parameters
    ----------
    df
        The rows to search (a LazyFrame: ``collect()`` it first).
    column
        Its ``Array`` column of vectors.
    query
        One vector, as for :func:`cosine_similarity`.
    k
        How many rows at most (fewer when fewer rows have a vector).
    name
        The column that holds each row's similarity.

    Returns
    -------
    pl.DataFrame
        Those rows (all of ``df``'s columns) and ``name``, most similar first; equal
        similarities in ``df``'s row order. Rows without a similarity are never in it.

    Raises
    ------
    ValueError, TypeError
        As for :func:`cosine_similarity`; ``k`` below 0.

    Examples
    --------
    >>> import polars as pl
    >>> from polars_azurechat.vectors import top_k
    >>> df = pl.DataFrame(
    ...     {"id": [1, 2, 3, 4], "v": [[1, 0], [3, 4], None, [1, 1]]},
    ...     schema_overrides={"v": pl.Array(pl.Float32, 2)},
    ... )
    >>> top_k(df, "v", [1, 0.1], k=2).select("id", pl.col("similarity").round(3))
    shape: (2, 2)
    ┌─────┬────────────┐
    │ id  ┆ similarity │
    │ --- ┆ ---        │
    │ i64 ┆ f64        │
    ╞═════╪════════════╡
    │ 1   ┆ 0.995      │
    │ 4   ┆ 0.774      │
    └─────┴────────────┘
    """
    if k < 0:
        msg = f"k must be 0 or more, not {k}"
        raise ValueError(msg)
    q = _as_query(query)
    scores = _scores(_matrix(df.get_column(column), q.size), q[None, :])[:, 0]
    idx = _top_indices(scores, k)
    return df[idx].with_columns(
        pl.Series(name, scores[idx].astype(np.float64), dtype=pl.Float64)
    )


def top_k_many(
    df: pl.DataFrame,
    column: str,
    queries: Vectors,
    k: int = 10,
    *,
    name: str = "similarity",
) -> pl.DataFrame:
    """For each of several queries, the ``k`` rows of ``df`` most similar to it.

    One matrix product per block of queries (at most 16M similarities held at once),
    then :func:`top_k`'s selection per query.

    Parameters
    ----------
    df
        The rows to search.
    column
        Its ``Array`` column of vectors.
    queries
        Vectors of one length: an ``Array`` (or ``List``) Series, such as another
        frame's ``embed()`` column, a 2-d numpy array, or a list of lists. A null
        vector in a Series is a query with no rows.
    k
        How many rows at most per query.
    name
        The column that holds each row's similarity.

    Returns
    -------
    pl.DataFrame
        Long form: ``query`` (the query's position in ``queries``, UInt32), ``rank``
        (1 for the most similar, UInt32), ``name``, then ``df``'s columns; ordered by
        query, then rank. Join it back on ``query`` (``with_row_index("query")``).

    Raises
    ------
    ValueError, TypeError
        As for :func:`top_k`.

    Examples
    --------
    >>> import polars as pl
    >>> from polars_azurechat.vectors import top_k_many
    >>> df = pl.DataFrame(
    ...     {"id": [1, 2, 3], "v": [[1, 0], [0, 1], [1, 1]]},
    ...     schema_overrides={"v": pl.Array(pl.Float32, 2)},
    ... )
    >>> top_k_many(df, "v", [[1, 0], [0, 1]], k=2).select("query", "rank", "id")
    shape: (4, 3)
    ┌───────┬──────┬─────┐
    │ query ┆ rank ┆ id  │
    │ ---   ┆ ---  ┆ --- │
    │ u32   ┆ u32  ┆ i64 │
    ╞═══════╪══════╪═════╡
    │ 0     ┆ 1    ┆ 1   │
    │ 0     ┆ 2    ┆ 3   │
    │ 1     ┆ 1    ┆ 2   │
    │ 1     ┆ 2    ┆ 3   │
    └───────┴──────┴─────┘
    """
    if k < 0:
        msg = f"k must be 0 or more, not {k}"
        raise ValueError(msg)
    qs, positions = _as_queries(queries)
    if qs.shape[0] == 0:  # no query (or only null vectors): no rows
        df = df.clear()
        qs = np.empty((0, 0))
        m = np.empty((0, 0), dtype=np.float32)
    else:
        m = _matrix(df.get_column(column), qs.shape[1])
    block = max(1, BLOCK_SCORES // max(1, m.shape[0]))
    picked, query_of, rank, sims = [], [], [], []
    for start in range(0, qs.shape[0], block):
        scores = _scores(m, qs[start : start + block])
        for j in range(scores.shape[1]):
            idx = _top_indices(scores[:, j], k)
            picked.append(idx)
            query_of.append(np.full(idx.size, positions[start + j], dtype=np.uint32))
            rank.append(np.arange(1, idx.size + 1, dtype=np.uint32))
            sims.append(scores[idx, j].astype(np.float64))
    logger.debug("top_k_many: %d queries over %d rows", qs.shape[0], m.shape[0])

    def cat(parts: list[Any], dtype: Any) -> Any:
        return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

    idx_all = cat(picked, np.intp)
    out: pl.DataFrame = pl.concat(
        [
            pl.DataFrame(
                {
                    "query": cat(query_of, np.uint32),
                    "rank": cat(rank, np.uint32),
                    name: cat(sims, np.float64),
                },
                schema={"query": pl.UInt32, "rank": pl.UInt32, name: pl.Float64},
            ),
            df[idx_all],
        ],
        how="horizontal",
    )
    return out
