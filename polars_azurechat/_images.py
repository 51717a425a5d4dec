"""Images in messages: their format and size from the bytes' header. Not meant for outside use.

An image travels as a content part ``{"type": "image_url", "image_url": {"url": ...,
"detail": ...}}``; its URL is an ``https://`` address (Azure fetches it; the client
never does) or a ``data:`` URL carrying the bytes in base64. The format comes from the
bytes' signature (PNG, JPEG, GIF, WEBP: the formats Azure takes), the size from the
header (PNG's IHDR, JPEG's SOF, GIF's screen descriptor, WEBP's VP8/VP8L/VP8X chunk),
read without decoding the image and without a dependency.

Azure's limits (Azure OpenAI quotas and limits: "GPT-4o max images per request (# of
images in the messages array/conversation history): 50"; an input image at most
20 MB) are checked here, so a row over them fails alone, before any request.
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from collections.abc import Callable

__all__ = [
    "DETAILS",
    "MAX_IMAGES",
    "MAX_IMAGE_BYTES",
    "data_url",
    "decode_data_url",
    "image_size",
    "image_type",
    "peek_data_url",
    "url_problem",
]

#: Azure's most images in one request (every message's together).
MAX_IMAGES = 50
#: Azure's largest input image.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: The values ``detail`` takes.
DETAILS = ("auto", "low", "high")

_PNG = b"\x89PNG\r\n\x1a\n"
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_type(data: bytes) -> str | None:
    r"""The MIME type of image bytes from their signature, ``None`` for another format.

    Examples
    --------
    >>> (
    ...     image_type(b"\x89PNG\r\n\x1a\n...."),
    ...     image_type(b"GIF89a.."),
    ...     image_type(b"%PDF"),
    ... )
    ('image/png', 'image/gif', None)
    """
    if data.startswith(_PNG):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    r"""``(width, height)`` from an image's header, ``None`` when it cannot be read.

    Examples
    --------
    >>> png = (
    ...     _PNG
    ...     + b"\x00\x00\x00\rIHDR"
    ...     + (640).to_bytes(4, "big")
    ...     + (480).to_bytes(4, "big")
    ... )
    >>> image_size(png)
    (640, 480)
    >>> image_size(b"GIF89a" + (3).to_bytes(2, "little") + (2).to_bytes(2, "little"))
    (3, 2)
    """
    kind = image_type(data)
    try:
        if kind == "image/png" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return width, height
        if kind == "image/gif":
            width, height = struct.unpack("<HH", data[6:10])
            return width, height
        if kind == "image/webp":
            return _webp_size(data)
        if kind == "image/jpeg":
            return _jpeg_size(data)
    except struct.error:  # the header is cut short
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20:21] == b"\x2f" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The size in the first start-of-frame segment, walking the segments."""
    return _jpeg_size_at(lambda at, n: data[at : at + n])


def _jpeg_size_at(read: Callable[[int, int], bytes]) -> tuple[int, int] | None:
    """:func:`_jpeg_size` through ``read(at, n)``: the ``n`` bytes at ``at`` (or fewer)."""
    at = _jpeg_frame_at(read)
    if at is None:
        return None
    seen = read(at, 9)
    if len(seen) < 9:  # the file ends inside its size
        return None
    height, width = struct.unpack(">HH", seen[5:9])
    return width, height


#: How many bytes are read at a time between a JPEG's segments looking for the next
#: marker (a writer's stray bytes; libjpeg skips them with a warning).
JPEG_JUNK = 64


def _jpeg_frame_at(read: Callable[[int, int], bytes]) -> int | None:
    """Where a JPEG's first start-of-frame segment starts, walking the segments.

    Only each segment's marker and length are read, so a data URL's JPEG is walked
    without decoding the metadata between them.
    """
    i = 2
    while len(seen := read(i, 4)) >= 4:
        if seen[0] != 0xFF:  # bytes that are no marker: skipped, as libjpeg does
            window = read(i, JPEG_JUNK)
            skip = window.find(b"\xff")
            if skip < 0 and len(window) < JPEG_JUNK:
                return None
            i += len(window) if skip < 0 else skip
            continue
        marker = seen[1]
        if marker == 0x00:  # FF 00: a stuffed byte among stray ones, no marker
            i += 2
            continue
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # standalone markers: no length
            i += 2
            continue
        if marker in _SOF:
            return i
        (length,) = struct.unpack(">H", seen[2:4])
        i += 2 + length
    return None


