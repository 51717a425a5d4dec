"""What models do with images: refuse them, or bill them their own way.

Against the emulator over HTTP: a deployment of a model that reads text only (o3-mini,
o1-mini, GPT-3.5, GPT-4 0613) answers an image part with Azure's 400 (no code, its
``param`` the part's type); the client stops the run at the first, naming the images.
An image whose header says 0 pixels a side fails before any request. gpt-4o-mini bills
an image at 2,833 tokens and 5,667 a tile, the patch models by 32-px patches: ``plan``
and the spending cap price images as the model bills them.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner, Result

import polars_azurechat as pac
from polars_azurechat import _images
from polars_azurechat.cli import app
from polars_azurechat.emulator import Emulator
from polars_azurechat.engine.convert import rows_to_requests
from polars_azurechat.engine.frontdoor import RequestShape
from polars_azurechat.errors import UnsupportedParameterError
from polars_azurechat.prompts import messages
from polars_azurechat.summary import SpendingCap, price_for
from polars_azurechat.transport import tokens as _tokens

from .fakes import FakeClock
from .test_images import gif, png, post, webp

#: A reasoning model that reads images beside one that does not.
PER = {"o3-mini": {"model": "o3-mini"}, "o4-mini": {"model": "o4-mini"}}


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(per_deployment=PER) as emulator:
        yield emulator


def _ask(url: str) -> dict[str, Any]:
    parts = [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
    ]
    return {"messages": [{"role": "user", "content": parts}]}


def _asked_about(emu: Emulator, photos: list[bytes]) -> list[dict[str, Any]]:
    """Each photo's row, asked "What is it?" of the emulator's gpt-4o-mini."""
    df = pl.DataFrame({"photo": photos})
    out = df.select(
        pac.complete(
            messages(user="What is it?", images=pl.col("photo"), detail="low"),
            config=pac.ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key),
            deployment="gpt-4o-mini",
            output="struct",
            max_tokens=30,
        )
    )
    rows: list[dict[str, Any]] = out.to_series().to_list()
    return rows


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_the_emulator_refuses_an_image_to_a_text_only_model_as_azure_does(
    emu: Emulator,
) -> None:
    status, body = post(emu, _ask("https://example.com/cat.png"), "o3-mini")
    assert status == 400
    assert body["error"] == {
        "message": (
            "Invalid content type. image_url is only supported by certain models."
        ),
        "type": "invalid_request_error",
        "param": "messages[0].content[1].type",
        "code": None,
    }
    # the same request to a model that reads images, and text alone to o3-mini
    assert post(emu, _ask("https://example.com/cat.png"), "o4-mini")[0] == 200
    text = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    status, body = post(emu, text, "o3-mini")
    assert status == 200 and body["choices"][0]["message"]["content"] == "Echo: hi"


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_images_to_a_text_only_deployment_stop_the_run_naming_the_images(
    emu: Emulator, api: str
) -> None:
    df = pl.DataFrame({"photo": [png(4, 3, shade=i) for i in range(40)]})
    config = pac.ChatConfig(base_url=emu.base_url, api_key=emu.api_key)
    column = df.select(messages(user="Which?", images=pl.col("photo"), detail="low"))
    with (
        pytest.raises(UnsupportedParameterError, match="does not read images") as info,
        pac.Completer(
            config=config,
            deployment="o3-mini",
            api=api,  # type: ignore[arg-type]
            max_concurrency=2,
            progress=False,
        ) as job,
    ):
        job.run(column.to_series())
    assert info.value.param == "images"
    assert "use a deployment of a vision model" in str(info.value)
    stats = emu.stats()
    # the run stopped at the first 400: what was in flight then, not the 40 rows
    assert 1 <= stats["requests"] <= 2
    assert stats["statuses"] == {"400": stats["requests"]}


def test_an_image_of_no_pixels_fails_alone_before_any_request(emu: Emulator) -> None:
    flat = png(0, 0)
    assert _images.peek_data_url(_data_url(flat))[2] == (0, 0)
    assert _images.url_problem(_data_url(flat)) == (
        "is 0x0 pixels: Azure refuses an image with no pixels"
    )
    # the emulator reads the header its own way, and refuses it as Azure does
    status, body = post(emu, _ask(_data_url(flat)))
    assert status == 400 and body["error"]["code"] == "invalid_image"
    emu.reset()
    rows = _asked_about(emu, [gif(3, 2), flat, gif(0, 5), gif(3, 2)])
    assert [r["content"] for r in rows] == [
        "Echo: What is it? [images: gif 3x2]",
        None,
        None,
        "Echo: What is it? [images: gif 3x2]",
    ]
    assert "the image is 0x0 pixels: Azure refuses" in rows[1]["error"]
    assert "the image is 0x5 pixels" in rows[2]["error"]
    assert emu.stats()["requests"] == 1  # the two good rows are one request


def test_each_model_bills_an_image_by_its_own_rule() -> None:
    # OpenAI's worked example of the patch rule: 1800 x 2400 is scaled to 1056 x 1408,
    # 33 x 44 patches
    assert _tokens.image_billing("gpt-4.1-mini").tokens((1800, 2400), "high") == (
        -(-1452 * 162 // 100)
    )
    # usage measured on a 128 x 64 image with a short text (about 12 tokens):
    # gpt-4o-mini 2,845 at low detail and 8,512 at high; o4-mini 26 at either
    mini = _tokens.image_billing("gpt-4o-mini-2024-07-18")
    assert (mini.tokens((128, 64), "low"), mini.tokens((128, 64), "high")) == (
        2845 - 12,
        8512 - 12,
    )
    o4 = _tokens.image_billing("o4-mini")
    assert o4.tokens((128, 64), "low") == o4.tokens((128, 64), "high") == 26 - 12
    # a model billed as the quota counts: no extra; an unknown size: the most
    assert _tokens.image_billing("gpt-4o").tokens((128, 64), "high") == 255
    assert mini.tokens(None, "auto") == 2833 + 8 * 5667
    assert o4.tokens(None, "low") == -(-1536 * 172 // 100)
    # the gpt-5 family and o1/o3 (OpenAI's vision pricing table): gpt-5 70 + 140 a
    # tile, o1 and o3 75 + 150, gpt-5-mini and -nano patches times 1.62 and 2.46 (its
    # worked example: 1024 x 1024 on gpt-5-mini is 1,659)
    square = (1024, 1024)  # 768 x 768 after the resizing: 4 tiles
    assert _tokens.image_billing("gpt-5").tokens(square, "high") == 70 + 4 * 140
    assert _tokens.image_billing("gpt-5-chat").tokens(square, "low") == 70
    assert _tokens.image_billing("gpt-5-mini").tokens(square, "high") == 1659
    assert _tokens.image_billing("gpt-5-nano").tokens(square, "low") == -(
        -1024 * 246 // 100
    )
    assert _tokens.image_billing("o3").tokens(square, "high") == 75 + 4 * 150
    assert _tokens.image_billing("o1-2024-12-17").tokens(square, "low") == 75


def _request(*photos: bytes, detail: str = "high") -> Any:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "What is it?"}]
    for photo in photos:
        image = {"url": _data_url(photo), "detail": detail}
        parts.append({"type": "image_url", "image_url": image})
    (req,) = rows_to_requests([[{"role": "user", "content": parts}]])
    assert req is not None and req.error is None
    return req


def test_plan_prices_images_as_the_model_bills_them() -> None:
    df = pl.DataFrame({"photo": [png(1024, 1024), png(100, 100), png(100, 100)]})
    column = df.select(messages(user="What?", images=pl.col("photo")))["messages"]
    as_4o = pac.plan(column, max_tokens=20, model="gpt-4o")
    as_mini = pac.plan(column, max_tokens=20, model="gpt-4o-mini")
    # the same requests and the same quota count (the identical rows go once) ...
    assert as_4o.requests == as_mini.requests == 2
    assert as_mini.prompt_tokens == as_4o.prompt_tokens
    assert as_mini.request_tokens == as_4o.request_tokens
    assert as_4o.billed_prompt_tokens == as_4o.prompt_tokens
    # ... but gpt-4o-mini bills the 4-tile and the 1-tile image at its own rule
    extra = (2833 + 4 * 5667 - 765) + (2833 + 5667 - 255)
    assert as_mini.billed_prompt_tokens == as_mini.prompt_tokens + extra
    price = price_for("gpt-4o-mini")
    assert price is not None and as_mini.estimated_cost_usd is not None
    expected = (as_mini.prompt_tokens + extra) * price[0] + 2 * 20 * price[1]
    assert as_mini.estimated_cost_usd == pytest.approx(expected / 1e6)
    assert f"{as_mini.prompt_tokens + extra:,} billed (gpt-4o-mini" in str(as_mini)
    assert "billed" not in str(as_4o)


def test_the_spending_cap_holds_what_the_model_bills_for_an_image() -> None:
    shape = RequestShape({"max_tokens": 10}, deployment="d")
    text, photo = _request(), _request(png(1024, 1024))
    mini = SpendingCap(1.0, (1.0, 0.0), "gpt-4o-mini")  # $1 a million input tokens
    four = SpendingCap(1.0, (1.0, 0.0), "gpt-4o")
    assert shape.worst_cost(text, mini) == shape.worst_cost(text, four)
    held = (shape.worst_cost(photo, mini) - shape.worst_cost(photo, four)) * 1e6
    assert held == pytest.approx(2833 + 4 * 5667 - 765)


def test_a_data_url_in_capitals_is_read_and_counted_as_one_in_lower_case() -> None:
    lower = _data_url(png(200, 100))
    upper = "DATA:image/png;BASE64," + lower.split(",", 1)[1]
    assert _tokens.url_tokens(upper, "high") == _tokens.url_tokens(lower, "high") == 255
    part = {"type": "image_url", "image_url": {"url": upper, "detail": "high"}}
    msgs = [{"role": "user", "content": [part]}]
    assert _tokens.billed_image_extra(msgs, "gpt-4o-mini") == 2833 + 5667 - 255


def test_plan_prices_by_the_deployments_name_unless_a_model_is_named() -> None:
    df = pl.DataFrame({"photo": [png(1024, 1024)]})
    column = df.select(messages(user="What?", images=pl.col("photo")))["messages"]
    nano = pac.plan(column, max_tokens=20, deployment="gpt-4.1-nano")
    assert nano.model == "gpt-4.1-nano"
    assert nano.billed_prompt_tokens == nano.prompt_tokens - 765 + 2520
    assert pac.plan(column, max_tokens=20).model == "gpt-4o-mini"
    named = pac.plan(column, max_tokens=20, deployment="prod", model="gpt-4o")
    assert named.model == "gpt-4o" and named.estimated_cost_usd is not None
    unknown = pac.plan(column, max_tokens=20, deployment="prod")
    assert unknown.estimated_cost_usd is None
    assert "no price for 'prod'; pass prices=" in str(unknown)


def test_run_refuses_a_series_of_another_dtype_as_complete_does() -> None:
    with (
        pac.Completer(
            progress=False,
            config=pac.ChatConfig(
                azure_endpoint="http://127.0.0.1:9", api_key="k", deployment="d"
            ),
        ) as job,
        pytest.raises(TypeError, match="Int64"),
    ):
        job.run(pl.Series([1, 2]))


@pytest.mark.parametrize(
    ("cut", "kind"),
    [(24, "PNG"), (10, "GIF"), (25, "WEBP")],  # the bytes that end each one's size
    ids=["png-in-ihdr", "gif-in-size", "webp-in-chunk"],
)
def test_an_image_cut_inside_its_header_fails_alone_before_any_request(
    emu: Emulator, cut: int, kind: str
) -> None:
    whole = {"PNG": png(3, 2), "GIF": gif(3, 2), "WEBP": webp(3, 2, b"VP8L")}[kind]
    assert _images.image_size(whole[:cut]) == (3, 2)
    url = _data_url(whole[: cut - 1])  # one byte short of its size
    assert _images.url_problem(url) == (
        f"is a {kind} whose header gives no size (cut short or damaged)"
    )
    # Azure cannot decode it; the emulator, reading the header its own way, agrees
    status, body = post(emu, _ask(url))
    assert status == 400 and body["error"]["code"] == "invalid_image"
    emu.reset()
    rows = _asked_about(emu, [whole[: cut - 1], whole])
    assert f"the image is a {kind} whose header gives no size" in rows[0]["error"]
    assert rows[1]["content"] == f"Echo: What is it? [images: {kind.lower()} 3x2]"
    assert emu.stats()["requests"] == 1


def test_an_image_cut_in_its_body_fails_alone_before_any_request(
    emu: Emulator,
) -> None:
    # a partial download: the header is whole, the pixels are not. A PNG's chunks and
    # a WEBP's RIFF length say where the bytes end; data after IEND is ignored
    photo = png(40, 30, shade=7)
    webp_photo = webp(3, 2, b"VP8L")
    cases = {
        "in IDAT": (
            photo[:-20],
            f"{len(photo) - 20:,} bytes of at least the {len(photo) - 12:,}",
        ),
        "in its last CRC": (
            photo[:-14],
            f"{len(photo) - 14:,} bytes of at least the {len(photo) - 12:,}",
        ),
        "webp": (webp_photo[:-3], f"of the {len(webp_photo):,} its RIFF header give"),
    }
    for cut, said in cases.values():
        assert _images.image_size(cut) is not None  # the header is whole
        problem = _images.url_problem(_images.data_url(cut))
        assert problem is not None and said in problem, problem
        assert problem.startswith(("is a PNG cut short: ", "is a WEBP cut short: "))
        # the emulator, walking the chunks its own way, refuses it as Azure would
        status, body = post(emu, _ask(_images.data_url(cut)))
        assert status == 400 and body["error"]["code"] == "invalid_image", body
    # ending between chunks before any pixels (IDAT) is a cut
    problem = _images.url_problem(_images.data_url(photo[:33]))  # signature, IHDR
    assert (
        problem
        == "is a PNG cut short: 33 bytes of at least the 45 its chunks give (a partial download?)"
    )
    status, body = post(emu, _ask(_images.data_url(photo[:33])))
    assert status == 400 and body["error"]["code"] == "invalid_image", body
    # ... and so is ending between two chunks before the pixels' zlib stream ended
    split = _two_idats(photo)
    first_end = split.index(b"IDAT", split.index(b"IDAT") + 4) - 4
    problem = _images.url_problem(_images.data_url(split[:first_end]))
    assert problem is not None and problem.startswith("is a PNG cut short: "), problem
    status, body = post(emu, _ask(_images.data_url(split[:first_end])))
    assert status == 400 and body["error"]["code"] == "invalid_image", body
    assert _images.url_problem(_images.data_url(split[:-12])) is None  # no IEND
    # decoders need no IEND: bytes that end before it or inside it are whole
    for whole in (photo + b"trailing", photo[:-12], photo[:-5]):
        assert _images.url_problem(_images.data_url(whole)) is None
        status, body = post(emu, _ask(_images.data_url(whole)))
        assert status == 200, body
    emu.reset()
    rows = _asked_about(emu, [photo[:-20], photo + b"trailing", webp_photo[:-3]])
    assert "the image is a PNG cut short" in rows[0]["error"]
    assert rows[1]["content"] == "Echo: What is it? [images: png 40x30]"
    assert "the image is a WEBP cut short" in rows[2]["error"]
    assert emu.stats()["requests"] == 1


def _two_idats(photo: bytes) -> bytes:
    """``photo`` (a PNG of one IDAT chunk) with its pixels' stream in two IDAT chunks."""
    at = photo.index(b"IDAT") - 4
    size = int.from_bytes(photo[at : at + 4], "big")
    stream = photo[at + 8 : at + 8 + size]

    def chunk(data: bytes) -> bytes:
        crc = zlib.crc32(b"IDAT" + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + b"IDAT" + data + crc

    half = size // 2
    return (
        photo[:at]
        + chunk(stream[:half])
        + chunk(stream[half:])
        + photo[at + 12 + size :]
    )


def _scanned_jpeg(width: int, height: int) -> bytes:
    """A JPEG laid out as a camera writes one: an Exif thumbnail (a JPEG of its own,
    with its own end marker), the frame header, a Huffman table, a scan of
    entropy-coded bytes (0xFF stuffed as FF 00, restart markers FF D0..D7), the end."""
    thumb = b"\xff\xd8\xff\xdb\x00\x04\x00\x00" + bytes(40) + b"\xff\xd9"
    exif = b"Exif\x00\x00" + thumb
    app1 = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    sof = b"\xff\xc0\x00\x11\x08" + height.to_bytes(2, "big")
    sof += width.to_bytes(2, "big") + b"\x03" + bytes(9)
    dht = b"\xff\xc4\x00\x14" + bytes(18)
    sos = b"\xff\xda\x00\x0c\x03" + bytes(9)
    scan = b"".join(bytes([i % 251, 0xFF, 0x00, 0xD9]) for i in range(400))
    scan += b"\xff\xd3" + scan
    return b"\xff\xd8" + app1 + sof + dht + sos + scan + b"\xff\xd9"


def _framed_gif(width: int, height: int) -> bytes:
    """A GIF with a colour table, a graphic control extension, and one image of
    several data sub-blocks, then its trailer."""
    screen = b"GIF89a" + width.to_bytes(2, "little") + height.to_bytes(2, "little")
    screen += b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    control = b"\x21\xf9\x04\x00\x00\x00\x00\x00"
    image = b"\x2c" + bytes(4) + screen[6:10] + b"\x00" + b"\x02"
    image += (b"\xff" + bytes(range(255))) * 3 + b"\x05" + bytes(5) + b"\x00"
    return screen + control + image + b"\x3b"


def test_a_jpeg_or_gif_cut_in_its_body_fails_alone_before_any_request(
    emu: Emulator,
) -> None:
    photo, anim = _scanned_jpeg(40, 30), _framed_gif(40, 30)
    assert _images.image_size(photo) == (40, 30) == _images.image_size(anim)
    cut = {
        # a partial download: cut in the scan (the thumbnail's end marker, before
        # the frame header, does not count)
        "jpeg in its scan": (photo[:-300], "is a JPEG cut short: its "),
        "jpeg without its end marker": (photo[:-2], "hold no end marker (FF D9)"),
        "gif in its image": (anim[:-100], "is a GIF cut short: its "),
        "gif inside its last sub-block": (anim[:-4], "end inside its first"),
        # between two sub-blocks, after a full one (255 bytes): more were to come
        "gif after a full sub-block": (anim[: anim.index(b"\x02\xff") + 257], "end "),
        "gif with no pixel data": (
            anim[: anim.index(b"\x02\xff") + 1] + b"\x00\x3b",
            "end inside its first image",
        ),
        "gif in its screen": (anim[:12], "is a GIF cut short: its 12 bytes"),
        "gif before its first sub-block": (
            anim[: anim.index(b"\x2c") + 11],  # the descriptor, the LZW code size
            "end inside its first image",
        ),
    }
    for name, (data, said) in cut.items():
        problem = _images.url_problem(_data_url(data))
        assert problem is not None and said in problem, (name, problem)
        # the emulator, reading the file its own way, refuses it as Azure would
        status, body = post(emu, _ask(_data_url(data)))
        assert status == 400 and body["error"]["code"] == "invalid_image", name
    whole = {
        "jpeg": photo,
        "jpeg then a video (a motion photo)": photo + bytes(range(256)) * 4,
        "gif": anim,
        "gif without its trailer": anim[:-1],
        "gif without its last terminator": anim[:-2],
        # a fill byte, then stray bytes before a marker: libjpeg reads past them
        "jpeg with a fill byte": photo.replace(b"\xff\xc0", b"\xff\xff\xc0", 1),
        "jpeg with a stray byte": photo.replace(b"\xff\xc0", b"\x00\xff\xc0", 1),
        "jpeg with stray bytes holding FF 00": photo.replace(
            b"\xff\xc0", b"\x01\xff\x00\x02" * 40 + b"\xff\xc0", 1
        ),
    }
    for name, data in whole.items():
        assert _images.url_problem(_data_url(data)) is None, name
        status, body = post(emu, _ask(_data_url(data)))
        assert status == 200, (name, body)
        assert body["choices"][0]["message"]["content"].endswith("40x30]"), name
    emu.reset()
    rows = _asked_about(emu, [photo[:-300], photo, anim[:-100], anim])
    assert [r["error"] is None for r in rows] == [False, True, False, True]
    assert "the image is a JPEG cut short" in rows[0]["error"]
    assert rows[1]["content"] == "Echo: What is it? [images: jpeg 40x30]"
    assert "the image is a GIF cut short" in rows[2]["error"]
    assert rows[3]["content"] == "Echo: What is it? [images: gif 40x30]"
    assert emu.stats()["requests"] == 2


def test_in_batch_mode_images_to_a_text_only_deployment_fail_each_line_saying_so(
    tmp_path: Path,
) -> None:
    # Azure answers every line of a Batch job: the 400 every row repeats is each
    # row's error, and it says so; it does not claim that the run stopped
    clock = FakeClock(10_000.0)
    df = pl.DataFrame({"photo": [png(4, 3, shade=i) for i in range(3)]})
    column = df.select(messages(user="Which?", images=pl.col("photo"), detail="low"))
    with Emulator(clock=clock, per_deployment=PER) as emu:
        job = pac.Completer(
            config=pac.ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key),
            deployment="o3-mini",
            mode="batch",
            batch_poll_s=1.0,
            cache=str(tmp_path / "b.sqlite"),
            progress=False,
            output="struct",
        )
        assert job._batch is not None
        job._batch.settings.update(sleep=clock.blocking_sleep, clock=clock)
        with job:
            rows = column.select(job.expr("messages")).to_series().to_list()
        lines = emu.stats()["batch"]["lines_failed"]
    assert lines == 3  # Azure answered each line: with its 400
    for row in rows:
        assert row["content"] is None
        assert "does not read images" in row["error"]
        assert "(every line of the Batch job repeats it)" in row["error"]
        assert "the run stops" not in row["error"]


