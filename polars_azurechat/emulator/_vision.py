"""Images in chat bodies, as the emulator reads them (never with the client's code).

A message's ``content`` may be a list of parts: ``{"type": "text", "text": ...}`` and
``{"type": "image_url", "image_url": {"url": ..., "detail": ...}}``. The emulator
checks them as Azure does on arrival (:func:`parts_problem`: Azure's 400s), reads a
data URL's image (its format and size, from the header, see :func:`picture`) and
counts it by the tile rule (``emulator/_tokens.py``). An ``https://`` image is never
fetched: its size is unknown here (:data:`URL_SIZE` is assumed).
"""

from __future__ import annotations

import binascii
import dataclasses
import re
import threading
import zlib
from collections.abc import Mapping
from typing import Any

__all__ = [
    "URL_SIZE",
    "Picture",
    "parts_problem",
    "picture",
    "pictures",
    "reads_images",
    "text_of",
    "vision_problem",
]

#: Azure's most images in one request (the messages' together).
MAX_IMAGES = 50
#: The size the emulator assumes for an ``https://`` image it does not fetch.
URL_SIZE = (1024, 1024)
#: Azure's message for bytes that are not an image it takes.
UNSUPPORTED = (
    "You uploaded an unsupported image. Please make sure your image has of one the "
    "following formats: ['png', 'jpeg', 'gif', 'webp']."
)
#: Azure's (and OpenAI's) message for an image sent to a model that reads text only.
NOT_VISION = "Invalid content type. image_url is only supported by certain models."
#: Models that read text only: o1-mini, o1-preview, o3-mini, GPT-3.5, GPT-4 (0613).
_TEXT_ONLY = re.compile(
    r"(o1-mini|o1-preview|o3-mini|gpt-35|gpt-3\.5)|gpt-4(-32k)?(-\d{4})?$",
    re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True)
class Picture:
    """One image of a request: its format (``"url"`` when fetched by URL), size, detail."""

    kind: str
    width: int
    height: int
    detail: str

    def label(self) -> str:
        """How an answer names it: ``png 64x32``, or ``url``."""
        return (
            "url" if self.kind == "url" else f"{self.kind} {self.width}x{self.height}"
        )


#: The base64 alphabet (``=`` is padding, at the end only).
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


class _Decoded:
    """The bytes of a checked base64 string, decoded where they are read.

    ``raw[start:]`` is the base64 (ASCII bytes), ``pad`` its ``=`` count. Indexing and
    slicing (no step) decode only the 4-character groups that hold the bytes asked
    for: a JPEG's segments are walked without decoding what lies between.
    """

    def __init__(self, raw: bytes, start: int, pad: int) -> None:
        self._raw, self._start = raw, start
        self._len = (len(raw) - start) // 4 * 3 - pad

    def __len__(self) -> int:
        return self._len

    def _span(self, start: int, stop: int) -> bytes:
        start, stop = max(start, 0), min(stop, self._len)
        if start >= stop:
            return b""
        first, last = start // 3, (stop + 2) // 3
        at = self._start
        data = binascii.a2b_base64(self._raw[at + 4 * first : at + 4 * last])
        return data[start - 3 * first : stop - 3 * first]

    def __getitem__(self, at: int | slice) -> Any:
        if isinstance(at, slice):
            return self._span(at.start or 0, self._len if at.stop is None else at.stop)
        if not 0 <= at < self._len:
            raise IndexError(at)
        return self._span(at, at + 1)[0]


def _base64(text: str, start: int = 0) -> _Decoded | None:
    """``text[start:]`` as base64 bytes, or ``None`` when it is not strict base64.

    The whole string is checked, as Azure decodes the whole image: whole groups of 4,
    the alphabet's characters only, at most two ``=`` at the end. A photo's data URL
    is 67 KB: it is encoded once and checked in place (what the alphabet leaves of it
    must be what it leaves of the header, then the padding), never copied to a slice.
    """
    n = len(text) - start
    if n % 4 or not text.isascii() or text.endswith("===", start):
        return None
    pad = 2 if text.endswith("==", start) else 1 if text.endswith("=", start) else 0
    raw = text.encode("ascii")
    head = raw[:start].translate(None, _ALPHABET)
    if raw.translate(None, _ALPHABET) != head + b"=" * pad:
        return None
    return _Decoded(raw, start, pad)


