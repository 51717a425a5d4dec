"""The emulator's prompt caching: ``usage.prompt_tokens_details.cached_tokens``.

Over real HTTP with the openai SDK, on a fake clock (a cache expires on it).
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from polars_azurechat.emulator import Emulator
from polars_azurechat.emulator._prompt_cache import (
    CHARS_PER_TOKEN,
    MIN_TOKENS,
    STEP_TOKENS,
)

from .fakes import FakeClock

#: A system message of about 1,500 tokens (6,000 characters).
SYSTEM = "You answer questions about the catalogue. " * 143


def _messages(question: str, system: str = SYSTEM) -> Any:
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": question},
    ]


def _cached(client: openai.OpenAI, model: str = "d", **kw: Any) -> tuple[int, int]:
    """``(cached_tokens, prompt_tokens)`` of one answer."""
    reply = client.chat.completions.create(model=model, **kw)
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens
    assert cached is not None
    return cached, usage.prompt_tokens


def _expected(messages: Any, prompt_tokens: int) -> int:
    """What the emulator's layout caches of a prompt seen before."""
    chars = sum(len(f"<|{m['role']}|>{m['content']}<|end|>") for m in messages)
    top = min(prompt_tokens, chars // CHARS_PER_TOKEN)
    return MIN_TOKENS + (top - MIN_TOKENS) // STEP_TOKENS * STEP_TOKENS


@pytest.fixture
def client(clock: FakeClock) -> Any:
    with Emulator(clock=clock) as emu:
        yield openai.OpenAI(base_url=emu.base_url, api_key=emu.api_key, max_retries=0)


def test_a_long_prompt_seen_again_is_cached_in_128_token_steps(
    client: openai.OpenAI,
) -> None:
    messages = _messages("What is 2 + 2?")
    first, prompt = _cached(client, messages=messages)
    second, again = _cached(client, messages=messages)
    assert prompt == again > MIN_TOKENS
    assert first == 0
    assert second == _expected(messages, prompt)
    assert second >= MIN_TOKENS and (second - MIN_TOKENS) % STEP_TOKENS == 0
    assert prompt - STEP_TOKENS < second <= prompt


def test_a_shared_prefix_is_cached_and_a_changed_start_is_not(
    client: openai.OpenAI,
) -> None:
    _cached(client, messages=_messages("What is 2 + 2?"))
    other, _ = _cached(client, messages=_messages("A different question " * 40))
    assert other >= MIN_TOKENS  # the long system message is the same prefix
    changed, _ = _cached(client, messages=_messages("What is 2 + 2?", "X" + SYSTEM))
    assert changed == 0  # one character differs in the first 1,024 tokens


def test_short_prompts_other_deployments_and_other_users_are_not_cached(
    client: openai.OpenAI,
) -> None:
    short: Any = [{"role": "user", "content": "hi"}]
    _cached(client, messages=short)
    assert _cached(client, messages=short) == (0, 8)
    messages = _messages("What is 2 + 2?")
    _cached(client, messages=messages)
    assert _cached(client, model="another", messages=messages)[0] == 0
    assert _cached(client, messages=messages, user="someone")[0] == 0
    assert _cached(client, messages=messages, user="someone")[0] >= MIN_TOKENS
    assert _cached(client, messages=messages, prompt_cache_key="k")[0] == 0


def test_a_cache_expires_on_the_clock(client: openai.OpenAI, clock: FakeClock) -> None:
    messages = _messages("What is 2 + 2?")
    _cached(client, messages=messages)
    clock.advance(299)
    assert _cached(client, messages=messages)[0] >= MIN_TOKENS  # used: refreshed
    clock.advance(300)
    assert _cached(client, messages=messages)[0] == 0


def test_the_classic_route_shares_the_deployments_cache_and_counts_it() -> None:
    with Emulator() as emu:
        v1 = openai.OpenAI(base_url=emu.base_url, api_key=emu.api_key, max_retries=0)
        classic = openai.AzureOpenAI(
            azure_endpoint=emu.url,
            api_key=emu.api_key,
            api_version="2024-10-21",
            max_retries=0,
        )
        messages = _messages("What is 2 + 2?")
        _cached(v1, messages=messages)
        reply = classic.chat.completions.create(model="d", messages=messages)
        stats = emu.stats()
    assert reply.usage is not None and reply.usage.prompt_tokens_details
    cached = reply.usage.prompt_tokens_details.cached_tokens
    assert cached is not None and cached >= MIN_TOKENS
    assert stats["cached_tokens"] == cached


def test_the_structured_output_schema_is_part_of_the_prefix(
    client: openai.OpenAI,
) -> None:
    def schema(field: str) -> Any:
        return {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {field: {"type": "integer"}},
                    "required": [field],
                    "additionalProperties": False,
                },
            },
        }

    messages = _messages("What is 2 + 2?")
    _cached(client, messages=messages, response_format=schema("value"))
    same, _ = _cached(client, messages=messages, response_format=schema("value"))
    other, _ = _cached(client, messages=messages, response_format=schema("other"))
    assert same >= MIN_TOKENS
    assert other == 0  # the schema comes first: a different one changes the start


def test_no_caching_when_the_ttl_is_zero() -> None:
    with Emulator(prompt_cache_ttl_s=0) as emu:
        client = openai.OpenAI(
            base_url=emu.base_url, api_key=emu.api_key, max_retries=0
        )
        messages = _messages("What is 2 + 2?")
        _cached(client, messages=messages)
        assert _cached(client, messages=messages)[0] == 0
    with pytest.raises(ValueError, match="prompt_cache_ttl_s"):
        Emulator(prompt_cache_ttl_s=-1)
