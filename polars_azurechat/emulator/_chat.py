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
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from polars_azurechat.emulator._answers import answer_for, parse_directives
from polars_azurechat.emulator._body import body_problem, invalid, logprobs_problem
from polars_azurechat.emulator._errors import (
    content_filter_response,
    error_response,
    flex_busy_response,
    output_filter_results,
    prompt_filter_results,
    rate_limit_response,
)
from polars_azurechat.emulator._logprobs import logprobs_content
from polars_azurechat.emulator._prompt_cache import MIN_TOKENS
from polars_azurechat.emulator._quota import ceil_ms
from polars_azurechat.emulator._reasoning import (
    effort_of,
    is_reasoning,
    reasoning_problem,
    reasoning_tokens,
)
from polars_azurechat.emulator._structured import (
    REFUSAL,
    ResponseFormatError,
    broken_answer,
    requested_schema,
    structured_answer,
)
from polars_azurechat.emulator._vision import pictures, text_of, vision_problem

if TYPE_CHECKING:
    from polars_azurechat.emulator._lane import Lane
    from polars_azurechat.emulator._settings import EmulatorSettings
    from polars_azurechat.emulator._state import State

__all__ = [
    "DEFAULT_RESERVED_COMPLETION_TOKENS",
    "Answer",
    "Chat",
    "admit",
    "chat_payload",
    "latency_s",
]

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
    completion_tokens: int  # the reasoning tokens included
    reasoning_tokens: int
    output_filtered: bool
    headers: dict[str, str]
    cached_tokens: int = 0  # of the prompt's
    #: Prompt Shields flagged a user prompt attack and let it through (annotate mode)
    jailbreak_detected: bool = False
    #: the tier that answered (``default`` unless flex or priority was asked)
    service_tier: str = "default"
    #: ``choices[0].logprobs.content`` (``logprobs: true`` asked), else ``None``
    logprobs: list[dict[str, Any]] | None = None


def _refusal(body: Any, s: EmulatorSettings) -> web.Response | None:
    """Azure's 400 for a wrong type or range, or what the model does not take."""
    refused = body_problem(body) or reasoning_problem(body, s)
    if refused is None and (text_only := vision_problem(body, s.model)) is not None:
        refused = invalid(text_only[0], param=text_only[1])  # (Azure gives no code)
    return refused or logprobs_problem(body)