Bytes = bytes | _Decoded


def _be(data: Bytes, at: int, n: int) -> int:
    return int.from_bytes(data[at : at + n], "big")


def _le(data: Bytes, at: int, n: int) -> int:
    return int.from_bytes(data[at : at + n], "little")


def _jpeg_frame(data: Bytes) -> int | None:
    """Where a JPEG's frame header (its first SOF segment) starts."""
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:  # a stray byte between segments: libjpeg skips it
            at += 1
            continue
        marker = data[at + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return at
        if marker in (0x00, 0xFF):  # a stuffed FF among stray bytes; a fill byte
            at += 1 if marker else 2
        elif 0xD0 <= marker <= 0xD8 or marker == 0x01:  # standalone: no length
            at += 2
        else:
            at += 2 + _be(data, at + 2, 2)
    return None


def _jpeg(data: Bytes) -> tuple[int, int] | None:
    """A JPEG's size, ``None`` when its bytes end before it or before its end marker.

    A decoder reads a JPEG's scans to its end marker (FF D9); the last one in the
    file must come after the frame header (metadata before it may hold a thumbnail's).
    """
    at = _jpeg_frame(data)
    if at is None or bytes(data[at:]).rfind(b"\xff\xd9") < 0:
        return None
    return _be(data, at + 7, 2), _be(data, at + 5, 2)


def _gif_ends(data: Bytes) -> bool:
    """Whether a GIF's bytes hold its first image whole, or reach its trailer.

    After the screen descriptor and its colour table come blocks: an extension
    (``!``, a label, data sub-blocks) or an image (``,``, a descriptor, a colour table,
    the LZW code size, data sub-blocks); sub-blocks are a length byte and that many
    bytes, a zero ending them. Later frames are not read.
    """
    if len(data) < 13:
        return False
    blocks = bytes(data[:])
    flags = blocks[10]
    at = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    while at < len(blocks):
        kind = blocks[at]
        if kind == 0x2C:
            if at + 10 > len(blocks):
                return False
            flags = blocks[at + 9]
            at += 11 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
        elif kind == 0x21:
            at += 2
        else:  # the trailer, or damage that is not a cut
            return True
        first, last = at, 0
        while at < len(blocks) and blocks[at]:
            last = blocks[at]
            at += last + 1
        if kind == 0x2C:  # whole: terminated, or ending after a short last sub-block
            ended = at < len(blocks) or (at == len(blocks) and last < 255)
            return first < at and ended
        if at >= len(blocks):
            return False
        at += 1
    return False


def _webp(data: Bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return _le(data, 24, 3) + 1, _le(data, 27, 3) + 1
    if chunk == b"VP8L" and len(data) >= 25:
        bits = _le(data, 21, 4)
        return (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30:
        return _le(data, 26, 2) & 0x3FFF, _le(data, 28, 2) & 0x3FFF
    return None


def _read(data: Bytes) -> tuple[str, tuple[int, int] | None] | None:
    """``(format, size)`` of image bytes, ``None`` when they are no image Azure takes.

    The size is ``None`` when the bytes end before it, or before the end a PNG's
    chunks or a WEBP's RIFF length give, before a JPEG's end marker or inside a GIF's
    first image (a file cut short: nothing Azure decodes).
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        whole = len(data) >= 24 and _png_ends(data)
        return "png", (_be(data, 16, 4), _be(data, 20, 4)) if whole else None
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg", _jpeg(data)
    if data[:4] == b"GIF8":
        return "gif", (_le(data, 6, 2), _le(data, 8, 2)) if _gif_ends(data) else None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        whole = _le(data, 4, 4) + 8 <= len(data)  # RIFF's length: all but 8 bytes
        return "webp", _webp(data) if whole else None
    return None


def _png_ends(data: Bytes) -> bool:
    """Whether a PNG's chunks, hopped by their lengths, lie whole within its bytes.

    A decoder stops at IEND, and needs none once its pixels' zlib stream (the IDAT
    chunks' data, joined) has ended: the bytes may then end inside IEND or between
    two chunks (not inside another chunk).
    """
    at, pixels = 8, []
    while at + 8 <= len(data):
        kind = bytes(data[at + 4 : at + 8])
        if kind == b"IEND":
            return True
        size = _be(data, at, 4)
        if kind == b"IDAT":
            pixels.append((at + 8, at + 8 + size))
        at += 12 + size
    rest = bytes(data[at:]) if at < len(data) else b""
    if at > len(data) or not b"\x00\x00\x00\x00IEND".startswith(rest) or not pixels:
        return False
    inflate, stream = (
        zlib.decompressobj(),
        b"".join(bytes(data[a:b]) for a, b in pixels),
    )
    try:
        while stream and not inflate.eof:  # a MB of pixels at a time, dropped
            inflate.decompress(stream, 1 << 20)
            stream = inflate.unconsumed_tail
    except zlib.error:  # damage, not a cut: Azure's decoder judges it otherwise
        return True
    return inflate.eof


def picture(url: str, detail: str) -> Picture | None:
    """The image of a URL (``None``: a data URL whose bytes are not an image).

    Examples
    --------
    >>> picture("https://example.com/cat.png", "low")
    Picture(kind='url', width=1024, height=1024, detail='low')
    >>> picture("data:image/gif;base64,R0lGODlhAwACAAAAADs=", "auto").label()
    'gif 3x2'
    >>> picture("data:image/png;base64,JVBERi0=", "auto") is None
    True
    """
    if not _is_data(url):
        return Picture("url", *URL_SIZE, detail)
    read = _read_url(url)
    if read is None:
        return None
    kind, size = read
    width, height = size if size is not None and min(size) > 0 else URL_SIZE
    return Picture(kind, width, height, detail)


#: Azure's largest input image, in bytes.
MAX_IMAGE_BYTES = 20 * 1024 * 1024


def _data_url_problem(url: str, at: str) -> tuple[str, str, str] | None:
    """Azure's ``(message, param, code)`` for a data URL it refuses, or ``None``.

    An image MIME type and ``;base64`` (``data:image/png;base64,...``), bytes of more
    than none and at most 20 MB, of a format Azure reads.
    """
    comma = url.find(",")
    head = url[5 : max(comma, 5)].lower()
    mime, _, encoding = head.partition(";")
    if comma < 0 or not mime.startswith("image/") or encoding != "base64":
        got = f"unsupported MIME type '{mime}'" if mime else "no MIME type"
        return (
            f"Invalid '{at}'. Expected a base64-encoded data URL with an image MIME "
            f"type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got "
            + (got if encoding == "base64" else "a value that is not base64"),
            at,
            "invalid_value",
        )
    pad = 2 if url.endswith("==") else 1 if url.endswith("=") else 0  # (no copy)
    size = (len(url) - comma - 1) // 4 * 3 - pad
    if not 0 < size <= MAX_IMAGE_BYTES:
        return (
            f"The image size must be greater than zero and cannot exceed "
            f"{MAX_IMAGE_BYTES} bytes.",
            at,
            "invalid_value",
        )
    if picture(url, "auto") is None:
        return UNSUPPORTED, at, "invalid_image_format"
    read = _read_url(url)
    if read is not None and (read[1] is None or min(read[1]) == 0):
        # no pixels, or a header cut short: nothing Azure can decode
        return "Invalid image.", at, "invalid_image"
    return None


def reads_images(model: str) -> bool:
    """Whether a deployment of ``model`` takes image parts (Azure's vision models).

    Examples
    --------
    >>> [reads_images(m) for m in ("gpt-4o-mini", "o3-mini", "o3", "gpt-4", "gpt-4.1")]
    [True, False, True, False, True]
    """
    return _TEXT_ONLY.match(model) is None


def vision_problem(body: Mapping[str, Any], model: str) -> tuple[str, str] | None:
    """Azure's ``(message, param)`` for an image sent to a text-only model, or ``None``.

    The 400 has no code; its ``param`` is the first image part's ``type``.

    Examples
    --------
    >>> image = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
    >>> body = {"messages": [{"role": "user", "content": [image]}]}
    >>> vision_problem(body, "o3-mini")[1], vision_problem(body, "o4-mini")
    ('messages[0].content[0].type', None)
    """
    if reads_images(model):
        return None
    for i, message in enumerate(body["messages"]):
        content = message.get("content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if part.get("type") == "image_url":
                return NOT_VISION, f"messages[{i}].content[{j}].type"
    return None


def _is_data(url: str) -> bool:
    """A ``data:`` URL (a scheme is read in any case)."""
    return url[:5].lower() == "data:"


Read = tuple[str, tuple[int, int] | None] | None

#: The last data URLs read, by identity: ``id(url) -> (url, read)`` (the URL is held,
#: so its id is not taken by another string while it is here).
_READ: dict[int, tuple[str, Read]] = {}
_READ_LOCK = threading.Lock()
_READ_KEEP = 64


def _read_url(url: str) -> Read:
    """A data URL's ``(format, size)``, read once a request.

    Checking, counting and answering a request ask again for the same URL (the same
    string object): it is looked up by identity, as hashing a photo's 67 KB of base64
    cost more than reading its header. Its base64 is checked whole (:func:`_base64`)
    and decoded where the header is read.
    """
    with _READ_LOCK:
        hit = _READ.get(id(url))
    if hit is not None and hit[0] is url:
        return hit[1]
    data = _base64(url, url.find(",") + 1)  # no comma: all of it, not base64
    read = None if data is None else _read(data)
    with _READ_LOCK:
        _READ[id(url)] = (url, read)
        while len(_READ) > _READ_KEEP:
            del _READ[next(iter(_READ))]
    return read


def text_of(content: Any) -> str:
    """A content's text: the string, or its text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return str(content)
    return "\n".join(
        str(p.get("text"))
        for p in content
        if isinstance(p, Mapping) and p.get("type") == "text"
    )


def pictures(content: Any) -> list[Picture]:
    """The images of a content (parts that are not readable images are left out)."""
    if not isinstance(content, list):
        return []
    out = []
    for part in content:
        if not isinstance(part, Mapping) or part.get("type") != "image_url":
            continue
        image = part.get("image_url")
        if isinstance(image, Mapping) and isinstance(image.get("url"), str):
            seen = picture(image["url"], str(image.get("detail") or "auto"))
            if seen is not None:
                out.append(seen)
    return out


Problem = tuple[str, str, str]


def parts_problem(
    where: str, role: str, content: list[Any]
) -> tuple[int, Problem | None]:
    """The images of a list of parts, and Azure's 400 for it: ``(message, param, code)``.

    The caller sums the images of every message against :data:`MAX_IMAGES`.

    Examples
    --------
    >>> parts_problem("messages[0]", "user", [{"type": "text", "text": "hi"}])
    (0, None)
    >>> parts_problem(
    ...     "messages[0]",
    ...     "user",
    ...     [
    ...         {
    ...             "type": "image_url",
    ...             "image_url": {"url": "data:image/png;base64,JVBERi0="},
    ...         }
    ...     ],
    ... )[1][2]
    'invalid_image_format'
    """
    images = 0
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                return images, (
                    f"Invalid type for '{at}.text': expected a string.",
                    at,
                    "invalid_type",
                )
            continue
        if kind != "image_url":
            return images, (
                f"Invalid value: '{str(kind)[:40]}'. Supported values are: 'text' and "
                "'image_url'.",
                f"{at}.type",
                "invalid_value",
            )
        if role != "user":
            return images, (
                f"Image URLs are only allowed for messages with role 'user', but this "
                f"message with role '{role}' contains an image URL.",
                at,
                "invalid_value",
            )
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, Mapping) else None
        if not isinstance(url, str):
            return images, (
                f"Missing required parameter: '{at}.image_url.url'.",
                at,
                "missing_required_parameter",
            )
        detail = image.get("detail") if isinstance(image, Mapping) else None
        if detail not in (None, "auto", "low", "high"):
            return images, (
                f"Invalid value: '{str(detail)[:40]}'. Supported values are: 'auto', "
                "'low' and 'high'.",
                f"{at}.image_url.detail",
                "invalid_value",
            )
        if not url[:8].lower().startswith(("https://", "http://", "data:")):
            return images, (
                "Invalid image URL.",
                f"{at}.image_url.url",
                "invalid_image_url",
            )
        if _is_data(url):
            problem = _data_url_problem(url, f"{at}.image_url.url")
            if problem is not None:
                return images, problem
        images += 1
    return images, None