def test_a_deployment_named_otherwise_is_priced_and_billed_as_the_model_prices_names(
    emu: Emulator,
) -> None:
    # "prod-mini" runs gpt-4o-mini: as a price tuple it is priced right, but its
    # images by the tile rule (765 tokens for 1024x1024, gpt-4o-mini bills 25,501);
    # named as the model, the cap holds what the model bills, and plan says it
    df = pl.DataFrame({"photo": [png(1024, 1024)]})
    column = df.select(messages(user="What?", images=pl.col("photo"), detail="high"))
    config = pac.ChatConfig(azure_endpoint=emu.url, api_key=emu.api_key)

    def run(prices: dict[str, Any]) -> dict[str, Any]:
        with pac.Completer(
            config=config,
            deployment="prod-mini",
            max_tokens=20,
            max_cost_usd=0.001,  # the tile rule's worst case fits, the billed one not
            output="struct",
            progress=False,
            prices=prices,
        ) as job:
            row: dict[str, Any] = column.select(job.expr("messages")).item()
        return row

    priced = run({"prod-mini": (0.15, 0.60)})
    assert priced["error"] is None and emu.stats()["requests"] == 1
    emu.reset()
    named = run({"prod-mini": "gpt-4o-mini"})
    assert "would take the job past max_cost_usd=$0.001000" in named["error"]
    assert emu.stats()["requests"] == 0  # refused before it was sent
    plan = pac.plan(
        column["messages"],
        max_tokens=20,
        deployment="prod-mini",
        prices={"prod-mini": "gpt-4o-mini"},
    )
    assert plan.model == "gpt-4o-mini"
    assert plan.billed_prompt_tokens == plan.prompt_tokens - 765 + 2833 + 4 * 5667
    assert plan.estimated_cost_usd is not None


