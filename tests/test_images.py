"""Images in messages (issue 22 item 1), against the emulator over HTTP.

Image bytes are made here: small valid PNGs (zlib, no dependency), and headers of
JPEG, GIF and WEBP (VP8, VP8L, VP8X) files, which is all the client and the emulator
read (neither decodes an image).
"""

from __future__ import annotations

import base64
import json
import re
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import polars_azurechat as pac
from polars_azurechat import _images
from polars_azurechat.cli import app
from polars_azurechat.emulator import Emulator, _vision
from polars_azurechat.emulator import _tokens as emu_tokens
from polars_azurechat.engine.convert import check_dtype, rows_to_requests
from polars_azurechat.engine.frontdoor import RequestShape
from polars_azurechat.prompts import PARTS_MESSAGES_DTYPE, messages
from polars_azurechat.summary import SpendingCap
from polars_azurechat.transport import tokens as _tokens

from .fakes import FakeClock


def png(width: int, height: int, shade: int = 0) -> bytes:
    """A valid RGB PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    raw = b"".join(
        b"\x00" + bytes([shade, shade, shade]) * width for _ in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def jpeg(width: int, height: int) -> bytes:
    """A JPEG's header: SOI, APP0, a long APP1 (Exif), then SOF0 with the size."""
    app0 = (
        b"\xff\xe0"
        + struct.pack(">H", 16)
        + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    )
    exif = b"Exif\x00\x00" + bytes(500)
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + bytes(9)
    return b"\xff\xd8" + app0 + app1 + sof + b"\xff\xd9"


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00;"


def webp(width: int, height: int, chunk: bytes) -> bytes:
    if chunk == b"VP8X":
        data = (
            bytes(4)
            + (width - 1).to_bytes(3, "little")
            + (height - 1).to_bytes(3, "little")
        )
    elif chunk == b"VP8L":
        bits = (width - 1) | (height - 1) << 14
        data = b"\x2f" + bits.to_bytes(4, "little") + bytes(4)
    else:
        data = (
            b"\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", width, height) + bytes(4)
        )
    body = b"WEBP" + chunk + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _data_url(data: bytes) -> str:
    return _images.data_url(data)


# -- 1. the input dtype ----------------------------------------------------------------


def test_the_parts_dtype_is_taken_and_a_wrong_one_named() -> None:
    check_dtype(PARTS_MESSAGES_DTYPE)
    # fields may be missing: only type (and the image's url) matter
    check_dtype(
        pl.List(
            pl.Struct(
                {
                    "role": pl.String,
                    "content": pl.List(
                        pl.Struct({"type": pl.String, "text": pl.String})
                    ),
                }
            )
        )
    )
    wrong = pl.List(pl.Struct({"role": pl.String, "content": pl.List(pl.Int64)}))
    with pytest.raises(TypeError, match="field 'content' must be String or a List"):
        check_dtype(wrong)
    no_url = pl.List(
        pl.Struct(
            {
                "role": pl.String,
                "content": pl.List(
                    pl.Struct(
                        {"type": pl.String, "image_url": pl.Struct({"url": pl.Int64})}
                    )
                ),
            }
        )
    )
    with pytest.raises(TypeError, match="image_url"):
        check_dtype(no_url)
    # a column of image bytes given as the messages (chat.complete, the CLI's --column)
    for photos in (pl.Binary(), pl.List(pl.Binary())):
        with pytest.raises(TypeError, match=r"not .*Binary.*\.messages\(images=\)"):
            check_dtype(photos)
    with pytest.raises(TypeError, match=r"not Int64$"):
        check_dtype(pl.Int64())


