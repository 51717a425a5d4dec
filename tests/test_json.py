"""The messages' JSON is the standard library's, byte for byte (cache keys unchanged)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from polars_azurechat._json import messages_json

text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url"]), "text": st.none() | text}
)
message = st.dictionaries(
    st.sampled_from(["role", "content", "name", "zz", "Ä"]),
    text | st.none() | st.lists(part, max_size=3),
    max_size=4,
)


@given(st.lists(message, max_size=4))
def test_the_bytes_are_json_dumps_bytes(messages: list[dict[str, Any]]) -> None:
    for canonical in (False, True):
        try:
            expected: bytes | None = json.dumps(
                messages,
                sort_keys=canonical,
                separators=(",", ":"),
                ensure_ascii=False,
            ).encode()
        except UnicodeEncodeError:  # a lone surrogate: the standard library's error
            expected = None
        if expected is None:
            try:
                messages_json(messages, canonical=canonical)
            except UnicodeEncodeError:
                continue
            raise AssertionError("a lone surrogate was written")
        assert messages_json(messages, canonical=canonical) == expected


def test_what_orjson_refuses_goes_through_the_standard_library() -> None:
    odd = [{"content": "x", 1: 2**70}]  # a non-string key, an integer over 64 bits
    assert (
        messages_json(odd, canonical=False)
        == b'[{"content":"x","1":1180591620717411303424}]'
    )