class Chat:
    """Answers chat-completions bodies on the emulator's lanes.

    Parameters
    ----------
    state
        The emulator's counters, token estimator and schema cache.
    """

    #: How latency is waited (a test may record it instead).
    sleep: Callable[[float], Awaitable[None]] = staticmethod(asyncio.sleep)

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
        # Azure's 400 for a wrong type or range, or what the model does not take
        refused = _refusal(body, s)
        if refused is not None:
            return refused
        messages = body["messages"]
        pairs = _message_pairs(messages)
        schema, json_mode, refused = _answer_format(body, pairs)
        if refused is not None:
            return refused
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_completion_tokens")
        prompt_tokens = st.tokens.messages(messages)
        schema_text = None
        if schema is not None:  # Azure counts the schema in the prompt
            schema_text, schema_tokens = st.schema(schema)
            prompt_tokens += schema_tokens
        last_user = next(
            (content for role, content in reversed(pairs) if role == "user"),
            pairs[-1][1],
        )
        directives = parse_directives(last_user)
        thought = None  # the reasoning tokens of a reasoning model
        if is_reasoning(s):
            thought = reasoning_tokens(effort_of(body), _prompt_text(pairs))
        delay_s = latency_s(lane, directives, (thought or 0) * s.reasoning_ms_per_token)
        fault = lane.faults.choose(messages, directives)
        if fault is not None:
            return await self.fault(lane, fault, delay_s, request)
        tier = body.get("service_tier")
        if (
            tier == "flex"
            and request is not None
            and lane.faults.flex_busy(messages, directives)
        ):
            return flex_busy_response(s.retry_after_ms)
        if "jailbreak" in directives:  # Prompt Shields blocked a prompt attack
            return content_filter_response(jailbreak=True)
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
        cached = 0
        if request is not None:  # a batch line is not charged to the online quota
            admitted = admit(lane, prompt_tokens + reserved)
            if isinstance(admitted, web.Response):
                return admitted
            quota_headers = admitted
            if prompt_tokens >= MIN_TOKENS:  # shorter prompts are never cached
                cached = lane.prompt_cache.cached(
                    _prompt_pieces(schema_text, pairs), prompt_tokens, _cache_key(body)
                )
            if delay_s > 0:
                await self.sleep(delay_s)
        glitch = (  # drawn only when asked: the faults' random sequence stays
            schema is not None
            and s.bad_json_rate > 0
            and lane.rng.random() < s.bad_json_rate
        )
        text = _answer_text(
            schema,
            schema_text,
            directives,
            pairs,
            messages,
            glitch,
            json_mode=json_mode,
        )
        answer = self._complete(text, directives, max_tokens, thought)
        _add_logprobs(answer, body, last_user)
        answer.cached_tokens = cached
        answer.jailbreak_detected = "jailbreak_detected" in directives
        answer.service_tier = tier if tier in ("flex", "priority") else "default"
        return self._count(answer, s.model, prompt_tokens, quota_headers, n)

    async def fault(
        self, lane: Lane, fault: str, delay_s: float, request: web.Request | None
    ) -> web.Response:
        """Count the injected ``fault`` and answer with it (a batch line: a 5xx).

        Also the embeddings route's faults (``emulator/_embeddings.py``).
        """
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
        text: str,
        directives: dict[str, str],
        max_tokens: Any,
        thought: int | None,
    ) -> Answer:
        """The answer ``text``: refused, reasoned, cut as asked (not counted yet).

        ``thought`` is the reasoning tokens of a reasoning model (``None``: none):
        they come out of ``max_tokens`` (``max_completion_tokens``) first, and when
        they take all of it the answer is empty, cut for ``"length"``.
        """
        tokens = self.state.tokens
        refused = "refuse" in directives  # the answer is the refusal's text
        if refused:
            text = REFUSAL
        budget = max_tokens if isinstance(max_tokens, int) else None
        reasoned = 0
        if thought is not None:
            reasoned = thought if budget is None else min(thought, budget)
            budget = None if budget is None else budget - reasoned
        finish = "stop"
        if budget == 0:  # the reasoning took the whole budget: nothing is said
            text, refused, finish = "", False, "length"
        elif budget is not None and tokens.text(text) > budget:
            text, finish = tokens.truncate(text, budget), "length"
        filtered = "filter_output" in directives and bool(text)
        if filtered:  # the completion was cut by the output filter, as Azure does
            text, finish = text[: max(1, len(text) // 2)], "content_filter"
        said = max(1, tokens.text(text)) if text else 0
        return Answer(
            n=0,
            model="",
            content=None if refused else text,
            refusal=text if refused else None,
            finish_reason=finish,
            prompt_tokens=0,
            completion_tokens=reasoned + said,
            reasoning_tokens=reasoned,
            output_filtered=filtered,
            headers={},
        )

    def _count(
        self,
        answer: Answer,
        model: str,
        prompt_tokens: int,
        quota_headers: dict[str, str],
        n: int | None,
    ) -> Answer:
        """Count ``answer`` in the emulator's totals and name it (``n``, headers)."""
        st = self.state
        with st.lock:
            st.prompt_tokens += prompt_tokens
            st.completion_tokens += answer.completion_tokens
            st.reasoning_tokens += answer.reasoning_tokens
            st.cached_tokens += answer.cached_tokens
            if n is None:
                n = st.requests
        answer.n = n
        answer.model = model
        answer.prompt_tokens = prompt_tokens
        answer.headers = {"apim-request-id": f"emu-{n}", **quota_headers}
        return answer


def _add_logprobs(answer: Answer, body: Any, prompt: str) -> None:
    """The answer's tokens' log-probabilities, when the body asks (``logprobs``)."""
    if body.get("logprobs") and answer.content:
        top = body.get("top_logprobs") or 0
        answer.logprobs = logprobs_content(answer.content, prompt, top)


def latency_s(lane: Lane, directives: dict[str, str], extra_ms: float = 0.0) -> float:
    """The seconds one answer on ``lane`` takes: latency, jitter, ``[emu:delay=N]``.

    ``extra_ms``: what the answer adds of its own (a reasoning model's thinking).
    """
    s = lane.settings
    return (
        s.latency_ms
        + float(directives.get("delay", 0))
        + s.jitter_ms * lane.rng.random()
        + extra_ms
    ) / 1000


def admit(
    lane: Lane, tokens: int, *, operation: str = "ChatCompletions_Create"
) -> dict[str, str] | web.Response:
    """Charge one request of ``tokens`` to ``lane``'s quota: its headers, or the 429.

    ``operation`` is what the 429's message names (``Embeddings_Create`` for the
    embeddings route).
    """
    decision = lane.quota.admit(tokens)
    if not decision.admitted:
        return rate_limit_response(
            max(1, ceil_ms(decision.wait_s)),
            decision.limited_by,
            decision.headers,
            operation=operation,
        )
    return decision.headers


def chat_payload(a: Answer) -> dict[str, Any]:
    """The chat completion Azure sends for ``a``."""
    return {
        "id": f"chatcmpl-emu-{a.n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": a.model,
        "prompt_filter_results": prompt_filter_results(jailbreak=a.jailbreak_detected),
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": a.content,
                    "refusal": a.refusal,
                },
                "finish_reason": a.finish_reason,
                "logprobs": (
                    None
                    if a.logprobs is None
                    else {"content": a.logprobs, "refusal": None}
                ),
                "content_filter_results": output_filter_results(a.output_filtered),
            }
        ],
        "usage": {
            "prompt_tokens": a.prompt_tokens,
            "completion_tokens": a.completion_tokens,
            "total_tokens": a.prompt_tokens + a.completion_tokens,
            "prompt_tokens_details": {
                "audio_tokens": 0,
                "cached_tokens": a.cached_tokens,
            },
            "completion_tokens_details": {
                "accepted_prediction_tokens": 0,
                "audio_tokens": 0,
                "reasoning_tokens": a.reasoning_tokens,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": a.service_tier,
        "system_fingerprint": "fp_emulator",
    }


def _message_pairs(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Each message's ``(role, text)`` (checked by ``body_problem``)."""
    return [(str(m["role"]), text_of(m["content"])) for m in messages]


def _seen(messages: list[dict[str, Any]]) -> str:
    """`` [images: png 64x32, url]``: the last user message's images, or ``""``."""
    last = next((m for m in reversed(messages) if m["role"] == "user"), None)
    seen = [] if last is None else pictures(last["content"])
    if not seen:
        return ""
    return f" [images: {', '.join(p.label() for p in seen)}]"


def _prompt_pieces(schema_text: str | None, pairs: list[tuple[str, str]]) -> list[str]:
    """The prompt laid out as text for the prompt cache: the schema first."""
    pieces = [] if schema_text is None else [schema_text]
    pieces.extend(f"<|{role}|>{content}<|end|>" for role, content in pairs)
    return pieces


def _cache_key(body: Any) -> str:
    """What a prompt's cached prefix is combined with: ``prompt_cache_key``, ``user``."""
    return f"{body.get('prompt_cache_key') or ''}\0{body.get('user') or ''}"


def _prompt_text(pairs: list[tuple[str, str]]) -> str:
    """The prompt's messages as one text (what reasoning is derived from)."""
    return "\n".join(f"{role}: {content}" for role, content in pairs)


def _json_object(text: str) -> str:
    """JSON mode's answer: the text as a JSON object."""
    return json.dumps({"answer": text}, separators=(",", ":"), ensure_ascii=False)


def _answer_format(
    body: Mapping[str, Any], pairs: list[tuple[str, str]]
) -> tuple[dict[str, Any] | None, bool, web.Response | None]:
    """How the answer is written, or Azure's 400 for the ``response_format``.

    The schema it follows (structured outputs, else ``None``) and whether JSON mode
    (``json_object``) is asked.
    """
    try:
        schema = requested_schema(body)
    except ResponseFormatError as err:
        return None, False, invalid(str(err), param="response_format")
    fmt = body.get("response_format")
    json_mode = isinstance(fmt, Mapping) and fmt.get("type") == "json_object"
    if json_mode and not any("json" in text.lower() for _, text in pairs):
        return (
            None,
            True,
            invalid(
                "'messages' must contain the word 'json' in some form, to use "
                "'response_format' of type 'json_object'.",
                param="messages",
            ),
        )
    return schema, json_mode, None


def _answer_text(
    schema: dict[str, Any] | None,
    schema_text: str | None,
    directives: dict[str, str],
    pairs: list[tuple[str, str]],
    messages: list[dict[str, Any]],
    glitch: bool = False,
    *,
    json_mode: bool = False,
) -> str:
    """What the model says to the last user message: free text, or JSON for ``schema``.

    In JSON mode (``json_mode``) free text comes as ``{"answer": text}``.

    Free text names the last user message's images (what the model saw of them).
    A structured answer is derived from the last user message and the system
    message (a condition quoted there decides booleans). ``glitch`` (the random
    ``bad_json_rate``) breaks the schema, in any conversation; ``[emu:bad_json]``
    too, except in a repair: when the conversation ends with an answer, then a user
    message naming the ``schema`` (a validation error, as ``repair="teach"`` sends),
    the model learns from it and answers the user message before its answer again,
    well.
    """
    last_user = next(
        (content for role, content in reversed(pairs) if role == "user"),
        pairs[-1][1],
    )
    if schema is None:
        text = answer_for(last_user) + _seen(messages)
        return _json_object(text) if json_mode else text
    context = "\n".join(c for r, c in pairs if r in ("system", "developer"))
    if glitch:  # a random slip: a taught resend may slip too
        return broken_answer(schema, last_user)
    question = _repaired(pairs)
    if question is not None:
        return structured_answer(schema, question, context=context)
    if "bad_json" in directives:
        return broken_answer(schema, last_user)
    return structured_answer(
        schema, last_user, schema_text=schema_text, context=context
    )


def _repaired(pairs: list[tuple[str, str]]) -> str | None:
    """The question a repair conversation asks again (``None``: not a repair)."""
    if (
        len(pairs) < 3
        or pairs[-1][0] != "user"
        or pairs[-2][0] != "assistant"
        or "schema" not in pairs[-1][1].lower()
    ):
        return None
    return next(
        (c for r, c in reversed(pairs[:-2]) if r == "user"),
        None,
    )