def test_python_rows_with_parts_become_requests_with_null_fields_left_out() -> None:
    url = _data_url(png(4, 2))
    rows: list[Any] = [
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is it?", "image_url": None},
                    {
                        "type": "image_url",
                        "text": None,
                        "image_url": {"url": url, "detail": None},
                    },
                ],
            }
        ],
        [{"role": "user", "content": [{"type": "audio", "text": "x"}]}],
        [
            {
                "role": "assistant",
                "content": [{"type": "image_url", "image_url": {"url": url}}],
            }
        ],
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url, "detail": "huge"}}
                ],
            }
        ],
        [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}],
            }
        ],
        [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": "https://x"}],
            }
        ],
    ]
    ok, audio, assistant, detail, ftp, bare = rows_to_requests(rows)
    assert ok is not None and ok.error is None
    assert ok.messages[0]["content"] == [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    assert audio is not None and "expected 'text' or 'image_url'" in str(audio.error)
    assert assistant is not None and "user only" in str(assistant.error)
    assert detail is not None and "detail 'huge'" in str(detail.error)
    assert ftp is not None and "not an http(s):// or a data: URL" in str(ftp.error)
    assert bare is not None and "image_url is a string" in str(bare.error)


# -- 2. messages(images=...) and the image's header -------------------------------------


@pytest.mark.parametrize(
    ("data", "mime", "size"),
    [
        (png(640, 480), "image/png", (640, 480)),
        (jpeg(1920, 1080), "image/jpeg", (1920, 1080)),
        (gif(33, 17), "image/gif", (33, 17)),
        (webp(300, 200, b"VP8X"), "image/webp", (300, 200)),
        (webp(301, 201, b"VP8L"), "image/webp", (301, 201)),
        (webp(302, 202, b"VP8 "), "image/webp", (302, 202)),
    ],
)
def test_the_format_and_size_come_from_the_header(
    data: bytes, mime: str, size: tuple[int, int]
) -> None:
    assert _images.image_type(data) == mime
    assert _images.image_size(data) == size
    # the emulator reads them with its own code, and agrees
    seen = _vision.picture(_data_url(data), "auto")
    assert seen is not None and (seen.width, seen.height) == size


def test_a_large_image_is_read_from_its_head_and_a_deep_jpeg_whole() -> None:
    # a photo's format and size come from its first bytes; its byte count from the
    # base64's length; a JPEG whose frame header lies past the head is decoded whole
    big = png(640, 480) + bytes(200_000)
    head, nbytes, size = _images.peek_data_url(_data_url(big))
    assert len(head) < len(big) and nbytes == len(big) and size == (640, 480)
    deep = jpeg(1, 1)
    exif = b"Exif\x00\x00" + bytes(60_000)
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    deep = deep[:2] + app1 + jpeg(300, 200)[2:]
    assert _images.peek_data_url(_data_url(deep))[1:] == (len(deep), (300, 200))
    assert _tokens.url_tokens(_data_url(deep), "high") == 85 + 170 * 1
    assert _images.url_problem(_data_url(big)[:-1]) == (
        "has a data URL that cannot be read: its base64 is broken"
    )


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=40), at=st.integers(0, 45), n=st.integers(0, 12))
def test_the_bytes_at_a_place_decode_only_their_quads(
    data: bytes, at: int, n: int
) -> None:
    # the client's and the emulator's partial decodes give the bytes a whole one gives
    text = base64.b64encode(data).decode()
    assert _images._b64_at(text, at, n) == data[at : at + n]
    for head in ("", "data:image/png;base64,"):  # checked and read in place
        decoded = _vision._base64(head + text, len(head))
        assert decoded is not None and len(decoded) == len(data)
        assert decoded[at : at + n] == data[at : at + n]
        if at < len(data):
            assert decoded[at] == data[at]


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet="AQg+/=\n -", max_size=12))
def test_client_and_emulator_take_the_base64_rfc_4648_takes(text: str) -> None:
    # each checks by alphabet and padding, not by a whole decode: RFC 4648's grammar
    # (the standard library's strict mode takes "AAAA=" and "AAAA===" on Python 3.11)
    quad = "[A-Za-z0-9+/]"
    grammar = f"(?:{quad}{{4}})*(?:{quad}{{2}}==|{quad}{{3}}=)?"
    valid = bool(re.fullmatch(grammar, text))
    assert (_vision._base64(text) is not None) == valid
    for head in ("data:image/png;base64,", "data:;=,", "=="):  # in place, after a head
        assert (_vision._base64(head + text, len(head)) is not None) == valid
        assert (_images._decoded(head + text, len(head)) is not None) == valid


