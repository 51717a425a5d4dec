"""How the emulator answers one chat request, whichever surface it came by.

:class:`Chat` takes a chat-completions body on a deployment's lane and gives the
:class:`Answer` (or Azure's error response): Azure's 400s for the body, the structured
output's schema, the scripted and random faults, the content filter, the context
length, the lane's quota and latency. The routes render an answer as a chat completion
(:func:`chat_payload`) or as a Responses API object (``emulator/_responses.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from polars_azurechat.emulator._answers import answer_for, parse_directives
from polars_azurechat.emulator._body import body_problem, invalid
from polars_azurechat.emulator._errors import (
    content_filter_response,
    error_response,
    output_filter_results,
    rate_limit_response,
)
from polars_azurechat.emulator._quota import ceil_ms
from polars_azurechat.emulator._structured import (
    REFUSAL,
    ResponseFormatError,
    broken_answer,
    requested_schema,
    structured_answer,
)

if TYPE_CHECKING:
    from polars_azurechat.emulator._lane import Lane
    from polars_azurechat.emulator._state import State

__all__ = ["DEFAULT_RESERVED_COMPLETION_TOKENS", "Answer", "Chat", "chat_payload"]

#: Tokens charged for the answer when a request sets no ``max_tokens``.
DEFAULT_RESERVED_COMPLETION_TOKENS = 4096


@dataclasses.dataclass
class Answer:
    """What the model answered one request, before it is rendered for a surface."""

    n: int  # numbers the answer's id
    model: str
    content: str | None
    refusal: str | None
    finish_reason: str  # "stop", "length" or "content_filter"
    prompt_tokens: int
    completion_tokens: int
    output_filtered: bool
    headers: dict[str, str]


class Chat:
    """Answers chat-completions bodies on the emulator's lanes.

    Parameters
    ----------
    state
        The emulator's counters, token estimator and schema cache.
    """

    def __init__(self, state: State) -> None:
        self.state = state

    async def answer(
        self,
        lane: Lane,
        body: Any,
        *,
        request: web.Request | None = None,
        n: int | None = None,
    ) -> Answer | web.Response:
        """Answer one chat-completions ``body`` on ``lane``, as the chat endpoint does.

        ``request`` is ``None`` for a line of a batch (``emulator/_batch.py``): then
        no online quota is charged, no latency is waited, and a fault that needs a
        connection (hang, drop, malformed) is a 500. ``n`` numbers the answer's id
        (default: the request count).
        """
        st = self.state
        s = lane.settings
        refused = body_problem(body)  # Azure's 400 for a wrong type or range
        if refused is not None:
            return refused
        messages = body["messages"]
        pairs = _message_pairs(messages)
        try:  # structured outputs: the schema the answer must follow, if any
            schema = requested_schema(body)
        except ResponseFormatError as err:
            return invalid(str(err), param="response_format")
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        prompt_tokens = st.tokens.prompt(pairs)
        schema_text = None
        if schema is not None:  # Azure counts the schema in the prompt
            schema_text, schema_tokens = st.schema(schema)
            prompt_tokens += schema_tokens
        last_user = next(
            (content for role, content in reversed(pairs) if role == "user"),
            pairs[-1][1],
        )
        directives = parse_directives(last_user)
        delay_s = (
            s.latency_ms
            + float(directives.get("delay", 0))
            + s.jitter_ms * lane.rng.random()
        ) / 1000
        fault = lane.faults.choose(messages, directives)
        if fault is not None:
            return await self._fault(lane, fault, delay_s, request)
        if "filter" in directives:
            return content_filter_response()
        if prompt_tokens + (max_tokens or 0) > s.context_tokens:
            return invalid(
                f"This model's maximum context length is {s.context_tokens} tokens. "
                f"However, your messages resulted in {prompt_tokens} tokens. Please "
                "reduce the length of the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        reserved = (
            DEFAULT_RESERVED_COMPLETION_TOKENS if max_tokens is None else max_tokens
        )
        quota_headers: dict[str, str] = {}
        if request is not None:  # a batch line is not charged to the online quota
            decision = lane.quota.admit(prompt_tokens + reserved)
            if not decision.admitted:
                return rate_limit_response(
                    max(1, ceil_ms(decision.wait_s)),
                    decision.limited_by,
                    decision.headers,
                )
            quota_headers = decision.headers
            if delay_s > 0:
                await asyncio.sleep(delay_s)
        text = _answer_text(schema, schema_text, directives, last_user)
        return self._complete(
            s.model, text, directives, max_tokens, prompt_tokens, quota_headers, n
        )

    async def _fault(
        self, lane: Lane, fault: str, delay_s: float, request: web.Request | None
    ) -> web.Response:
        """Count the injected ``fault`` and answer with it (a batch line: a 5xx)."""
        st = self.state
        with st.lock:
            st.faults[fault] += 1
        if request is None:  # a batch line: no connection to hang or drop
            code = int(fault) if fault.isdigit() else 500
            return error_response(
                code, str(code), "The server had an error processing the request."
            )
        return await lane.faults.respond(request, fault, delay_s)

    def _complete(
        self,
        model: str,
        text: str,
        directives: dict[str, str],
        max_tokens: Any,
        prompt_tokens: int,
        quota_headers: dict[str, str],
        n: int | None,
    ) -> Answer:
        """The answer ``text``: refused, cut and counted as asked."""
        st = self.state
        refused = "refuse" in directives  # the answer is the refusal's text
        if refused:
            text = REFUSAL
        finish = "stop"
        if isinstance(max_tokens, int) and st.tokens.text(text) > max_tokens:
            text, finish = st.tokens.truncate(text, max_tokens), "length"
        filtered = "filter_output" in directives
        if filtered:  # the completion was cut by the output filter, as Azure does
            text, finish = text[: max(1, len(text) // 2)], "content_filter"
        completion_tokens = max(1, st.tokens.text(text))
        with st.lock:
            st.prompt_tokens += prompt_tokens
            st.completion_tokens += completion_tokens
            if n is None:
                n = st.requests
        return Answer(
            n=n,
            model=model,
            content=None if refused else text,
            refusal=text if refused else None,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            output_filtered=filtered,
            headers={"apim-request-id": f"emu-{n}", **quota_headers},
        )


def chat_payload(a: Answer) -> dict[str, Any]:
    """The chat completion Azure sends for ``a``."""
    return {
        "id": f"chatcmpl-emu-{a.n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": a.model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": a.content,
                    "refusal": a.refusal,
                },
                "finish_reason": a.finish_reason,
                "logprobs": None,
                "content_filter_results": output_filter_results(a.output_filtered),
            }
        ],
        "usage": {
            "prompt_tokens": a.prompt_tokens,
            "completion_tokens": a.completion_tokens,
            "total_tokens": a.prompt_tokens + a.completion_tokens,
        },
        "system_fingerprint": "fp_emulator",
    }


def _message_pairs(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Each message's ``(role, content)`` (checked by ``body_problem``)."""
    return [(str(m["role"]), str(m["content"])) for m in messages]


def _answer_text(
    schema: dict[str, Any] | None,
    schema_text: str | None,
    directives: dict[str, str],
    last_user: str,
) -> str:
    """What the model says to ``last_user``: free text, or JSON following ``schema``."""
    if schema is None:
        return answer_for(last_user)
    if "bad_json" in directives:
        return broken_answer(schema, last_user)
    return structured_answer(schema, last_user, schema_text=schema_text)
