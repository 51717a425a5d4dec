"""Tasks in one call: classify tickets and product photos, filter tickets, offline.

python examples/tasks.py

`chat.classify` gives an Enum column of the labels, `chat.filter` a Boolean column
for `.filter()`, each with a documented prompt (`tasks.explain_prompt`) and a strict
response format; the dtype is known before any request. The emulator answers the
label a text names (else one by a hash) and decides a condition by the words a text
shares with it, so the figures are a demo's: point `config` at Azure for real ones.
"""

import struct
import zlib

import polars as pl

import polars_azurechat as pac
from polars_azurechat import tasks
from polars_azurechat.emulator import Emulator

TICKETS = [
    "I was charged twice this month, please refund one payment.",
    "The export button crashes the desktop app since the update.",
    "Can't log in: the reset link says it expired.",
    "Invoice 4471 shows the wrong VAT number, refund the difference.",
    "The parcel with my new keyboard never arrived.",
    "Would love a dark mode in the mobile app!",
    "The app crashes when I open a shared file.",
    "Cancel my plan and refund the unused months.",
]
LABELS = {
    "invoice": "billing, payments, refunds",
    "crashes": "the app fails or stops",
    "login": "accounts, passwords, access",
    "parcel": "deliveries and shipping",
    "idea": "feature requests",
}


def png(shade: int) -> bytes:
    """A 4x4 grey PNG (a stand-in for a product photo)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    raw = b"".join(b"\x00" + bytes([shade] * 3) * 4 for _ in range(4))
    header = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


with Emulator() as emu:  # an Azure-compatible server on 127.0.0.1: drop it for Azure
    config = pac.ChatConfig(
        azure_endpoint=emu.url, api_key=emu.api_key, deployment="gpt-4o-mini"
    )
    tickets = pl.LazyFrame({"id": range(1, len(TICKETS) + 1), "text": TICKETS})

    print(tasks.explain_prompt("classify", labels=LABELS))
    q = tickets.with_columns(
        topic=pl.col("text").chat.classify(LABELS, config=config, max_tokens=20),
        refund=pl.col("text").chat.filter(
            "asks for a refund", confidence=True, config=config, max_tokens=20
        ),
    )
    print(q.collect_schema())  # known before any request
    print(f"requests before collect: {emu.stats()['requests']}")
    out = q.collect()
    with pl.Config(fmt_str_lengths=45, tbl_rows=10):
        print(out)
    print(out.group_by("topic").len().sort("topic"))

    kept = tickets.filter(
        pl.col("text").chat.filter("asks for a refund", config=config, max_tokens=20)
    ).collect()
    print(f"kept {kept.height} of {len(TICKETS)} tickets asking for a refund")

    products = pl.DataFrame(
        {
            "title": ["trail running shoe", "leather handbag", "wool scarf"],
            "photo": [png(40), png(120), png(200)],
        }
    )
    kinds = products.select(
        "title",
        kind=pl.col("title").chat.classify(
            ["shoe", "handbag", "scarf"],
            images=pl.col("photo"),
            detail="low",
            config=config,
            max_tokens=20,
        ),
    )
    print(kinds)
    print(
        f"classified {kinds['kind'].count()} of {products.height} product photos; "
        f"{emu.stats()['requests']} requests in all"
    )
