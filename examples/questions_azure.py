"""Answer data/questions.parquet with a real Azure OpenAI deployment.

Set (in the environment or a .env file):

    AZURE_OPENAI_ENDPOINT=https://<resource>.openai.azure.com
    AZURE_OPENAI_API_KEY=<key>
    AZURE_OPENAI_DEPLOYMENT=<deployment, e.g. gpt-4o-mini>
    OPENAI_API_VERSION=2024-10-21        # optional

then run ``python examples/questions_azure.py``.
"""

from pathlib import Path

import polars as pl

import polars_azurechat  # noqa: F401  (registers the .chat namespace)

DATA = Path(__file__).resolve().parents[1] / "data" / "questions.parquet"

df = pl.read_parquet(DATA)
out = df.with_columns(
    answer=pl.col("messages").chat.complete(
        max_tokens=20,
        temperature=0,
        max_concurrency=32,
        requests_per_minute=300,  # your deployment's quota
        cache="answers.sqlite",  # a rerun sends only what is missing
        progress=True,
    )
)
print(out.select("id", "expected", "answer"))
print(f"correct: {(out['answer'] == out['expected']).sum()} of {out.height}")
