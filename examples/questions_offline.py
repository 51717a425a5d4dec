"""Answer data/questions.parquet offline, against the built-in emulator.

python examples/questions_offline.py
"""

from pathlib import Path

import polars as pl

import polars_azurechat  # noqa: F401  (registers the .chat namespace)
from polars_azurechat import ChatConfig
from polars_azurechat.emulator import Emulator

DATA = Path(__file__).resolve().parents[1] / "data" / "questions.parquet"

with Emulator(latency_ms=186, jitter_ms=40) as emu:  # the original demo's latency
    config = ChatConfig(
        azure_endpoint=emu.url, api_key=emu.api_key, deployment="gpt-4o-mini"
    )
    df = pl.read_parquet(DATA)
    out = df.with_columns(
        answer=pl.col("messages").chat.complete(
            config=config, max_tokens=20, output="struct"
        )
    ).with_columns(pl.col("answer").struct.unnest())
    print(out.select("id", "expected", "content", "attempts", "error").head(5))
    print(f"correct: {(out['content'] == out['expected']).sum()} of {out.height}")
    print(f"emulator saw: {emu.stats()}")