def test_a_column_of_bytes_becomes_the_data_urls_python_would_build() -> None:
    # built in Polars (no Python loop over rows): the same URLs as data_url
    images = [png(3, 2), jpeg(4, 4), gif(1, 1), webp(9, 9, b"VP8L"), b"nope", None]
    df = pl.DataFrame({"photo": images}, schema={"photo": pl.Binary})
    built = df.select(messages(user="?", images=pl.col("photo")))["messages"]
    urls = [
        [p["image_url"]["url"] for p in row[0]["content"][1:]]
        for row in built.to_list()
    ]
    assert urls == [[_images.data_url(b)] if b is not None else [] for b in images]
    assert urls[4][0].startswith("data:application/octet-stream;base64,")
    listed = df.select(pl.concat_list(pl.col("photo")).alias("photo"))
    as_lists = listed.select(messages(user="?", images=pl.col("photo")))["messages"]
    assert as_lists.to_list()[:5] == built.to_list()[:5]
    # a list a row is built in Polars too: its images in order, nulls left out
    rows = [[*images[:3], None, *images[4:5]], None, [], [None], images[3:4]]
    many = pl.DataFrame({"photo": rows}, schema={"photo": pl.List(pl.Binary)})
    got = many.select(messages(user="?", images=pl.col("photo")))["messages"]
    assert [
        [p["image_url"]["url"] for p in row[0]["content"][1:]] for row in got.to_list()
    ] == [[_images.data_url(b) for b in r or () if b is not None] for r in rows]


def test_messages_builds_parts_from_urls_bytes_and_lists() -> None:
    first, second = png(8, 8), jpeg(64, 32)
    df = pl.DataFrame(
        {
            "q": ["one", "two", None, "four"],
            "url": [
                "https://example.com/a.png",
                None,
                "https://x/y.gif",
                "data:image/gif;base64,R0lGODlh",
            ],
            "photo": [first, None, first, b"%PDF-1.7 not an image"],
            "album": [[first, second], [], None, [None, second]],
        },
        schema_overrides={"album": pl.List(pl.Binary)},
    )
    out = (
        df.lazy()
        .select(
            by_url=messages(system="Describe.", user=pl.col("q"), images=pl.col("url")),
            by_bytes=messages(user=pl.col("q"), images=pl.col("photo"), detail="low"),
            by_list=messages(user=pl.col("q"), images=pl.col("album"), detail="high"),
        )
        .collect(engine="streaming")
    )
    assert out.schema["by_url"] == PARTS_MESSAGES_DTYPE
    rows = out.to_dicts()
    # row 0: the system message is a text part; the user message text, then the image
    system, user = rows[0]["by_url"]
    assert system["content"] == [
        {"type": "text", "text": "Describe.", "image_url": None}
    ]
    assert [p["type"] for p in user["content"]] == ["text", "image_url"]
    assert user["content"][1]["image_url"] == {
        "url": "https://example.com/a.png",
        "detail": "auto",
    }
    # a null image: the text alone; a null user text with an image: the image alone
    assert [p["type"] for p in rows[1]["by_url"][-1]["content"]] == ["text"]
    assert rows[2]["by_url"][-1]["content"] == [
        {
            "type": "image_url",
            "text": None,
            "image_url": {"url": "https://x/y.gif", "detail": "auto"},
        }
    ]
    assert [p["type"] for p in rows[2]["by_bytes"][0]["content"]] == ["image_url"]
    # a null user text and no image (a null, an empty list or a null list): a null row
    neither = pl.DataFrame(
        {"q": [None, None, None], "album": [None, [], [None]]},
        schema={"q": pl.String, "album": pl.List(pl.Binary)},
    )
    assert neither.select(
        messages(user=pl.col("q"), images=pl.col("album"))
    ).to_series().to_list() == [None, None, None]
    # bytes become data URLs with the MIME type of their signature
    url = rows[0]["by_bytes"][0]["content"][1]["image_url"]
    assert url == {"url": _data_url(first), "detail": "low"}
    assert url["url"].startswith("data:image/png;base64,")
    assert rows[3]["by_bytes"][0]["content"][1]["image_url"]["url"].startswith(
        "data:application/octet-stream;base64,"
    )
    # a list: each image in order, nulls left out
    kinds = [p["image_url"]["url"][:15] for p in rows[0]["by_list"][0]["content"][1:]]
    assert kinds == ["data:image/png;", "data:image/jpeg"]
    assert len(rows[1]["by_list"][0]["content"]) == 1
    assert len(rows[3]["by_list"][0]["content"]) == 2
    with pytest.raises(ValueError, match="detail"):
        messages(user="x", images=pl.col("url"), detail="medium")
    with pytest.raises(Exception, match="images must be a String"):
        pl.DataFrame({"n": [1]}).select(messages(user="x", images=pl.col("n")))


