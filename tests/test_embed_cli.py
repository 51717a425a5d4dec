"""``polars-azurechat embed``: a Parquet column of texts to vectors, over the emulator.

End to end (the vectors ``embed_many`` gives, every input column kept, the summary),
the vector column's Arrow type in the file, each bad path refused before any request,
``--overwrite``, a ``--cache`` rerun sending only new texts, null and empty texts
under both ``--on-error`` policies, bounded batches in order, and the flags.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner, Result

import polars_azurechat as pac
from polars_azurechat import _embed_cli
from polars_azurechat.cli import app
from polars_azurechat.config import ChatConfig
from polars_azurechat.embeddings import EmbedOptionsDict
from polars_azurechat.emulator import Emulator
from polars_azurechat.options import ChatOptions

SMALL = "text-embedding-3-small"
runner = CliRunner()


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def env(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """The emulator, reset, with the environment pointing at its embeddings deployment."""
    emu.reset()
    for key, value in emu.env(deployment=SMALL).items():
        monkeypatch.setenv(key, value)
    return emu


def _embeddings(emu: Emulator) -> dict[str, int]:
    e = emu.stats()["embeddings"]
    return {"requests": sum(e["routes"].values()), "inputs": e["inputs"]}


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def _embed(*args: str | Path) -> Result:
    return runner.invoke(app, ["embed", *map(str, args), "--no-progress"])


def _vectors(
    texts: Sequence[str | None], dims: int, emu: Emulator
) -> list[list[float] | None]:
    cfg = ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key)
    return pac.embed_many(texts, deployment=SMALL, dimensions=dims, config=cfg)


TEXTS = ["red apples", "green pears", "the stock market", "red apples"]


def test_embed_writes_every_column_and_the_vectors_embed_many_gives(
    env: Emulator, tmp_path: Path
) -> None:
    src, dst = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pl.DataFrame({"id": [1, 2, 3, 4], "text": TEXTS}).write_parquet(src)
    result = _embed(src, dst, "--dimensions", "8")
    assert result.exit_code == 0, result.output
    assert _embeddings(env) == {"requests": 1, "inputs": 3}  # the duplicate once
    out = pl.read_parquet(dst)
    assert out.columns == ["id", "text", "embedding", "embedding_error"]
    assert out["id"].to_list() == [1, 2, 3, 4]
    assert out["embedding"].to_list() == _vectors(TEXTS, 8, env)
    assert out["embedding_error"].null_count() == 4
    printed = result.output
    assert f"wrote {dst}" in printed
    assert "rows:      4 (4 answered, 0 failed, 0 null" in printed
    assert "requests:  1 (0 retried, 0 rate-limited; 3 inputs)" in printed
    assert "tokens:" in printed and "cost:" in printed and SMALL in printed


def test_the_vector_column_is_a_fixed_size_list_of_float32(
    env: Emulator, tmp_path: Path
) -> None:
    src, dst = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pl.DataFrame({"t": ["one", None]}).write_parquet(src)
    result = _embed(src, dst, "--column", "t", "--output-column", "v")
    assert result.exit_code == 0, result.output
    vtype = pq.read_schema(dst).field("v").type
    assert pa.types.is_fixed_size_list(vtype)
    assert vtype.value_type == pa.float32() and vtype.list_size == 1536  # native
    assert pl.read_parquet(dst).schema["v"] == pl.Array(pl.Float32, 1536)
    # an empty file: the same schema, no rows, nothing sent
    env.reset()
    pl.DataFrame({"t": []}, schema={"t": pl.String}).write_parquet(src)
    args = ["--column", "t", "--output-column", "v", "--overwrite"]
    result = _embed(src, dst, *args, "--dimensions", "4")
    assert result.exit_code == 0, result.output
    assert env.stats()["requests"] == 0
    vtype = pq.read_schema(dst).field("v").type
    assert pa.types.is_fixed_size_list(vtype) and vtype.list_size == 4
    assert pq.read_table(dst).num_rows == 0


def _text_file(d: Path) -> Path:
    pl.DataFrame({"text": ["hi"], "n": [1]}).write_parquet(d / "in.parquet")
    return d / "in.parquet"


@pytest.mark.parametrize(
    ("setup", "out", "extra", "message"),
    [
        (lambda d: None, "out.parquet", [], "does not exist or is not a file"),
        (
            lambda d: (d / "in.parquet").write_text("no"),
            "out.parquet",
            [],
            "not a readable Parquet",
        ),
        (_text_file, "out.parquet", ["--column", "body"], "no column 'body'"),
        (_text_file, "out.parquet", ["--column", "n"], "is Int64, not String"),
        (
            _text_file,
            "out.parquet",
            ["--output-column", "n"],
            "already has a column 'n'",
        ),
        (
            lambda d: (
                _text_file(d),
                (d / "out.parquet").write_text("x"),
            ),
            "out.parquet",
            [],
            "exists; pass --overwrite",
        ),
        (_text_file, "in.parquet", ["--overwrite"], "is the input file"),
        (
            _text_file,
            "c.sqlite",
            ["--overwrite", "--cache", "c.sqlite"],
            "is the cache file",
        ),
        (_text_file, "missing/out.parquet", [], "does not exist"),
        (
            _text_file,
            "out.parquet",
            ["--deployment", "my-embedder"],
            "give dimensions=, or model=",
        ),
        (
            _text_file,
            "out.parquet",
            ["--inputs-per-request", "0"],
            "greater than or equal to 1",
        ),
    ],
    ids=[
        "input-missing",
        "not-parquet",
        "column-missing",
        "not-string",
        "output-column-taken",
        "output-exists",
        "output-is-input",
        "output-is-cache",
        "output-dir-missing",
        "size-unknown",
        "bad-packing",
    ],
)
def test_bad_paths_and_flags_are_refused_before_any_request(
    env: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setup: Callable[[Path], object],
    out: str,
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    dims = [] if "my-embedder" in extra else ["--dimensions", "4"]
    result = _embed("in.parquet", out, *dims, *extra)
    printed = _flat(result.output)
    assert result.exit_code == 2, printed
    assert _flat(message) in printed
    assert "Traceback" not in printed and "requests:" not in printed
    assert env.stats()["requests"] == 0
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # nothing written, nothing left behind


def test_overwrite_replaces_the_output(env: Emulator, tmp_path: Path) -> None:
    src, dst = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pl.DataFrame({"text": TEXTS}).write_parquet(src)
    dst.write_bytes(b"keep me")
    refused = _embed(src, dst, "--dimensions", "4")
    assert refused.exit_code == 2
    assert dst.read_bytes() == b"keep me" and env.stats()["requests"] == 0
    result = _embed(src, dst, "--dimensions", "4", "--overwrite")
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(dst)["embedding"].to_list() == _vectors(TEXTS, 4, env)


def test_a_cache_rerun_sends_only_new_texts(env: Emulator, tmp_path: Path) -> None:
    src, dst = tmp_path / "in.parquet", tmp_path / "out.parquet"
    cache = tmp_path / "vectors.sqlite"
    pl.DataFrame({"text": TEXTS[:3]}).write_parquet(src)
    args: list[str | Path] = [src, dst, "--dimensions", "4", "--cache", cache]
    assert _embed(*args).exit_code == 0
    assert _embeddings(env) == {"requests": 1, "inputs": 3}
    first = pl.read_parquet(dst)["embedding"].to_list()
    texts = [*TEXTS[:3], "blue plums", None, "a new text"]
    pl.DataFrame({"text": texts}).write_parquet(src)
    result = _embed(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert _embeddings(env) == {"requests": 2, "inputs": 5}  # the two new texts only
    assert "3 from cache" in result.output
    again = pl.read_parquet(dst)["embedding"].to_list()
    assert again[:3] == first
    assert again == _vectors(texts, 4, env)


def test_null_and_empty_texts_under_each_on_error(
    env: Emulator, tmp_path: Path
) -> None:
    src, dst = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pl.DataFrame({"text": ["fine text", None, ""]}).write_parquet(src)
    result = _embed(src, dst, "--dimensions", "4")
    assert result.exit_code == 1  # a row failed; the file is written
    out = pl.read_parquet(dst)
    assert out["embedding"].to_list() == [*_vectors(["fine text"], 4, env), None, None]
    errors = out["embedding_error"].to_list()
    assert errors[:2] == [None, None] and "empty text" in errors[2]
    assert "1 answered, 1 failed, 1 null" in result.output

    raised = _embed(
        src, tmp_path / "raised.parquet", "--dimensions", "4", "--on-error", "raise"
    )
    assert raised.exit_code == 1
    assert "1 of 3 rows failed (--on-error raise)" in raised.output
    assert not (tmp_path / "raised.parquet").exists()
    kept = pl.read_parquet(tmp_path / "raised.parquet.partial")
    assert "empty text" in kept["embedding_error"][2]


def test_embed_reads_bounded_batches_and_keeps_order(
    env: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_embed_cli, "BATCH_ROWS", 16)
    src, dst = tmp_path / "in.parquet", tmp_path / "out.parquet"
    n = 200
    texts = [f"text {i} about {'apples' if i % 3 else 'markets'}" for i in range(n)]
    pl.DataFrame({"i": range(n), "text": texts}).write_parquet(src, row_group_size=50)
    seen: list[int] = []
    real = _embed_cli.Embedder.answer_batches

    def spy(self: pac.Embedder, batches: object, **kw: object) -> object:
        def counted() -> Iterator[object]:
            for key, requests in batches:
                seen.append(len(requests))
                yield key, requests

        return real(self, counted(), **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_embed_cli.Embedder, "answer_batches", spy)
    result = _embed(src, dst, "--dimensions", "4", "--inputs-per-request", "10")
    assert result.exit_code == 0, result.output
    assert max(seen) == 16 and sum(seen) == n  # read 16 rows at a time
    out = pl.read_parquet(dst)
    assert out["i"].to_list() == list(range(n))
    assert out["embedding"].to_list() == _vectors(texts, 4, env)
    assert _embeddings(env)["requests"] >= n // 10


def test_embed_offline_with_the_emulator_flag(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pl.DataFrame({"text": TEXTS}).write_parquet(src)
    result = _embed(src, dst, "--emulator", "--dimensions", "4")
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(dst)["embedding"].null_count() == 0


def test_every_embedding_option_is_a_flag_with_run_s_default() -> None:
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    flags = {p.name: p for p in command.commands["embed"].params}
    fields = {f.name: f for f in dataclasses.fields(ChatOptions)}
    for name in EmbedOptionsDict.__optional_keys__:
        assert name in flags, name
        assert flags[name].default == fields[name].default, name
    for name in ("dimensions", "model", "inputs_per_request", "request_tokens"):
        assert name in flags, name
    assert "truncate" in flags and "output_column" in flags
    # chat-only options are not flags of embed
    assert not {"system", "output", "mode", "api", "max_tokens"} & set(flags)


def test_a_wrong_key_stops_with_a_clear_message_and_no_output(
    env: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "sk-wrong-secret-value")
    src, dst = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pl.DataFrame({"text": [f"text {i}" for i in range(200)]}).write_parquet(src)
    result = _embed(
        src, dst, "--dimensions", "4", "--inputs-per-request", "1",
        "--max-concurrency", "8",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "access denied" in result.output
    assert "sk-wrong-secret-value" not in result.output
    # the run stopped at the first 401: what was in flight then (at most 8, however
    # slow the machine), not the 200 requests the file would take
    assert env.stats()["requests"] <= 8
    assert not dst.exists() and not list(tmp_path.glob("*.partial"))
