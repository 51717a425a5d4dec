"""Build chat messages per row with Polars expressions.

:func:`messages` turns a system prompt, few-shot examples and a user prompt (plain
strings or expressions over a row's columns) into the column the engine consumes:
``List(Struct{role: String, content: String})``, one list per row. It is a pure Polars
expression (no Python per row), so it runs eagerly, lazily and in the streaming engine.

With ``images=``, every message's content is a list of parts instead
(:data:`PARTS_MESSAGES_DTYPE`): the user message's text part, then its images. Binary
images become data URLs (their MIME type from the bytes' signature), one Python step
per chunk of rows.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, Final

import polars as pl

from polars_azurechat._images import DETAILS

__all__ = ["MESSAGES_DTYPE", "PARTS_DTYPE", "PARTS_MESSAGES_DTYPE", "messages"]

#: The dtype :func:`messages` returns (the one ``chat.complete`` takes).
MESSAGES_DTYPE: Final = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
#: An image part's ``image_url``.
IMAGE_URL_DTYPE: Final = pl.Struct({"url": pl.String, "detail": pl.String})
#: A message's content as a list of parts (text and images).
PARTS_DTYPE: Final = pl.List(
    pl.Struct({"type": pl.String, "text": pl.String, "image_url": IMAGE_URL_DTYPE})
)
#: What :func:`messages` returns with ``images=``.
PARTS_MESSAGES_DTYPE: Final = pl.List(
    pl.Struct({"role": pl.String, "content": PARTS_DTYPE})
)

Part = str | pl.Expr


def _part(value: object, name: str, *, allowed: str = "a str or a pl.Expr") -> pl.Expr:
    """``value`` as a String expression; ``TypeError`` naming the argument otherwise."""
    if isinstance(value, str):
        return pl.lit(value, dtype=pl.String)
    if isinstance(value, pl.Expr):
        # its dtype is known when the frame is computed: checked then, in one call a
        # chunk (a List would fail Polars' cast, a Struct would be sent as "{...}")
        return value.map_batches(
            functools.partial(_as_text, name=name),
            return_dtype=pl.String,
            is_elementwise=True,
        )
    msg = f"messages(): {name} must be {allowed}, not {type(value).__name__}"
    raise TypeError(msg)


def _as_text(s: pl.Series, *, name: str) -> pl.Series:
    """A chunk of a message's expression as String; ``TypeError`` for a nested dtype."""
    if s.dtype.is_nested() or s.dtype == pl.Object:
        hint = (
            "; for several texts a row, join them first (.list.join)"
            if isinstance(s.dtype, pl.List | pl.Array)
            else ""
        )
        msg = (
            f"messages(): {name} must give text (String, or a number, a date or a "
            f"category, cast to String), not {s.dtype}{hint}"
        )
        raise TypeError(msg)
    return s.cast(pl.String)


def _optional_part(value: object, name: str) -> pl.Expr | None:
    if value is None:
        return None
    return _part(value, name, allowed="a str, a pl.Expr or None")


def _message(role: str, content: pl.Expr) -> pl.Expr:
    return pl.struct(role=pl.lit(role, dtype=pl.String), content=content)


def _text_part(text: pl.Expr) -> pl.Expr:
    """``text`` as a list of one text part (null where ``text`` is null)."""
    part = pl.struct(
        type=pl.lit("text", dtype=pl.String),
        text=text,
        image_url=pl.lit(None, dtype=IMAGE_URL_DTYPE),
    )
    return pl.when(text.is_not_null()).then(pl.concat_list([part]))


def _image_parts(detail: str) -> Any:
    """The function turning a chunk of an image column into lists of image parts."""

    def parts(s: pl.Series) -> pl.Series:
        dtype = s.dtype
        inner = dtype.inner if isinstance(dtype, pl.List) else dtype
        if inner not in (pl.String, pl.Binary, pl.Null):
            msg = (
                "messages(): images must be a String (URLs), Binary (image bytes) or "
                f"List of either column, not {dtype}"
            )
            raise TypeError(msg)
        return _image_parts_of(s, detail)

    return parts


def _has_image(s: pl.Series) -> pl.Series:
    """Whether each row of an image column has an image (a list: one not null)."""
    if isinstance(s.dtype, pl.List):
        return s.list.drop_nulls().list.len().fill_null(0) > 0
    return s.is_not_null()