def test_an_image_without_text_is_sent_alone_and_a_row_of_neither_stays_null(
    emulator: Emulator,
) -> None:
    df = pl.DataFrame(
        {"q": [None, "Which?", None], "photo": [png(3, 2), png(5, 4), None]}
    )
    out = df.select(
        pac.complete(
            messages(user=pl.col("q"), images=pl.col("photo")),
            output="struct",
            max_tokens=30,
        )
    )
    rows = out.to_series().to_list()
    assert rows[0]["content"].endswith("[images: png 3x2]")
    assert rows[0]["error"] is None
    assert rows[1]["content"] == "Echo: Which? [images: png 5x4]"
    assert rows[2] is None  # nothing to send: null in, null out
    assert emulator.stats()["requests"] == 2


def test_a_bad_image_or_too_many_fail_alone_before_any_request(
    emulator: Emulator,
) -> None:
    df = pl.DataFrame(
        {
            "photos": [
                [png(2, 2)],
                [b"GIF87"],  # cut short: no known signature
                [b"\x00\x01 just bytes"],
                [png(2, 2, shade=i) for i in range(51)],
                [png(2, 2, shade=i) for i in range(50)],
            ]
        }
    )
    out = df.select(
        pac.complete(
            messages(user="What is it?", images=pl.col("photos")),
            output="struct",
            max_tokens=30,
        )
    )
    rows = out.to_series().to_list()
    assert rows[0]["error"] is None and rows[4]["error"] is None
    assert (
        "is not a PNG, JPEG, GIF or WEBP image (its bytes start with GIF87)"
        in rows[1]["error"]
    )
    assert "InputError" in rows[2]["error"]
    assert "51 images in one request; Azure takes at most 50" in rows[3]["error"]
    assert emulator.stats()["requests"] == 2  # the failed rows sent nothing


def test_a_broken_tail_a_cut_jpeg_and_no_bytes_fail_alone_before_any_request(
    emulator: Emulator,
) -> None:
    photo = png(100, 7) + bytes(1_000)
    whole = base64.b64encode(photo).decode()
    cut = b"\xff\xd8\xff\xfe\x00\x30" + bytes(46) + b"\xff\xc0\x00\x11"  # ends in SOF
    urls = [
        "data:image/png;base64," + whole,
        "data:image/png;base64," + base64.encodebytes(photo).decode(),  # line breaks
        "data:image/png;base64," + whole[:-8] + "!!!!" + whole[-4:],  # past the head
        "data:image/png;base64,"
        + whole.replace("+", "-").replace("/", "_"),  # URL-safe
        "DATA:image/png;BASE64," + whole,  # a scheme's case does not matter
        "data:image/png;base64,",
        _data_url(cut),
    ]
    assert whole != whole.replace("+", "-").replace("/", "_")
    assert _images.peek_data_url(_data_url(cut))[2] is None  # its size is unknown
    df = pl.DataFrame({"u": urls})
    expr = messages(user="What is it?", images=pl.col("u"))
    plan = pac.plan(df.select(expr).to_series())
    assert plan.unsendable == 5
    out = df.select(pac.complete(expr, output="struct", max_tokens=30))
    errors = [r["error"] for r in out.to_series().to_list()]
    assert errors[0] is None and errors[4] is None
    for i in (1, 2, 3):
        assert "has a data URL that cannot be read: its base64 is broken" in errors[i]
    assert "is empty (a data URL of no bytes)" in errors[5]
    # all its bytes are here and they end inside the size: Azure cannot decode it
    assert "is a JPEG whose header gives no size (cut short or damaged)" in errors[6]
    secret = _images.url_problem("ftp://user:hunter2@example.com/a.png")
    assert (
        secret == "has URL 'ftp://example.com/a.png': not an http(s):// or a data: URL"
    )
    # an https URL with no host was sent (Azure cannot fetch it)
    assert _images.url_problem("https://") == "has URL 'https://': no host"
    assert _images.url_problem("https://?q=1") == "has URL 'https://?q=1': no host"
    assert _images.url_problem("https://x.com") is None
    text_type = "data:text/plain;base64," + whole
    assert _images.url_problem(text_type) == (
        "has a data URL of type 'text/plain': Azure takes image/* types only"
    )
    assert emulator.stats()["requests"] == 2  # the broken rows sent nothing


# -- 3. token estimates: client and emulator, quota, cap, plan --------------------------