def test_cli_price_names_a_deployments_model_or_price(
    emu: Emulator, tmp_path: Path
) -> None:
    src = tmp_path / "photos.parquet"
    pl.DataFrame({"photo": [png(1024, 1024)]}).select(
        messages(user="What?", images=pl.col("photo"), detail="high")
    ).write_parquet(src)
    flags = ["--deployment", "prod-mini", "--max-tokens", "20", "--no-progress"]
    cli = CliRunner()

    def run(*more: str) -> Result:
        out = tmp_path / "out.parquet"
        args = ["run", str(src), str(out), "--overwrite", *flags, *more]
        return cli.invoke(app, [*args, "--max-cost-usd", "0.001"], env=emu.env())

    unpriced = run()
    assert unpriced.exit_code == 2
    assert "--price prod-mini=gpt-4o-mini" in unpriced.output
    assert run("--price", "prod-mini=0.15,0.60").exit_code == 0
    assert emu.stats()["requests"] == 1  # images by the tile rule: within the cap
    emu.reset()
    named = run("--price", "prod-mini=gpt-4o-mini")  # billed as gpt-4o-mini bills
    assert "SpendingCapError" in named.output and emu.stats()["requests"] == 0
    plan = cli.invoke(app, ["plan", str(src), *flags, "--price", "prod=gpt-4o-mini"])
    assert plan.exit_code == 0, plan.output
    assert "billed (gpt-4o-mini's price of an image)" in plan.output
    bad = cli.invoke(app, ["plan", str(src), "--price", "prod-mini=1,2,3,4"])
    assert bad.exit_code == 2 and "--price takes NAME=MODEL" in bad.output