def _image_part(image: pl.Expr, binary: bool, detail: str) -> pl.Expr:
    """The image part of each value of ``image``: a URL, or bytes as a data URL.

    Bytes become data URLs in Polars: the MIME type from the signature (as
    :func:`~polars_azurechat._images.image_type` reads it), the base64 by
    ``bin.encode``; bytes of no image format get ``application/octet-stream``, and
    their row fails before any request.
    """
    if binary:
        sig = image.bin
        mime = (
            pl.when(sig.starts_with(b"\x89PNG\r\n\x1a\n"))
            .then(pl.lit("image/png"))
            .when(sig.starts_with(b"\xff\xd8\xff"))
            .then(pl.lit("image/jpeg"))
            .when(sig.starts_with(b"GIF87a") | sig.starts_with(b"GIF89a"))
            .then(pl.lit("image/gif"))
            .when(sig.starts_with(b"RIFF") & (sig.slice(8, 4) == b"WEBP"))
            .then(pl.lit("image/webp"))
            .otherwise(pl.lit("application/octet-stream"))
        )
        url = pl.concat_str(
            pl.lit("data:"), mime, pl.lit(";base64,"), sig.encode("base64")
        )
    else:
        url = image.cast(pl.String)
    return pl.struct(
        type=pl.lit("image_url", dtype=pl.String),
        text=pl.lit(None, dtype=pl.String),
        image_url=pl.struct(url=url, detail=pl.lit(detail, dtype=pl.String)),
    )


def _image_parts_of(s: pl.Series, detail: str) -> pl.Series:
    """A column of images (one a row, or a list a row) as lists of image parts.

    No Python loop over the rows: one image a row is a list of one part (none if
    null); a list keeps its images in order, its nulls left out (a null list: none).
    """
    col = pl.col(s.name)
    empty = pl.lit([], dtype=PARTS_DTYPE)
    if isinstance(s.dtype, pl.List):
        binary = s.dtype.inner == pl.Binary
        listed = col.list.drop_nulls().list.eval(
            _image_part(pl.element(), binary, detail)
        )
        out = pl.when(col.is_not_null()).then(listed).otherwise(empty)
    else:
        part = _image_part(col, s.dtype == pl.Binary, detail)
        out = pl.when(col.is_not_null()).then(pl.concat_list([part])).otherwise(empty)
    return s.to_frame().select(out.cast(PARTS_DTYPE).alias(s.name)).to_series()


