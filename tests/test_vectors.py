"""Cosine similarity and the top k rows (``polars_azurechat.vectors``).

Values against a plain-Python reference, nulls and zero vectors, the errors, the order
of the top k and its ties, the query's forms, several queries at once, and a nearest-
neighbour search over the emulator's vectors (texts sharing words rank first).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import polars as pl
import pytest

import polars_azurechat as pac
from polars_azurechat.config import ChatConfig
from polars_azurechat.emulator import Emulator
from polars_azurechat.vectors import cosine_similarity, top_k, top_k_many

ROWS: list[list[float] | None] = [
    [1.0, 0.0, 0.0],
    [0.5, 2.0, -1.0],
    None,
    [-3.0, 0.25, 4.0],
    [0.0, 0.0, 0.0],
    [2.0, 0.0, 0.0],
]


def _series(rows: Sequence[Sequence[float] | None] = ROWS, width: int = 3) -> pl.Series:
    return pl.Series("v", rows, dtype=pl.Array(pl.Float32, width))


def _reference(row: Sequence[float] | None, q: Sequence[float]) -> float | None:
    if row is None:
        return None
    dot = sum(a * b for a, b in zip(row, q, strict=True))
    norms = math.sqrt(sum(a * a for a in row)) * math.sqrt(sum(b * b for b in q))
    return None if norms == 0 else dot / norms


def _close(got: list[float | None], want: list[float | None]) -> bool:
    return all(
        (g is None and w is None)
        or (g is not None and w is not None and abs(g - w) < 1e-6)
        for g, w in zip(got, want, strict=True)
    )


@pytest.mark.parametrize("query", [[1.0, 1.0, 1.0], [0.2, -5.0, 3.0], [0.0, 0.0, 9.0]])
def test_similarity_matches_the_reference(query: list[float]) -> None:
    got = cosine_similarity(_series(), query).to_list()
    assert _close(got, [_reference(r, query) for r in ROWS])


def test_nulls_and_zero_vectors_are_null_and_values_stay_in_range() -> None:
    rows = [[1.0, 2.0], None, [0.0, 0.0], [1.0, float("nan")], [1.0, 2.0]]
    s = cosine_similarity(_series(rows, 2), [2.0, 4.0])
    assert s.dtype == pl.Float64
    assert s.is_null().to_list() == [False, True, True, True, False]
    assert s.max() == 1.0  # parallel vectors, clipped to exactly 1


def test_an_element_null_makes_its_row_null() -> None:
    s = pl.Series("v", [[1.0, None], [1.0, 1.0]], dtype=pl.Array(pl.Float32, 2))
    assert cosine_similarity(s, [1.0, 1.0]).is_null().to_list() == [True, False]


def test_expression_form_runs_lazily_and_matches_the_series_form() -> None:
    df = pl.DataFrame({"v": _series()})
    q = [0.2, -5.0, 3.0]
    lazy = df.lazy().with_columns(sim=cosine_similarity("v", q))
    assert lazy.collect_schema()["sim"] == pl.Float64
    out = lazy.collect()["sim"]
    assert out.to_list() == cosine_similarity(df["v"], q).to_list()
    also = df.select(cosine_similarity(pl.col("v"), q))["v"]
    assert also.to_list() == out.to_list()


def test_a_dimension_mismatch_is_a_clear_error() -> None:
    with pytest.raises(
        ValueError, match=r"dimension mismatch: .* 3 numbers, the query 2"
    ):
        cosine_similarity(_series(), [1.0, 0.0])
    df = pl.DataFrame({"v": _series()})
    with pytest.raises(ValueError, match="dimension mismatch"):
        df.select(cosine_similarity("v", [1.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="dimension mismatch"):
        top_k(df, "v", [1.0, 0.0])
    with pytest.raises(ValueError, match="dimension mismatch"):
        top_k_many(df, "v", [[1.0, 0.0]])


def test_bad_queries_and_columns_are_refused() -> None:
    s = _series()
    with pytest.raises(ValueError, match="not zero"):
        cosine_similarity(s, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="one non-empty vector"):
        cosine_similarity(s, [[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="finite"):
        cosine_similarity(s, [1.0, float("nan"), 0.0])
    lists = pl.Series("v", [[1.0, 0.0]], dtype=pl.List(pl.Float64))
    with pytest.raises(TypeError, match=r"cast it first: \.cast\(pl\.Array"):
        cosine_similarity(lists, [1.0, 0.0])
    with pytest.raises(ValueError, match="k must be 0 or more"):
        top_k(pl.DataFrame({"v": s}), "v", [1.0, 0.0, 0.0], k=-1)


@pytest.mark.parametrize(
    "query",
    [
        [0.2, -5.0, 3.0],
        (0.2, -5.0, 3.0),
        np.array([0.2, -5.0, 3.0], dtype=np.float32),
        pl.Series([0.2, -5.0, 3.0]),
        pl.Series("v", [[0.2, -5.0, 3.0]], dtype=pl.Array(pl.Float32, 3)),
    ],
    ids=["list", "tuple", "numpy", "series", "vector-series"],
)
def test_the_query_as_list_numpy_or_series(query: object) -> None:
    got = cosine_similarity(_series(), query).to_list()
    assert _close(got, [_reference(r, [0.2, -5.0, 3.0]) for r in ROWS])


def test_integer_and_float64_columns_work() -> None:
    ints = pl.Series("v", [[1, 0], [3, 4]], dtype=pl.Array(pl.Int64, 2))
    doubles = pl.Series("v", [[1, 0], [3, 4]], dtype=pl.Array(pl.Float64, 2))
    assert cosine_similarity(ints, [0, 1]).round(6).to_list() == [0.0, 0.8]
    assert cosine_similarity(doubles, [0, 1]).round(6).to_list() == [0.0, 0.8]


def test_top_k_is_ordered_and_skips_rows_without_a_similarity() -> None:
    df = pl.DataFrame({"id": range(len(ROWS)), "v": _series()})
    q = [1.0, 0.1, 0.1]
    want = sorted(
        (
            (_reference(r, q), i)
            for i, r in enumerate(ROWS)
            if _reference(r, q) is not None
        ),
        key=lambda t: (-t[0], t[1]),  # type: ignore[operator]
    )
    out = top_k(df, "v", q, k=3)
    assert out.columns == ["id", "v", "similarity"]
    assert out["id"].to_list() == [i for _, i in want[:3]]
    assert _close(out["similarity"].to_list(), [s for s, _ in want[:3]])
    everything = top_k(
        df, "v", q, k=100
    )  # fewer rows than k: the null and zero rows never
    assert sorted(everything["id"].to_list()) == [0, 1, 3, 5]
    assert top_k(df, "v", q, k=0).height == 0


def test_ties_come_in_row_order_also_at_the_cut() -> None:
    rows = [[0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [0.5, 0.0], [3.0, 0.0], [0.0, 1.0]]
    df = pl.DataFrame({"id": range(6), "v": _series(rows, 2)})
    assert top_k(df, "v", [1.0, 0.0], k=2)["id"].to_list() == [1, 2]
    assert top_k(df, "v", [1.0, 0.0], k=5)["id"].to_list() == [1, 2, 3, 4, 0]
    assert top_k(df, "v", [0.0, 1.0], k=1)["id"].to_list() == [0]
    big = pl.DataFrame({"id": range(10_000), "v": _series([[1.0, 0.0]] * 10_000, 2)})
    assert top_k(big, "v", [1.0, 0.0], k=3)["id"].to_list() == [0, 1, 2]


def test_top_k_many_is_top_k_for_each_query() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((500, 8)).astype(np.float32)
    df = pl.DataFrame(
        {"id": range(500), "v": pl.Series(vectors, dtype=pl.Array(pl.Float32, 8))}
    )
    queries = rng.standard_normal((4, 8))
    qs = pl.Series(
        "q",
        [*queries.tolist()[:2], None, *queries.tolist()[2:]],
        dtype=pl.Array(pl.Float64, 8),
    )
    out = top_k_many(df, "v", qs, k=5)
    assert out.columns[:3] == ["query", "rank", "similarity"]
    assert out["query"].unique().sort().to_list() == [
        0,
        1,
        3,
        4,
    ]  # the null query: none
    for position, q in zip([0, 1, 3, 4], queries, strict=True):
        mine = out.filter(pl.col("query") == position)
        alone = top_k(df, "v", q, k=5)
        assert mine["rank"].to_list() == [1, 2, 3, 4, 5]
        assert mine["id"].to_list() == alone["id"].to_list()
        assert np.allclose(
            mine["similarity"].to_numpy(), alone["similarity"].to_numpy()
        )
    as_numpy = top_k_many(df, "v", queries, k=5)
    assert as_numpy["query"].unique().sort().to_list() == [0, 1, 2, 3]


def test_top_k_many_blocks_give_the_same_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from polars_azurechat import vectors

    rng = np.random.default_rng(3)
    df = pl.DataFrame(
        {
            "v": pl.Series(
                rng.standard_normal((300, 4)).astype(np.float32),
                dtype=pl.Array(pl.Float32, 4),
            )
        }
    )
    queries = rng.standard_normal((7, 4))
    whole = top_k_many(df, "v", queries, k=3)
    monkeypatch.setattr(vectors, "BLOCK_SCORES", 600)  # two queries per block
    blocked = top_k_many(df, "v", queries, k=3)
    assert blocked.drop("similarity").equals(whole.drop("similarity"))
    assert np.allclose(blocked["similarity"].to_numpy(), whole["similarity"].to_numpy())
    none = top_k_many(df, "v", pl.Series([None], dtype=pl.Array(pl.Float32, 4)), k=3)
    assert none.height == 0 and none.columns == ["query", "rank", "similarity", "v"]


def test_the_column_is_read_without_a_copy() -> None:
    from polars_azurechat.vectors import _matrix

    s = pl.Series(
        "v", np.ones((1000, 16), dtype=np.float32), dtype=pl.Array(pl.Float32, 16)
    )
    m = _matrix(s, 16)
    assert m.shape == (1000, 16) and not m.flags.owndata


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


def test_nearest_neighbours_over_the_emulator(emu: Emulator) -> None:
    cfg = ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key)
    df = pl.DataFrame(
        {
            "text": [
                "the stock market fell sharply today",
                "red apples are sweet",
                "my invoice shows a double charge",
                "green apples and red apples",
                None,
                "the weather is cold and rainy",
            ]
        }
    )
    job = {"deployment": "text-embedding-3-small", "config": cfg}
    df = df.with_columns(v=pac.embed("text", **job))  # type: ignore[arg-type]
    query = pac.embed_many(["apples red"], **job)[0]  # type: ignore[arg-type]
    best = pac.top_k(df, "v", query, k=3)
    # the two texts with "red" and "apples" first, well ahead of any other
    assert set(best["text"].to_list()[:2]) == {
        "red apples are sweet",
        "green apples and red apples",
    }
    assert best["similarity"][1] > 0.3 > abs(best["similarity"][2])
    sims = df.select(pac.cosine_similarity("v", query))["v"]
    assert sims.null_count() == 1 and sims.arg_max() in (1, 3)
    assert sims.to_list()[4] is None
    many = pac.top_k_many(df, "v", df["v"], k=1)  # each text is its own nearest
    assert many["text"].to_list() == df["text"].drop_nulls().to_list()
    assert np.allclose(many["similarity"].to_numpy(), 1.0, atol=1e-6)