def data_url(data: bytes) -> str:
    r"""``data`` as a data URL, its MIME type from its signature.

    Bytes of no known image format get ``application/octet-stream`` (a row carrying
    one fails with an :class:`~polars_azurechat.errors.InputError` before any request).

    Examples
    --------
    >>> data_url(b"GIF89a\x01\x00\x01\x00")
    'data:image/gif;base64,R0lGODlhAQABAA=='
    """
    mime = image_type(data) or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


#: How much of a data URL's base64 is decoded to read its format and size: 48 bytes,
#: past a PNG's, GIF's or WEBP's header; a JPEG's segments are then walked (each one's
#: marker and length decoded where it lies, see :func:`_jpeg_size_at`).
HEAD_CHARS = 64


def decode_data_url(url: str) -> bytes:
    """The bytes of a base64 ``data:`` URL.

    Raises
    ------
    ValueError
        Not a base64 data URL, or its base64 is broken.

    Examples
    --------
    >>> decode_data_url("data:image/gif;base64,R0lGODlh")
    b'GIF89a'
    """
    return _b64(_payload(url))


def _payload(url: str) -> str:
    return url[_start(url) :]


def _start(url: str) -> int:
    """Where a data URL's base64 starts (the URL itself is not copied: 67 KB a photo)."""
    comma = url.find(",", 0, 256)
    head = url[: max(comma, 0)].lower()  # a scheme and its parameters: any case
    if comma < 0 or not head.startswith("data:") or not head.endswith(";base64"):
        msg = "a data URL must read data:<type>;base64,<bytes>"
        raise ValueError(msg)
    return comma + 1


def _b64(payload: str) -> bytes:
    try:
        return binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        msg = "its base64 is broken"
        raise ValueError(msg) from None


