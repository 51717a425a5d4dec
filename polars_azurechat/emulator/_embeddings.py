"""Azure's embeddings endpoint on the emulator.

``POST /openai/deployments/{deployment}/embeddings?api-version=...`` and
``POST /openai/v1/embeddings`` (the deployment in the body's ``model``), on a
deployment that runs an embedding model (``EmulatorSettings.embedding_deployments``,
or a ``per_deployment`` ``model``). The body:

``input``
    A string, or a list of 1 to :data:`MAX_INPUTS` strings (token-id arrays are
    refused with a 400); none may be ``""``, nor over :data:`MAX_INPUT_TOKENS` tokens,
    and together at most ``embedding_request_tokens`` (all by the emulator's own
    token estimate: ``ceil(len / 4)`` per input, or tiktoken's count).
``dimensions``
    ``text-embedding-3`` models only, 1 to the model's native size.
``encoding_format``
    ``float`` (the default) or ``base64`` (little-endian float32).
``user``
    Taken, unused.

The answer is Azure's ``{"object": "list", "data": [...], "model", "usage"}``; the
vectors are :func:`~._vectors.embed`'s. The request goes through the chat route's
machinery (:class:`~._chat.Chat`): its scripted (``[emu:500*1]`` in any input) and
random faults, its latency and ``[emu:delay=N]``, and the lane's quota, charged one
request and the inputs' tokens (no completion part), with the same rate-limit
headers and 429 (naming ``Embeddings_Create``). A batch line to ``/v1/embeddings``
is answered by the same code, uncharged. A deployment that runs a chat model answers
``/embeddings`` with Azure's 400 ``OperationNotSupported``, and an embedding
deployment so answers chat (:func:`operation_not_supported`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from polars_azurechat.emulator._answers import parse_directives, strip_directives
from polars_azurechat.emulator._body import _number_problem, _wrong_type, invalid
from polars_azurechat.emulator._chat import admit, latency_s
from polars_azurechat.emulator._errors import error_response
from polars_azurechat.emulator._settings import EMBEDDING_MODELS, EmulatorSettings
from polars_azurechat.emulator._vectors import embed, to_base64

if TYPE_CHECKING:
    from polars_azurechat.emulator._chat import Chat
    from polars_azurechat.emulator._lane import Lane
    from polars_azurechat.emulator._state import State
    from polars_azurechat.emulator._tokens import Estimator

__all__ = [
    "MAX_INPUTS",
    "MAX_INPUT_TOKENS",
    "Embeddings",
    "is_embedding",
    "operation_not_supported",
]

#: The most inputs one request may carry.
MAX_INPUTS = 2048
#: The most tokens one input may have.
MAX_INPUT_TOKENS = 8192

#: Azure's message for an operation the deployment's model does not do.
NOT_SUPPORTED = (
    "The {operation} operation does not work with the specified model, {model}. "
    "Please choose different model and try again. You can learn more about which "
    "models can be used with each operation here: "
    "https://go.microsoft.com/fwlink/?linkid=2197993."
)

_FORMATS = ("float", "base64")


def is_embedding(settings: EmulatorSettings) -> bool:
    """Whether a deployment with ``settings`` runs an embedding model."""
    return settings.model in EMBEDDING_MODELS


def operation_not_supported(operation: str, model: str) -> web.Response:
    """Azure's 400 for ``operation`` (``embeddings``, ``chatCompletion``) on ``model``."""
    return error_response(
        400,
        "OperationNotSupported",
        NOT_SUPPORTED.format(operation=operation, model=model),
    )


@dataclasses.dataclass
class _Request:
    """An embeddings body, checked."""

    texts: list[str]
    tokens: int  # all the inputs'
    dimensions: int
    base64: bool


