"""Free-text support tickets -> typed columns -> a summary, offline against the emulator.

python examples/typed_tickets.py

The answer's type is a pydantic model; every answer comes back parsed and validated as
a Struct column (known before any request), and `unnest` turns it into columns. The
emulator fills each field deterministically from the prompt (an Enum value by its hash),
so the figures are a demo's, not a model's reading of the tickets: point `config` at
Azure for real ones.
"""

import enum
from typing import Literal

import polars as pl
from pydantic import BaseModel, Field

import polars_azurechat as pac
from polars_azurechat.emulator import Emulator


class Category(enum.Enum):
    billing = "billing"
    bug = "bug"
    account = "account"
    feature = "feature"


class Ticket(BaseModel):
    """One support ticket's fields."""

    category: Category
    priority: Literal["low", "medium", "high"]
    minutes_lost: int = Field(description="Minutes of work the customer lost")
    needs_callback: bool
    products: list[Literal["web app", "desktop app", "mobile app", "api", "billing"]]


TICKETS = [
    "I was charged twice for my Pro plan this month, please refund one.",
    "The export button crashes the desktop app since yesterday's update.",
    "Can't log in: the reset link says it expired.",
    "Would love a dark mode in the mobile app!",
    "Invoice 4471 shows the wrong VAT number.",
    "Sync between the web app and the desktop app drops attachments.",
    "Please call me back, my team cannot access the shared workspace.",
    "The API returns 500 for every request since 9:00.",
    "How do I change the owner of our organisation account?",
    "Feature idea: scheduled reports by e-mail.",
    "My card was declined but the bank says it is fine.",
    "The search in the web app ignores accented letters.",
]

with Emulator() as emu:  # an Azure-compatible server on 127.0.0.1: drop it for Azure
    config = pac.ChatConfig(
        azure_endpoint=emu.url, api_key=emu.api_key, deployment="gpt-4o-mini"
    )
    df = pl.DataFrame({"id": range(1, len(TICKETS) + 1), "text": TICKETS})
    prompt = pac.messages(
        system="Extract the support ticket's fields.",
        user=pl.format("Ticket #{}: {}", pl.col("id"), pl.col("text")),
    )
    with pac.Completer(config=config, response_format=Ticket, max_tokens=200) as job:
        lazy = df.lazy().with_columns(ticket=job.expr(prompt)).unnest("ticket")
        print(lazy.collect_schema())  # known before any request: nothing sent yet
        tickets = lazy.collect()
        summary = job.summary()

    with pl.Config(tbl_rows=20, fmt_str_lengths=40, tbl_width_chars=120):
        print(tickets.drop("text"))
        by_category = (
            tickets.group_by("category")
            .agg(
                tickets=pl.len(),
                high=(pl.col("priority") == "high").sum(),
                callbacks=pl.col("needs_callback").sum(),
                minutes_lost=pl.col("minutes_lost").sum(),
                products=pl.col("products").list.explode().n_unique(),
            )
            .sort("category")
        )
        print(by_category)
    print(
        f"answered {summary.answered} of {summary.rows} tickets with "
        f"{summary.requests} requests; failed: {summary.failed}"
    )