def test_the_tile_rule_on_both_sides() -> None:
    cases = [((1024, 1024), "high", 765), ((2048, 4096), "high", 1105)]
    cases += [
        ((4000, 3000), "low", 85),
        ((300, 200), "auto", 255),
        ((800, 600), "auto", 765),
    ]
    for size, detail, tokens in cases:
        assert _tokens.image_tokens(size, detail) == tokens
        picture = _vision.Picture("png", size[0], size[1], detail)
        assert emu_tokens.image_tokens(picture) == tokens
    # an https image's size is unknown: the client assumes the most any image costs,
    # the emulator a 1024 x 1024 image
    assert _tokens.image_tokens(None, "auto") == 1445 == _tokens.UNKNOWN_IMAGE_TOKENS
    assert _tokens.url_tokens("https://x/y.png", "low") == 85
    https = _vision.picture("https://x/y.png", "auto")
    assert https is not None and emu_tokens.image_tokens(https) == 765


def _request(*images: bytes | str, detail: str = "auto") -> Any:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "What is it?"}]
    for image in images:
        url = image if isinstance(image, str) else _data_url(image)
        parts.append({"type": "image_url", "image_url": {"url": url, "detail": detail}})
    (req,) = rows_to_requests([[{"role": "user", "content": parts}]])
    assert req is not None and req.error is None
    return req


def test_quota_and_cap_count_the_image_tokens() -> None:
    shape = RequestShape({"max_tokens": 10}, deployment="gpt-4o")
    text, one, two = (
        _request(),
        _request(png(2048, 4096)),
        _request(png(64, 64), jpeg(1024, 1024)),
    )
    assert shape.quota_tokens(one) - shape.quota_tokens(text) == 1105
    assert shape.quota_tokens(two) - shape.quota_tokens(text) == 255 + 765
    assert (
        shape.quota_tokens(one, exact=False)
        > shape.quota_tokens(text, exact=False) + 1000
    )
    cap = SpendingCap(1.0, (2.5, 10.0), "gpt-4o")
    assert shape.worst_cost(one, cap) > shape.worst_cost(text, cap)


def test_plan_counts_image_tokens_as_the_emulator_charges_them(
    emulator: Emulator,
) -> None:
    df = pl.DataFrame({"photo": [png(2048, 1024), png(100, 100), None]})
    column = df.select(messages(user="What is in it?", images=pl.col("photo")))
    estimate = pac.plan(column["messages"], max_tokens=20)
    assert emulator.stats()["requests"] == 0
    # 2048 x 1024 -> 1536 x 768 -> 3 x 2 tiles: 1105; 100 x 100: 255
    assert estimate.rows["prompt_tokens"].to_list()[:2] == [
        _tokens.prompt_tokens([{"role": "user", "content": "What is in it?"}]) + t
        for t in (1105, 255)
    ]
    with pac.Completer(max_tokens=20, output="struct") as job:
        out = column.select(job.expr("messages")).to_series().to_list()
    charged = [row["prompt_tokens"] for row in out[:2]]
    # the emulator counts text its own way, the images by the same rule
    assert [
        c - e for c, e in zip(charged, estimate.rows["prompt_tokens"], strict=False)
    ] == [charged[0] - estimate.rows["prompt_tokens"][0]] * 2
    assert all(
        abs(c - e) <= 3
        for c, e in zip(charged, estimate.rows["prompt_tokens"], strict=False)
    )
    assert out[0]["content"] == "Echo: What is in it? [images: png 2048x1024]"


def test_plan_bounds_image_rows_by_their_tokens_against_the_token_quota() -> None:
    # 3 requests of ~1,100 tokens each (and 20 reserved) do not fit a 3,000-token
    # minute: the plan says the token quota bounds the run
    df = pl.DataFrame({"photo": [png(2048, 4096, shade=i) for i in range(3)]})
    column = df.select(messages(user="Hi", images=pl.col("photo"), detail="high"))
    plan = pac.plan(column["messages"], max_tokens=20, tokens_per_minute=3000)
    assert plan.request_tokens > 3 * 1105
    assert plan.bound_by == "tokens_per_minute" and plan.estimated_wall_s > 0


# -- 4. the cache key: the image's bytes ------------------------------------------------