class Embeddings:
    """Answers embeddings bodies on the emulator's lanes, with the chat machinery.

    Parameters
    ----------
    state
        The emulator's counters and token estimator.
    chat
        The chat route's answerer, whose faults and latency these answers share.
    """

    def __init__(self, state: State, chat: Chat) -> None:
        self.state = state
        self.chat = chat

    async def answer(
        self, lane: Lane, body: Any, *, request: web.Request | None = None
    ) -> web.Response:
        """Answer one embeddings ``body`` on ``lane`` (``request``: ``None`` in a batch).

        A batch line is not charged to the online quota, waits no latency, and its
        faults are 5xx, as a chat line's.
        """
        s = lane.settings
        native = EMBEDDING_MODELS.get(s.model)
        if native is None:
            return operation_not_supported("embeddings", s.model)
        read = _read(body, s, native, self.state.tokens)
        if isinstance(read, web.Response):
            return read
        directives = parse_directives("\n".join(read.texts))
        delay_s = latency_s(lane, directives)
        fault = lane.faults.choose(read.texts, directives)
        if fault is not None:
            return await self.chat.fault(lane, fault, delay_s, request)
        headers: dict[str, str] = {}
        if request is not None:  # a batch line is not charged to the online quota
            admitted = admit(lane, read.tokens, operation="Embeddings_Create")
            if isinstance(admitted, web.Response):
                return admitted
            headers = admitted
            if delay_s > 0:
                await self.chat.sleep(delay_s)
        data = []
        for i, text in enumerate(read.texts):
            vector = embed(strip_directives(text), s.model, native, read.dimensions)
            data.append(
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": to_base64(vector) if read.base64 else vector,
                }
            )
        st = self.state
        with st.lock:
            st.embedding_inputs += len(read.texts)
            st.embedding_tokens += read.tokens
        payload = {
            "object": "list",
            "data": data,
            "model": s.model,
            "usage": {"prompt_tokens": read.tokens, "total_tokens": read.tokens},
        }
        return web.json_response(payload, headers=headers)


def _read(
    body: Any, s: EmulatorSettings, native: int, estimate: Estimator
) -> _Request | web.Response:
    """An embeddings ``body`` checked as Azure checks it, or Azure's 400."""
    if not isinstance(body, Mapping):
        return invalid(
            "the request body must be a JSON object with an 'input'",
            param=None,
            code="invalid_type",
        )
    texts = _inputs(body.get("input"))
    if isinstance(texts, web.Response):
        return texts
    dimensions = _dimensions(body.get("dimensions"), s.model, native)
    if isinstance(dimensions, web.Response):
        return dimensions
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in _FORMATS:
        return invalid(
            f"Invalid value: '{str(fmt)[:40]}'. Supported values are: 'float' and "
            "'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        return _wrong_type("user", "a string", user)
    total = 0
    for text in texts:
        tokens = estimate.text(text)
        if tokens > MAX_INPUT_TOKENS:
            return invalid(
                f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, "
                f"however you requested {tokens} tokens ({tokens} in your prompt; 0 "
                "for the completion). Please reduce your prompt; or completion "
                "length.",
                param=None,
            )
        total += tokens
    if total > s.embedding_request_tokens:
        return error_response(
            400,
            "max_tokens_per_request",
            f"Requested {total} tokens, max {s.embedding_request_tokens} tokens per "
            "request",
            type="max_tokens_per_request",
            param=None,
        )
    return _Request(texts, total, dimensions, fmt == "base64")


def _inputs(given: Any) -> list[str] | web.Response:
    """The texts of ``input``: a string, or a list of 1 to 2048 non-empty strings."""
    if given is None:
        return invalid(
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts:
        return invalid(
            "'input' must be a string or a non-empty array of strings.",
            param="input",
            code="invalid_value",
        )
    if len(texts) > MAX_INPUTS:
        return invalid(
            f"Too many inputs. The max number of inputs is {MAX_INPUTS}.  We hope to "
            "increase the number of inputs per request soon. Please contact us "
            "through an Azure support request at: "
            "https://go.microsoft.com/fwlink/?linkid=2213926 for further questions.",
            param=None,
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):  # token ids included: not taken here
            where = "input" if isinstance(given, str) else f"input[{i}]"
            return _wrong_type(where, "a string", text)
        if not text:
            return invalid(
                "'$.input' is invalid. Please check the API reference: "
                "https://platform.openai.com/docs/api-reference.",
                param=None,
            )
    return texts


def _dimensions(given: Any, model: str, native: int) -> int | web.Response:
    """The dimensions asked (``native`` when none), or Azure's 400."""
    if given is None:
        return native
    if not model.startswith("text-embedding-3"):
        return invalid(
            "This model does not support specifying dimensions.",
            param="dimensions",
            code="unsupported_parameter",
        )
    problem = _number_problem("dimensions", given, "integer", 1, native)
    if problem is not None:
        return problem
    dimensions: int = given
    return dimensions
