"""Few-shot by similarity: each new ticket's three nearest labelled tickets in its prompt.

python examples/similar_tickets.py

Labelled and new tickets are embedded (one `Array(Float32, 1536)` column each); for
every new ticket, `top_k_many` finds the three most similar labelled tickets (cosine,
one matrix product), and they go into its prompt as examples; then `chat.complete`
classifies it into a typed column. Offline against the emulator: its vectors are a
bag of words, so tickets sharing words are nearest and the neighbours are telling,
but its chat answers fill the label deterministically from the prompt's hash, not
by reading it: point `config` at Azure for a model's judgement.
"""

from typing import Literal

import polars as pl
from pydantic import BaseModel

import polars_azurechat as pac
from polars_azurechat.emulator import Emulator

Category = Literal["billing", "bug", "account", "feature"]


class Label(BaseModel):
    """The ticket's category."""

    category: Category


LABELLED = [
    ("I was charged twice for my plan this month", "billing"),
    ("The invoice shows the wrong VAT number", "billing"),
    ("My card was declined but the bank says it is fine", "billing"),
    ("Please refund the extra charge on my invoice", "billing"),
    ("The export button crashes the desktop app", "bug"),
    ("The API returns 500 for every request", "bug"),
    ("Sync drops attachments between the web app and the desktop app", "bug"),
    ("Search in the web app ignores accented letters", "bug"),
    ("I cannot log in: the password reset link expired", "account"),
    ("How do I change the owner of our organisation account", "account"),
    ("Please delete my account and my data", "account"),
    ("Would love a dark mode in the mobile app", "feature"),
    ("Feature idea: scheduled reports by e-mail", "feature"),
    ("Please add an export to Excel for reports", "feature"),
]

NEW = [
    "Why was my card charged twice on the last invoice?",
    "The desktop app crashes when I press the export button",
    "The reset link for my password says it expired, I cannot log in",
    "Could you add a dark mode to the web app?",
    "Every request to the API returns 500 since this morning",
]

with Emulator() as emu:  # an Azure-compatible server on 127.0.0.1: drop it for Azure
    config = pac.ChatConfig(
        azure_endpoint=emu.url, api_key=emu.api_key, deployment="gpt-4o-mini"
    )
    labelled = pl.DataFrame(LABELLED, schema=["text", "label"], orient="row")
    new = pl.DataFrame({"ticket": range(1, len(NEW) + 1), "text": NEW})

    # the native 1,536 numbers: the emulator's shortened vectors keep few of the words
    with pac.Embedder(config=config, deployment="text-embedding-3-small") as embedder:
        labelled = labelled.with_columns(v=embedder.expr("text"))
        new = new.with_columns(v=embedder.expr("text"))

    # for each new ticket (its position in `new` is `query`), its 3 nearest labelled
    nearest = pac.top_k_many(labelled, "v", new["v"], k=3)
    shots = nearest.group_by("query", maintain_order=True).agg(
        examples=pl.format('- "{}" -> {}', "text", "label").str.join("\n"),
        neighbours=pl.col("label"),
        closest=pl.col("similarity").first(),
    )
    new = new.with_row_index("query").join(shots, on="query", how="left")

    prompt = pac.messages(
        system=(
            "Classify the support ticket as billing, bug, account or feature. "
            "Labelled tickets like it are given as examples."
        ),
        user=pl.format("Examples:\n{}\n\nTicket: {}", "examples", "text"),
    )
    print(new.select(prompt.alias("prompt"))["prompt"][0][1]["content"])
    out = new.with_columns(
        answer=prompt.chat.complete(config=config, response_format=Label, max_tokens=20)
    ).unnest("answer")

with pl.Config(tbl_rows=20, fmt_str_lengths=48, tbl_width_chars=140):
    print(
        out.select(
            "ticket", "text", "neighbours", pl.col("closest").round(2), "category"
        )
    )
print(
    f"classified {out['category'].is_not_null().sum()} of {out.height} new tickets, "
    f"each prompt with {nearest.height // out.height} similar labelled tickets"
)