def test_the_same_image_dedups_and_a_different_one_does_not(
    emulator: Emulator, tmp_path: Path
) -> None:
    a, b = png(16, 16, shade=1), png(16, 16, shade=2)
    shape = RequestShape({}, host="h", deployment="d")
    assert shape.key(_request(a)) == shape.key(_request(a))
    assert shape.key(_request(a)) != shape.key(_request(b))  # same size, other bytes
    df = pl.DataFrame({"photo": [a, b, a, a]})
    column = df.select(messages(user="Same?", images=pl.col("photo")))
    cache = tmp_path / "cache.sqlite"
    with pac.Completer(max_tokens=20, cache=str(cache)) as job:
        first = column.select(job.expr("messages"))
        assert job.summary().deduplicated == 2
    assert emulator.stats()["requests"] == 2
    with pac.Completer(max_tokens=20, cache=str(cache)) as job:
        again = column.select(job.expr("messages"))
        assert job.summary().cached == 2
    assert emulator.stats()["requests"] == 2  # all from the cache
    assert again.equals(first)


# -- 5. the emulator, batch mode and the CLI --------------------------------------------

CHAT = "/openai/deployments/{}/chat/completions?api-version=2024-10-21"


def post(
    emu: Emulator, body: object, deployment: str = "gpt-4o-mini"
) -> tuple[int, Any]:
    """POST a chat body to a deployment of the emulator: the status and the JSON."""
    req = urllib.request.Request(
        emu.url + CHAT.format(deployment),
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "api-key": emu.api_key},
    )
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_emulator_answers_image_parts_and_refuses_what_azure_refuses(
    emulator: Emulator,
) -> None:
    def user(*parts: dict[str, Any], role: str = "user") -> dict[str, Any]:
        return {"messages": [{"role": role, "content": list(parts)}], "max_tokens": 50}

    text = {"type": "text", "text": "What is it?"}

    def image(url: str, detail: str = "low") -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": url, "detail": detail}}

    status, body = post(emulator, user(text, image(_data_url(gif(3, 2)))))
    assert status == 200
    assert (
        body["choices"][0]["message"]["content"]
        == "Echo: What is it? [images: gif 3x2]"
    )
    assert body["usage"]["prompt_tokens"] == 3 + 4 + 3 + 85  # chars estimate + low
    status, body = post(
        emulator, user(text, image("data:image/png;base64,JVBERi0xLjc="))
    )
    assert status == 400 and body["error"]["code"] == "invalid_image_format"
    assert body["error"]["param"] == "messages[0].content[1].image_url.url"
    status, body = post(emulator, user(text, image("https://x/y.png"), role="system"))
    assert (
        status == 400
        and "only allowed for messages with role 'user'" in body["error"]["message"]
    )
    status, body = post(emulator, user(text, image("https://x/y.png", "medium")))
    assert status == 400 and body["error"]["param"].endswith("image_url.detail")
    many = [image("https://x/y.png")] * 51
    status, body = post(emulator, user(text, *many))
    assert status == 400 and body["error"]["code"] == "too_many_images"
    status, body = post(emulator, user({"type": "input_audio", "text": "x"}))
    assert status == 400 and body["error"]["code"] == "invalid_value"
    photo = base64.b64encode(gif(3, 2)).decode()
    for url, words in [
        (
            "data:text/plain;base64," + photo,
            "but got unsupported MIME type 'text/plain'",
        ),
        ("data:image/gif," + photo, "but got a value that is not base64"),
        ("data:image/gif;base64,", "The image size must be greater than zero"),
        (
            "data:image/gif;base64," + photo + "A" * (28 * 1024 * 1024),
            "cannot exceed 20971520 bytes",
        ),
    ]:
        status, body = post(emulator, user(text, image(url)))
        assert status == 400 and words in body["error"]["message"], url[:30]
        assert body["error"]["param"] == "messages[0].content[1].image_url.url"


def test_batch_mode_sends_image_rows_as_online_does(tmp_path: Path) -> None:
    clock = FakeClock(10_000.0)
    df = pl.DataFrame({"photo": [png(40, 20), b"nope", png(40, 20), gif(5, 5)]})
    column = df.select(messages(user="Which?", images=pl.col("photo")))
    with Emulator(clock=clock) as emu:
        config = pac.ChatConfig(
            azure_endpoint=emu.url, api_key=emu.api_key, deployment="gpt-4o-mini-batch"
        )
        online_job = pac.Completer(config=config, max_tokens=30, progress=False)
        with online_job:
            online = column.select(online_job.expr("messages"))
        job = pac.Completer(
            config=config,
            max_tokens=30,
            progress=False,
            mode="batch",
            batch_poll_s=1.0,
            cache=str(tmp_path / "b.sqlite"),
        )
        assert job._batch is not None
        job._batch.settings.update(sleep=clock.blocking_sleep, clock=clock)
        with job:
            batch = column.select(job.expr("messages"))
            summary = job.summary()
        stats = emu.stats()
    assert batch.equals(online)
    assert batch.to_series().to_list() == [
        "Echo: Which? [images: png 40x20]",
        None,
        "Echo: Which? [images: png 40x20]",
        "Echo: Which? [images: gif 5x5]",
    ]
    assert stats["batch"]["lines_answered"] == 2  # the duplicate went once
    assert summary.failed == 1 and summary.deduplicated == 1
    assert summary.prompt_tokens >= 2 * 255