def _b64_at(text: str, at: int, n: int, start: int = 0) -> bytes:
    """The ``n`` decoded bytes at byte ``at`` of the base64 from ``text[start]`` on.

    Only the base64 quads that hold them are decoded (4 characters a 3 bytes); fewer
    bytes at the end.
    """
    first = at // 3
    last = -(-(at + n) // 3)
    quads = _b64(text[start + 4 * first : start + 4 * last])
    return quads[at - 3 * first : at - 3 * first + n]


def peek_data_url(url: str) -> tuple[bytes, int, tuple[int, int] | None]:
    r"""A base64 ``data:`` URL's first bytes, its size in bytes, and the image's size.

    Only the first :data:`HEAD_CHARS` characters are decoded (and checked), and for
    a JPEG its segments' markers and lengths: a 50 KB photo costs a few short decodes,
    not a whole one (the rest of the base64 is checked by Azure, which refuses that
    row alone).

    Raises
    ------
    ValueError
        Not a base64 data URL, or its base64 is broken where it is read.

    Examples
    --------
    >>> peek_data_url("data:image/gif;base64,R0lGODlhAwACAA==")
    (b'GIF89a\x03\x00\x02\x00', 10, (3, 2))
    """
    start = _start(url)
    n = len(url) - start
    if n <= HEAD_CHARS:
        data = _b64(url[start:])
        return data, len(data), image_size(data)
    if n % 4:
        msg = "its base64 is broken"
        raise ValueError(msg)
    head = _b64(url[start : start + HEAD_CHARS])
    nbytes = n // 4 * 3 - (url[-2:].count("="))
    if image_type(head) == "image/jpeg":
        size = _jpeg_size_at(lambda at, k: _b64_at(url, at, k, start))
    else:
        size = image_size(head)
    return head, nbytes, size


def _decoded(url: str, start: int) -> bytes | None:
    """The bytes of ``url[start:]``, ``None`` when it is not strict base64.

    Strict: whole quads of the alphabet, then at most two ``=``. All of it is checked:
    Azure decodes the whole image, and a row it would refuse fails here, before any
    request. pybase64 (SIMD) decodes a 50 KB photo's in 8 us; the standard library's
    strict decoder took 160 us, a check by ``bytes.translate`` 28 us.
    """
    import pybase64  # here, not at import: only a data URL needs it

    try:
        return pybase64.b64decode(url[start:], validate=True)
    except (binascii.Error, ValueError):  # ValueError: a character that is not ASCII
        return None


#: Most PNG chunks walked to find its end (libpng writes 8 KB of pixels a chunk: a
#: 20 MB image holds about 2,600); past them a PNG is not judged.
MAX_PNG_CHUNKS = 4096


def _png_needs(data: bytes) -> int | None:
    """At least the bytes a PNG's chunks give, when past its own; ``None``: all here.

    The chunks are walked by their lengths to IEND (data after it is ignored, as
    decoders do). Decoders need no IEND either: bytes that end inside it, or between
    two chunks, are whole when the pixels' zlib stream (the IDAT chunks) is whole.
    """
    at, pixels = 8, list[tuple[int, int]]()
    for _ in range(MAX_PNG_CHUNKS):
        head = data[at : at + 8]
        if len(head) < 8:  # the bytes end between chunks, or in a chunk's header
            whole = _IEND.startswith(head) and _stream_ends(data, pixels)
            return None if whole else max(at + 12, len(data) + 1)
        end = at + 12 + int.from_bytes(head[:4], "big")
        if head[4:] == b"IEND":
            return None
        if end > len(data):
            return end
        if head[4:] == b"IDAT":
            pixels.append((at + 8, end - 4))
        at = end
    return None


def _stream_ends(data: bytes, spans: list[tuple[int, int]]) -> bool:
    """Whether the zlib stream in ``data``'s ``spans`` ends there.

    It is inflated a MB at a time, the output dropped. A stream that is not zlib is
    damage, not a cut: ``True``.
    """
    stream = zlib.decompressobj()
    view = memoryview(data)
    try:
        for start, stop in spans:
            rest = view[start:stop]
            while rest and not stream.eof:
                stream.decompress(rest, 1 << 20)
                rest = memoryview(stream.unconsumed_tail)
    except zlib.error:
        return True
    return stream.eof


#: The header of a PNG's last chunk (its length, 0, then its type).
_IEND = b"\x00\x00\x00\x00IEND"


def _gif_blocks(data: bytes, at: int) -> int:
    """Past the data sub-blocks at ``at`` (each its length, then its bytes; 0 ends).

    Past ``len(data)`` when the bytes end first.
    """
    while at < len(data):
        size = data[at]
        at += 1 + size
        if size == 0:
            return at
    return len(data) + 1


def _gif_image_ends(data: bytes, at: int) -> bool:
    """Whether an image's data sub-blocks from ``at`` lie whole in ``data``.

    Decoders need no last terminator: bytes that end between two sub-blocks are whole
    when the last one is short (an encoder fills every sub-block but the last).
    """
    size, blocks = 0, 0
    while at < len(data):
        size = data[at]
        if size == 0:
            return blocks > 0
        at += 1 + size
        blocks += 1
    return at == len(data) and 0 < size < 255


def _gif_table(flags: int) -> int:
    """The bytes of the colour table a GIF's flags byte announces."""
    return 3 << (flags & 7) + 1 if flags & 0x80 else 0


def _gif_whole(data: bytes) -> bool:
    """Whether a GIF's bytes reach the end of its first image (or its trailer).

    Its blocks are walked: extensions and the first image's descriptor, colour table
    and data sub-blocks (:func:`_gif_image_ends`; decoders need no trailer). Later
    frames are not judged; a byte that starts no block ends the walk (damage that is
    not a cut is Azure's to judge).
    """
    at = 13 + _gif_table(data[10])
    while at < len(data) and data[at] in (0x21, 0x2C):
        if data[at] == 0x2C:  # past its descriptor, colour table and LZW code size
            image = at + 10 + 1
            return image <= len(data) and _gif_image_ends(
                data, image + _gif_table(data[at + 9])
            )
        at = _gif_blocks(data, at + 2)  # an extension: its introducer, its label
    return at < len(data)  # the trailer, or a byte that starts no block


def _cut_short(data: bytes) -> str | None:
    """Why image bytes that read as an image end too soon, or ``None``.

    A PNG's chunks or a WEBP's RIFF header give its length; a JPEG must hold its end
    marker (FF D9) after its frame header (entropy-coded data never holds one); a
    GIF's walk must reach the end of its first image.

    Examples
    --------
    >>> riff = b"RIFF" + (100).to_bytes(4, "little") + b"WEBPVP8L"
    >>> _cut_short(riff + bytes(44))
    'is a WEBP cut short: 60 bytes of the 108 its RIFF header gives (a partial download?)'
    """
    kind = image_type(data)
    n = len(data)
    if kind == "image/jpeg":
        frame = _jpeg_frame_at(lambda at, k: data[at : at + k])
        if frame is None or data.rfind(b"\xff\xd9", frame) >= 0:  # from the end
            return None
        return (
            f"is a JPEG cut short: its {n:,} bytes hold no end marker (FF D9) after "
            "its frame header (a partial download?)"
        )
    if kind == "image/gif":
        if n >= 13 and _gif_whole(data):
            return None
        return (
            f"is a GIF cut short: its {n:,} bytes end inside its first image "
            "(a partial download?)"
        )
    if kind == "image/png":
        need, given = _png_needs(data), "of at least the {:,} its chunks give"
    elif kind == "image/webp":
        need = 8 + int.from_bytes(data[4:8], "little")
        given = "of the {:,} its RIFF header gives"
    else:
        return None
    if need is None or need <= n:
        return None
    return (
        f"is a {kind[6:].upper()} cut short: {n:,} bytes {given.format(need)} "
        "(a partial download?)"
    )


def _shown(url: str) -> str:
    """The start of a URL for an error, without a user name or password in it."""
    scheme, sep, rest = url.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        rest = authority.rpartition("@")[2] + slash + path
    return (scheme + sep + rest)[:30]


def _web_problem(url: str) -> str | None:
    """What keeps an ``http(s)://`` URL from being fetched by Azure: no host."""
    host = url.partition("://")[2]
    for end in "/?#":
        host = host.partition(end)[0]
    if not host.rpartition("@")[2]:
        return f"has URL {_shown(url)!r}: no host"
    return None


def url_problem(url: object) -> str | None:
    """What keeps an image URL from being sent, or ``None``.

    An ``https://`` (or ``http://``) URL is taken as it is (Azure fetches it); a data
    URL must carry strict base64 (all of it is checked) of PNG, JPEG, GIF or WEBP bytes
    of at most 20 MB.

    Examples
    --------
    >>> url_problem("https://example.com/cat.png") is None
    True
    >>> url_problem("data:image/png;base64,JVBERi0=")
    'is not a PNG, JPEG, GIF or WEBP image (its bytes start with %PDF-)'
    >>> url_problem("data:image/gif;base64,R0lGODlhAwACAA=!")
    'has a data URL that cannot be read: its base64 is broken'
    >>> url_problem("data:image/gif;base64,R0lGODlhAwA=")  # 8 bytes: no height
    'is a GIF whose header gives no size (cut short or damaged)'
    """
    if not isinstance(url, str):
        return "has no URL" if url is None else "has a URL that is not a string"
    scheme = url[:8].lower()
    if scheme.startswith(("https://", "http://")):
        return _web_problem(url)
    if not scheme.startswith("data:"):
        return f"has URL {_shown(url)!r}: not an http(s):// or a data: URL"
    try:
        data, nbytes, size = peek_data_url(url)
    except ValueError as exc:
        return f"has a data URL that cannot be read: {exc}"
    start = _start(url)  # (peek_data_url checked that it is one)
    whole = _decoded(url, start)
    if whole is None:
        return "has a data URL that cannot be read: its base64 is broken"
    if not data:
        return "is empty (a data URL of no bytes)"
    if image_type(data) is None:
        text = data[:8].decode("latin-1")
        shown = text if text.isprintable() else f"0x{data[:8].hex()}"
        return f"is not a PNG, JPEG, GIF or WEBP image (its bytes start with {shown})"
    if size is None:  # all its bytes are here: a header that ends early, or damaged
        kind = str(image_type(data)).partition("/")[2].upper()
        return f"is a {kind} whose header gives no size (cut short or damaged)"
    if min(size) == 0:
        return f"is {size[0]}x{size[1]} pixels: Azure refuses an image with no pixels"
    cut = _cut_short(whole)
    if cut is not None:
        return cut
    head = url[5 : start - 1].lower()
    mime = head.partition(";")[0]
    if not mime.startswith("image/"):
        return f"has a data URL of type {mime[:40]!r}: Azure takes image/* types only"
    if head != mime + ";base64":  # Azure reads data:<type>;base64, and no parameter
        return (
            f"has a data URL with parameters ({head[len(mime) + 1 : -7][:40]!r}): "
            "Azure takes data:<type>;base64,<bytes> only"
        )
    if nbytes > MAX_IMAGE_BYTES:
        return f"is {nbytes:,} bytes, over Azure's {MAX_IMAGE_BYTES:,} (20 MB)"
    return None