def messages(
    *,
    system: Part | None = None,
    user: Part,
    examples: Iterable[tuple[Part, Part]] = (),
    assistant: Part | None = None,
    images: pl.Expr | None = None,
    detail: str = "auto",
) -> pl.Expr:
    """An expression giving each row its chat messages.

    The list of a row is: the system message (if given); for each ``(input, output)``
    of ``examples``, a user message then an assistant message (few-shot examples); the
    user message; the assistant message (if given: the start of the answer, or the
    last turn of a conversation).

    Parameters
    ----------
    system
        The system message: a ``str`` (the same for every row) or a ``pl.Expr``.
    user
        The user message, usually an expression over the row
        (``pl.format("Classify: {}", pl.col("text"))``); a ``str`` is the same for
        every row.
    examples
        ``(input, output)`` pairs, each part a ``str`` or a ``pl.Expr``.
    assistant
        A last assistant message, a ``str`` or a ``pl.Expr``.
    images
        Images for the user message, a ``pl.Expr`` of one of: String (an
        ``https://`` URL, or a ``data:`` URL), Binary (image bytes, sent as a data URL,
        the MIME type from their signature: PNG, JPEG, GIF or WEBP), or a List of
        either (several images a row). A null image, or a null in a list, is left out.
        Bytes of another format, or more images than Azure takes in a request (50),
        fail that row alone with an ``InputError``, before any request.
    detail
        Azure's ``detail`` for every image: ``"auto"``, ``"low"`` (85 tokens an
        image) or ``"high"``.

    Returns
    -------
    pl.Expr
        Of dtype ``List(Struct{role: String, content: String})``, named
        ``"messages"``. Expressions that are not String are cast to String (a
        List, Array or Struct is refused). With ``images``, of dtype
        :data:`PARTS_MESSAGES_DTYPE`: each content a list of parts,
        ``List(Struct{type, text, image_url: Struct{url, detail}})``; the user
        message's parts are its text, then its images.

        Nulls: a row whose user message is null gives a null list (the engine sends
        no request for a null row and leaves its answer null); with ``images``, a
        row whose user text is null but which has an image sends the image alone,
        and a row with neither is null. A null system or
        assistant message is left out of that row's list, and so is an example pair
        when either of its parts is null. With only ``str`` arguments the expression
        is a single literal list, broadcast over the frame by ``with_columns``.

    Raises
    ------
    TypeError
        An argument is not a ``str`` or a ``pl.Expr`` (``examples``: not pairs of
        them); the message names the argument. When the frame is computed: a
        message's expression gives a List, Array or Struct (the message names the
        argument and the dtype), or ``images`` is not of a dtype above.
    ValueError
        ``detail`` is not ``"auto"``, ``"low"`` or ``"high"``.

    Examples
    --------
    >>> import polars as pl
    >>> from polars_azurechat.prompts import messages
    >>> df = pl.DataFrame({"text": ["I love it", None, "Broken on arrival"]})
    >>> out = df.with_columns(
    ...     messages=messages(
    ...         system="Answer positive or negative.",
    ...         examples=[("Great value", "positive")],
    ...         user=pl.format("Review: {}", pl.col("text")),
    ...     )
    ... )
    >>> out.schema["messages"]
    List(Struct({'role': String, 'content': String}))
    >>> print(
    ...     out.select(
    ...         roles=pl.col("messages")
    ...         .list.eval(pl.element().struct.field("role"))
    ...         .list.join(","),
    ...         last=pl.col("messages").list.last().struct.field("content"),
    ...     )
    ... )
    shape: (3, 2)
    ┌────────────────────────────┬───────────────────────────┐
    │ roles                      ┆ last                      │
    │ ---                        ┆ ---                       │
    │ str                        ┆ str                       │
    ╞════════════════════════════╪═══════════════════════════╡
    │ system,user,assistant,user ┆ Review: I love it         │
    │ null                       ┆ null                      │
    │ system,user,assistant,user ┆ Review: Broken on arrival │
    └────────────────────────────┴───────────────────────────┘
    >>> out["messages"][2].to_list()[-1]
    {'role': 'user', 'content': 'Review: Broken on arrival'}

    Images: a Binary column of image bytes (here a 1x1 GIF) becomes data URLs.

    >>> gif = b"GIF89a" + bytes.fromhex(
    ...     "01000100800000ffffff0000002c00000000010001000002024401003b"
    ... )
    >>> photos = pl.DataFrame({"photo": [gif]})
    >>> msgs = photos.select(
    ...     messages(user="What is this?", images=pl.col("photo"), detail="low")
    ... )
    >>> parts = msgs["messages"][0][0]["content"]
    >>> [p["type"] for p in parts], parts[1]["image_url"]["url"][:30]
    (['text', 'image_url'], 'data:image/gif;base64,R0lGODlh')
    """
    if images is not None and not isinstance(images, pl.Expr):
        msg = f"messages(): images must be a pl.Expr, not {type(images).__name__}"
        raise TypeError(msg)
    if detail not in DETAILS:
        msg = f"messages(): detail must be one of {DETAILS}, not {detail!r}"
        raise ValueError(msg)
    user_expr = _part(user, "user")
    system_expr = _optional_part(system, "system")
    assistant_expr = _optional_part(assistant, "assistant")
    if isinstance(examples, str | bytes | pl.Expr) or not isinstance(
        examples, Iterable
    ):
        msg = (
            "messages(): examples must be an iterable of (input, output) pairs, not "
            f"{type(examples).__name__}"
        )
        raise TypeError(msg)

    parts: list[pl.Expr] = []
    # a message whose content may be null for some rows is dropped from those rows
    may_be_null = False
    message = _message
    if images is not None:

        def message(role: str, content: pl.Expr) -> pl.Expr:
            return _message(role, _text_part(content))

    if system_expr is not None:
        parts.append(message("system", system_expr))
        may_be_null |= isinstance(system, pl.Expr)
    for i, pair in enumerate(examples):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            msg = (
                f"messages(): examples[{i}] must be an (input, output) pair, not "
                f"{type(pair).__name__}"
                + (f" of length {len(pair)}" if isinstance(pair, tuple | list) else "")
            )
            raise TypeError(msg)
        ask = _part(pair[0], f"examples[{i}][0]")
        answer = _part(pair[1], f"examples[{i}][1]")
        if isinstance(pair[0], pl.Expr) or isinstance(pair[1], pl.Expr):
            # both messages of a pair, or neither
            ask, answer = (
                pl.when(answer.is_not_null()).then(ask),
                pl.when(ask.is_not_null()).then(answer),
            )
            may_be_null = True
        parts.append(message("user", ask))
        parts.append(message("assistant", answer))
    if images is None:
        parts.append(message("user", user_expr))
    else:
        pictures = images.map_batches(
            _image_parts(detail), return_dtype=PARTS_DTYPE, is_elementwise=True
        )
        # a null text with an image: the image alone (the row is null with neither)
        text = _text_part(user_expr).fill_null(pl.lit([], dtype=PARTS_DTYPE))
        parts.append(_message("user", pl.concat_list([text, pictures])))
    if assistant_expr is not None:
        parts.append(message("assistant", assistant_expr))
        may_be_null |= isinstance(assistant, pl.Expr)

    out = pl.concat_list(parts)
    if may_be_null:
        out = out.list.eval(
            pl.element().filter(pl.element().struct.field("content").is_not_null())
        )
    if isinstance(user, pl.Expr):
        sent = user_expr.is_not_null()
        if images is not None:
            sent |= images.map_batches(
                _has_image, return_dtype=pl.Boolean, is_elementwise=True
            )
        out = pl.when(sent).then(out)
    return out.alias("messages")