def test_the_responses_api_sends_images_as_input_image_parts(
    emulator: Emulator, tmp_path: Path
) -> None:
    # online and in Batch mode: the same answers as chat, row i's image in row i
    clock = FakeClock(10_000.0)
    df = pl.DataFrame({"photo": [png(40, 20), gif(5, 5), b"nope", png(40, 20)]})
    column = df.select(messages(user="Which?", images=pl.col("photo"), detail="low"))
    expected = [
        "Echo: Which? [images: png 40x20]",
        "Echo: Which? [images: gif 5x5]",
        None,
        "Echo: Which? [images: png 40x20]",
    ]
    chat = column.select(pac.complete("messages", max_tokens=30))
    assert chat.to_series().to_list() == expected
    before = emulator.stats()["routes"]["responses"]
    with pac.Completer(api="responses", max_tokens=30, progress=False) as job:
        online = column.select(job.expr("messages"))
        summary = job.summary()
    assert online.to_series().to_list() == expected
    assert emulator.stats()["routes"]["responses"] - before == 2  # deduplicated
    # the emulator counted the images as chat does: 85 tokens each at low detail
    assert summary.prompt_tokens >= 2 * 85
    with Emulator(clock=clock) as emu:
        config = pac.ChatConfig(base_url=emu.base_url, api_key=emu.api_key)
        job = pac.Completer(
            config=config,
            api="responses",
            deployment="gpt-4o-mini-batch",
            max_tokens=30,
            progress=False,
            mode="batch",
            batch_poll_s=1.0,
            cache=str(tmp_path / "r.sqlite"),
        )
        assert job._batch is not None
        job._batch.settings.update(sleep=clock.blocking_sleep, clock=clock)
        with job:
            batch = column.select(job.expr("messages"))
        assert emu.stats()["batch"]["lines_answered"] == 2
    assert batch.to_series().to_list() == expected


def test_cli_run_on_a_parquet_file_with_image_parts(tmp_path: Path) -> None:
    src, out = tmp_path / "photos.parquet", tmp_path / "answers.parquet"
    df = pl.DataFrame(
        {"id": [1, 2, 3], "photo": [png(30, 30), None, webp(900, 600, b"VP8X")]}
    )
    df.select(
        "id", messages(user=pl.format("Photo {}", pl.col("id")), images=pl.col("photo"))
    ).write_parquet(src)
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(src),
            str(out),
            "--column",
            "messages",
            "--emulator",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    answers = pl.read_parquet(out)["answer"].to_list()
    assert answers == [
        "Echo: Photo 1 [images: png 30x30]",
        "Echo: Photo 2",
        "Echo: Photo 3 [images: webp 900x600]",
    ]
    plan = CliRunner().invoke(app, ["plan", str(src), "--max-tokens", "20"])
    assert plan.exit_code == 0, plan.output
    assert "3 requests" in plan.output


def test_a_data_url_with_parameters_or_unprintable_bytes_is_refused_by_name() -> None:
    # Azure reads data:<type>;base64,<bytes>: a parameter between them (a file name,
    # a charset) made it answer 400 after the request was paid for
    b64 = base64.b64encode(png(3, 2)).decode()
    for params in ("name=x.png", "charset=utf-8"):
        url = f"data:image/png;{params};base64,{b64}"
        assert _images.url_problem(url) == (
            f"has a data URL with parameters ({params!r}): Azure takes "
            "data:<type>;base64,<bytes> only"
        )
    assert _images.url_problem(f"data:IMAGE/PNG;BASE64,{b64}") is None  # any case
    # bytes that are not text are shown in hex, not as dots
    assert _images.url_problem("data:image/png;base64,AAAAAAAAAAA=") == (
        "is not a PNG, JPEG, GIF or WEBP image (its bytes start with 0x0000000000000000)"
    )
