"""One definition of every option a job takes, shared by every entry point.

:class:`ChatOptions` is the single place where an option's name, type, default,
validation and one-line doc live. :func:`polars_azurechat.complete`,
``pl.col(c).chat.complete``, :func:`polars_azurechat.complete_many`,
:class:`polars_azurechat.Completer` and the ``polars-azurechat run`` flags are all built
from it: adding an option means adding one field here, and its typed line in
:class:`ChatOptionsDict` for type checkers (plus its tests and docs).

Keywords that are not options are chat-completions body fields (``max_tokens``,
``temperature``, ``seed``, ...), checked against the list the openai SDK types; anything
else is refused before any request, naming the closest match. Truly custom body fields
go through ``extra_body={...}``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, get_args

from polars_azurechat._body_fields import (
    BODY_FIELDS,
    REASONING_EFFORTS,
    RESERVED_FIELDS,
    check_body,
)

if TYPE_CHECKING:
    import polars as pl
    from pydantic import BaseModel

    from polars_azurechat.deployments import Deployment
    from polars_azurechat.schema.output import OutputSchema

__all__ = [
    "BODY_FIELDS",
    "REASONING_EFFORTS",
    "RESERVED_FIELDS",
    "BatchFallback",
    "ChatBodyDict",
    "ChatOptions",
    "ChatOptionsDict",
    "Mode",
    "OnError",
    "OnTruncated",
    "OutputKind",
    "check_body",
]

OutputKind = Literal["content", "struct"]
OnError = Literal["null", "raise"]
OnTruncated = Literal["keep", "error"]
Mode = Literal["online", "batch"]
Api = Literal["chat", "responses"]
BatchFallback = Literal["online"]
Repair = Literal["resend", "teach"]


def _opt(default: Any, doc: str, **metadata: Any) -> Any:
    return dataclasses.field(default=default, metadata={"doc": doc, **metadata})


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ChatOptions:
    """How a job runs: the options of every entry point, validated once.

    Build it from keywords (``ChatOptions(max_concurrency=32)``) or let the entry points
    build it from theirs. ``replace(**changes)`` returns a copy with some changed.

    Raises
    ------
    ValueError
        An option has a wrong value (the message names it).

    Examples
    --------
    >>> opts = ChatOptions(max_concurrency=8, requests_per_minute=600)
    >>> opts.max_concurrency, opts.max_attempts
    (8, 6)
    >>> ChatOptions(max_attempts=0)
    Traceback (most recent call last):
    ...
    ValueError: max_attempts must be an integer >= 1, got 0
    """

    deployment: str | None = _opt(
        None,
        "The Azure deployment; default ``config.deployment`` / AZURE_OPENAI_DEPLOYMENT.",
        envvar="AZURE_OPENAI_DEPLOYMENT",
    )
    deployments: Sequence[Deployment] | None = _opt(
        None,
        "Several deployments serving the job (a list of polars_azurechat.Deployment; "
        "CLI: a TOML file): the lowest priority tier first, the next when it is full "
        "or down. Instead of ``deployment`` and the job-wide quota options.",
    )
    system: str | None = _opt(
        None,
        "For String prompts: a system message sent before each prompt (a column of "
        "messages carries its own: not sent, with a warning once a job).",
    )
    output: OutputKind = _opt(
        "content",
        "``content``: the answers as String (with ``response_format=Model``: the "
        "typed answers, a Struct); ``struct``: content, finish_reason, "
        "prompt_tokens, completion_tokens, attempts, error, parsed (typed answers "
        "only), then provenance: request_id, model, system_fingerprint, deployment, "
        "latency_ms, content_filter.",
    )
    max_concurrency: int = _opt(
        64, "Requests in flight at once, across every chunk and run of the job."
    )
    requests_per_minute: float | None = _opt(
        None, "The deployment's request quota; requests are admitted under it."
    )
    tokens_per_minute: float | None = _opt(
        None,
        "The deployment's token quota (prompt + max_tokens per request, as Azure "
        "counts on arrival).",
    )
    max_attempts: int = _opt(
        6,
        "Attempts per row, the first included; 408/409/429/5xx, timeouts and dropped "
        "connections are retried.",
    )
    timeout_s: float | None = _opt(
        None,
        "Time bound, in seconds, for one attempt; ``None``: 10 s plus 1 s per 50 "
        "tokens of ``max_tokens`` (4,096 when unset), time for a slow deployment to "
        "write the longest answer allowed; for a reasoning model (the job sets "
        "``reasoning_effort`` or ``max_completion_tokens``) 120 s plus 1 s per 20.",
    )
    deadline_s: float | None = _opt(
        None,
        "Time bound, in seconds, for one run (a collect, a complete_many call, a CLI "
        "job); rows left then fail with DeadlineExceededError. In batch mode the run "
        "stops waiting: its batches keep running on Azure, recorded in the cache, and "
        "a rerun collects them.",
    )
    on_error: OnError = _opt(
        "null",
        "``null``: a failed row gives null, and one warning per run (logged) counts "
        "them; "
        "``raise``: every row runs, then CompletionFailed lists the failed rows.",
    )
    repair: Repair = _opt(
        "resend",
        "A typed answer that fails validation is sent again (an attempt): "
        "``resend``: as it was; ``teach``: with the answer and the validation error "
        "added as messages (an assistant turn, then a user turn). In batch mode only "
        "with ``batch_fallback='online'`` (a batch's answer is final).",
    )
    on_truncated: OnTruncated = _opt(
        "keep",
        "An answer cut at max_tokens (finish_reason 'length'): ``keep`` it (counted "
        "as truncated in the summary and logged once per run) or make it an "
        "``error`` (TruncatedError, not cached).",
    )
    cache: str | os.PathLike[str] | None = _opt(
        None,
        "Path to a SQLite file of answers, or a ``redis://`` URL shared by every "
        "worker; a rerun sends only what is missing.",
    )
    limiter: str | None = _opt(
        None,
        "A ``redis://`` URL: every process sending to the same deployment shares one "
        "quota through it (windows, learned budgets, 429 cooldown). An unreachable "
        "server stops the job before any request, unless the URL ends in "
        "``?fallback=local`` (then the job limits itself alone).",
    )
    progress: bool | None = _opt(
        None,
        "Show a progress bar: ``None`` in a notebook (Jupyter, VS Code) or when "
        "stderr is a terminal, ``True`` always, ``False`` never.",
    )
    flex_fallback: bool = _opt(
        False,
        "With ``service_tier='flex'``: a request Azure refuses because flex has no "
        "capacity now (a 429 that is not a quota's) is sent again at once on the "
        "default tier, at its price (the summary counts each tier); ``False``: it "
        "waits and tries flex again.",
    )
    api: Api = _opt(
        "chat",
        "``chat``: chat completions; ``responses``: Azure's Responses API "
        "(``/openai/v1/responses``): the same rows, order, cache, quota and typed "
        "answers, the body translated (``max_tokens`` as ``max_output_tokens``, "
        "``response_format`` as ``text.format``, ``store`` false unless set).",
    )
    mode: Mode = _opt(
        "online",
        "``online``: one chat-completions request per distinct row; ``batch``: the "
        "rows go through Azure's Batch API (a Global Batch deployment: half the price, "
        "answered within 24 h), the whole column as one job, same result column and "
        "per-row errors. Batch mode needs ``cache`` (a file): the submitted batches "
        "are recorded there before anything is sent, so a rerun attaches to them.",
    )
    batch_fallback: BatchFallback | None = _opt(
        None,
        "Batch mode: ``online`` sends the rows a batch left unanswered (expired, "
        "cancelled, failed, or a line with a retryable error) as online requests; "
        "``None``: they keep their BatchIncompleteError / BatchFailedError.",
    )
    enqueued_tokens_limit: int | None = _opt(
        None,
        "Batch mode: the deployment's enqueued-token quota; files are cut to fit it "
        "and batches submitted as earlier ones finish (``None``: learned from Azure's "
        "token_limit_exceeded).",
    )
    batch_poll_s: float = _opt(
        5.0,
        "Batch mode: the first wait between looks at the batches, in seconds; it "
        "grows 1.5x while nothing changes, up to 60 s (or this, if larger).",
    )
    batch_file_wait_s: float = _opt(
        1800.0,
        "Batch mode: the longest wait, in seconds, for an uploaded input file to "
        "become ``processed``; then its rows fail with BatchFailedError naming the "
        "file and its last status (a rerun waits for the same file again).",
    )
    max_cost_usd: float | None = _opt(
        None,
        "A spending cap for the job, in USD: no request is sent whose worst-case cost "
        "(prompt estimate + max_tokens, at the price table; the batch price in batch "
        "mode) would take the job past it; those rows fail with SpendingCapError and "
        "are not cached, so a rerun with a higher cap sends only them.",
    )

    def __post_init__(self) -> None:
        for name in ("deployment", "system"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                msg = f"{name} must be a string, got {type(value).__name__}"
                raise TypeError(msg)
        if self.deployments is not None:
            from polars_azurechat.deployments import as_deployments

            object.__setattr__(self, "deployments", as_deployments(self.deployments))
            given = [
                n
                for n in ("deployment", "requests_per_minute", "tokens_per_minute")
                if getattr(self, n) is not None
            ]
            if given:
                msg = (
                    f"{' and '.join(given)} cannot be given with deployments=: each "
                    "Deployment has its own name and quota"
                )
                raise ValueError(msg)
        _check_choice("output", self.output, OutputKind)
        _check_choice("on_error", self.on_error, OnError)
        _check_int("max_concurrency", self.max_concurrency)
        _check_int("max_attempts", self.max_attempts)
        _check_choice("on_truncated", self.on_truncated, OnTruncated)
        _check_choice("repair", self.repair, Repair)
        _check_choice("api", self.api, Api)
        for name in (
            "timeout_s",
            "deadline_s",
            "requests_per_minute",
            "tokens_per_minute",
        ):
            value = getattr(self, name)
            if value is not None:
                _check_positive(name, value)
        if self.progress is not None and not isinstance(self.progress, bool):
            msg = f"progress must be True, False or None, got {self.progress!r}"
            raise TypeError(msg)
        if self.limiter is not None and not (
            isinstance(self.limiter, str)
            and self.limiter.split("://", 1)[0] in ("redis", "rediss")
        ):
            from polars_azurechat.config import shown_url

            got = (  # never the password of a mistyped URL
                repr(shown_url(self.limiter))
                if isinstance(self.limiter, str)
                else type(self.limiter).__name__
            )
            msg = f"limiter must be a redis:// URL, got {got}"
            raise ValueError(msg)
        if self.cache is not None and not isinstance(self.cache, str | os.PathLike):
            msg = f"cache must be a path, got {type(self.cache).__name__}"
            raise TypeError(msg)
        self._check_batch()
        if self.max_cost_usd is not None:
            _check_positive("max_cost_usd", self.max_cost_usd)

    def __repr__(self) -> str:
        """Every option, the URLs of ``cache`` and ``limiter`` without a password."""
        from polars_azurechat.config import shown_url

        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("cache", "limiter") and isinstance(value, str):
                value = shown_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"ChatOptions({', '.join(shown)})"

    def _check_batch(self) -> None:
        _check_choice("mode", self.mode, Mode)
        if self.batch_fallback is not None:
            _check_choice("batch_fallback", self.batch_fallback, BatchFallback)
        _check_positive("batch_poll_s", self.batch_poll_s)
        _check_positive("batch_file_wait_s", self.batch_file_wait_s)
        if self.enqueued_tokens_limit is not None:
            _check_int("enqueued_tokens_limit", self.enqueued_tokens_limit)
        if self.mode != "batch":
            given = [
                n
                for n in ("batch_fallback", "enqueued_tokens_limit")
                if getattr(self, n) is not None
            ]
            if given:
                verb = "is" if len(given) == 1 else "are"
                msg = f"{' and '.join(given)} {verb} for mode='batch' only"
                raise ValueError(msg)
            return
        if self.repair == "teach" and self.batch_fallback is None:
            msg = (
                "repair='teach' resends an invalid typed answer, which a batch does not "
                "(its answer is the row's): in mode='batch' it needs "
                "batch_fallback='online', which sends such rows again online"
            )
            raise ValueError(msg)
        if self.cache is None:
            msg = (
                "mode='batch' needs cache=FILE (an SQLite file): the submitted batches "
                "are recorded there before anything is sent, so a rerun (after a "
                "crash, or to collect a batch still running) attaches to them instead "
                "of paying twice, and their answers are kept there"
            )
            raise ValueError(msg)
        if str(self.cache).split("://", 1)[0] in ("redis", "rediss"):
            msg = (
                "mode='batch' keeps its batches' state in an SQLite cache file; "
                "give cache=FILE, not a redis:// URL"
            )
            raise ValueError(msg)
        if self.deployments is not None:
            msg = (
                "mode='batch' sends to one (Global Batch) deployment: give deployment=, "
                "not deployments="
            )
            raise ValueError(msg)

    def attempt_timeout_s(
        self, max_tokens: int | None, *, reasoning: bool = False
    ) -> float:
        """The time bound of one attempt: ``timeout_s``, or one that fits the answer.

        A chat model: 10 s plus 1 s per 50 tokens of the answer's budget. A reasoning
        model (``reasoning=True``: the job sets ``reasoning_effort`` or
        ``max_completion_tokens``) thinks before it answers, for minutes at a high
        effort: 120 s plus 1 s per 20 tokens.

        Examples
        --------
        >>> ChatOptions().attempt_timeout_s(20), ChatOptions().attempt_timeout_s(None)
        (10.4, 91.92)
        >>> ChatOptions().attempt_timeout_s(2000, reasoning=True)
        220.0
        >>> ChatOptions(timeout_s=5).attempt_timeout_s(1000)
        5
        """
        if self.timeout_s is not None:
            return self.timeout_s
        reserved = (
            DEFAULT_RESERVED_COMPLETION_TOKENS if max_tokens is None else max_tokens
        )
        if reasoning:
            return round(120.0 + reserved / 20, 2)
        return round(10.0 + reserved / 50, 2)

    def replace(self, **changes: Any) -> ChatOptions:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every option's name, in definition order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def split(
        cls, kwargs: Mapping[str, Any], base: ChatOptions | None = None
    ) -> tuple[ChatOptions, dict[str, Any]]:
        """Split keywords into options and body fields, refusing any other keyword.

        ``base`` gives the options the keywords change (default: all defaults).

        Examples
        --------
        >>> opts, body = ChatOptions.split({"max_concurrency": 4, "max_tokens": 20})
        >>> opts.max_concurrency, body
        (4, {'max_tokens': 20})
        >>> ChatOptions.split({"max_token": 20})
        Traceback (most recent call last):
        ...
        TypeError: unknown keyword 'max_token' (did you mean 'max_tokens'?); custom body fields go in extra_body={...}
        """
        names = set(cls.names())
        options = {k: v for k, v in kwargs.items() if k in names}
        body = {k: v for k, v in kwargs.items() if k not in names}
        check_body(body)
        base = base if base is not None else cls()
        return (base.replace(**options) if options else base), body


class ChatBodyDict(TypedDict, total=False):
    """The chat-completions body fields an entry point takes, for type checkers.

    One key per name of :data:`BODY_FIELDS`, typed as the openai SDK's
    ``CompletionCreateParams`` types them (its nested TypedDicts as ``Mapping``), plus
    ``extra_body``. ``response_format`` may also be a typed answer's type: a pydantic
    model, a ``pl.Struct`` or an :class:`~polars_azurechat.OutputSchema`. The values
    are checked again at run time (:func:`check_body`).
    """

    audio: Mapping[str, Any] | None
    data_sources: Sequence[Mapping[str, Any]]
    frequency_penalty: float | None
    function_call: Literal["none", "auto"] | Mapping[str, Any]
    functions: Sequence[Mapping[str, Any]]
    logit_bias: Mapping[str, int] | None
    logprobs: bool | None
    max_completion_tokens: int | None
    max_tokens: int | None
    metadata: Mapping[str, str] | None
    modalities: Sequence[Literal["text", "audio"]] | None
    moderation: Mapping[str, Any] | None
    parallel_tool_calls: bool
    prediction: Mapping[str, Any] | None
    presence_penalty: float | None
    prompt_cache_key: str | None
    prompt_cache_options: Mapping[str, Any]
    prompt_cache_retention: Literal["in_memory", "24h"] | None
    reasoning_effort: (
        Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None
    )
    response_format: (
        type[BaseModel] | Mapping[str, Any] | pl.Struct | OutputSchema | None
    )
    safety_identifier: str | None
    seed: int | None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None
    stop: str | Sequence[str] | None
    store: bool | None
    stream_options: Mapping[str, Any] | None
    temperature: float | None
    tool_choice: Literal["none", "auto", "required"] | Mapping[str, Any]
    tools: Sequence[Mapping[str, Any]]
    top_logprobs: int | None
    top_p: float | None
    user: str
    verbosity: Literal["low", "medium", "high"] | None
    web_search_options: Mapping[str, Any]
    #: Custom body fields, merged into the body at the top level.
    extra_body: Mapping[str, Any] | None


class ChatOptionsDictNoOutput(ChatBodyDict, total=False):
    """Every keyword of :class:`ChatOptionsDict` but ``output`` (for overloads on it)."""

    deployment: str | None
    deployments: Sequence[Deployment] | None
    system: str | None
    max_concurrency: int
    requests_per_minute: float | None
    tokens_per_minute: float | None
    max_attempts: int
    timeout_s: float | None
    deadline_s: float | None
    on_error: OnError
    repair: Repair
    on_truncated: OnTruncated
    cache: str | os.PathLike[str] | None
    limiter: str | None
    progress: bool | None
    flex_fallback: bool
    api: Api
    mode: Mode
    batch_fallback: BatchFallback | None
    enqueued_tokens_limit: int | None
    batch_poll_s: float
    batch_file_wait_s: float
    max_cost_usd: float | None


class ChatOptionsDict(ChatOptionsDictNoOutput, total=False):
    """Every keyword an entry point takes, with its type, for type checkers.

    Each option of :class:`ChatOptions` and each body field of :class:`ChatBodyDict`.
    The entry points take ``**params: Unpack[ChatOptionsDict]``, so a type checker
    flags a misspelt keyword or a value of the wrong type. It only types the keywords:
    at run time :meth:`ChatOptions.split` refuses an unknown keyword (naming the
    closest match) and validates every value. A test keeps its keys equal to the
    options' names, :data:`BODY_FIELDS` and ``extra_body``.

    Examples
    --------
    >>> from typing import Unpack
    >>> def job(**params: Unpack[ChatOptionsDict]) -> ChatOptions:
    ...     return ChatOptions.split(params)[0]
    >>> job(max_concurrency=8, max_tokens=20).max_concurrency
    8
    """

    output: OutputKind


def output_schema(response_format: Any) -> OutputSchema | None:
    """The typed answer a ``response_format`` asks for, or ``None`` for text answers.

    A pydantic model, a JSON-schema dict (or OpenAI's ``{"type": "json_schema", ...}``)
    or a ``pl.Struct`` is a typed answer; ``None``, ``{"type": "text"}`` and
    ``{"type": "json_object"}`` are not (the answer stays a String).

    Raises
    ------
    TypeError, ValueError
        The value is none of these, or its schema has no Polars dtype (the message
        names the field).

    Examples
    --------
    >>> import polars as pl
    >>> output_schema({"type": "json_object"}) is None
    True
    >>> output_schema(pl.Struct({"n": pl.Int64})).dtype
    Struct({'n': Int64})
    """
    if response_format is None:
        return None
    if isinstance(response_format, Mapping) and response_format.get("type") in (
        "text",
        "json_object",
    ):
        return None
    from polars_azurechat.schema.output import OutputSchema

    return OutputSchema.from_user(response_format)


def typed_body(body: Mapping[str, Any]) -> tuple[OutputSchema | None, dict[str, Any]]:
    """The output schema of ``body`` (flattened), and the body as sent.

    ``response_format`` is replaced by the schema's strict ``json_schema`` dict, so the
    body is JSON and the cache key holds the schema.
    """
    out = flatten_body(body)
    schema = output_schema(out.get("response_format"))
    if schema is not None:
        out["response_format"] = schema.response_format
    return schema, out


def flatten_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body fields as sent: ``extra_body`` merged in at the top level."""
    out = {k: v for k, v in body.items() if k != "extra_body"}
    out.update(body.get("extra_body") or {})
    return out


def _check_choice(name: str, value: Any, kind: Any) -> None:
    choices = get_args(kind)
    if value not in choices:
        shown = " or ".join(repr(c) for c in choices)
        msg = f"{name} must be {shown}, got {value!r}"
        raise ValueError(msg)


def _check_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        msg = f"{name} must be an integer >= 1, got {value!r}"
        raise ValueError(msg)


def _check_positive(name: str, value: Any) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        msg = f"{name} must be a positive number, got {value!r}"
        raise ValueError(msg)


#: Tokens Azure reserves for the answer when ``max_tokens`` is absent (a typical
#: context); it decides the quota charge and the default attempt timeout.
DEFAULT_RESERVED_COMPLETION_TOKENS = 4096

# ---------------------------------------------------------------------------------------
# Signatures and docs of the entry points, generated from the one definition.

F = TypeVar("F", bound=Callable[..., Any])


def option_parameters() -> list[inspect.Parameter]:
    """Every option as a keyword-only parameter (for generated signatures)."""
    hints = {
        "deployment": "str | None",
        "deployments": "Sequence[Deployment] | None",
        "system": "str | None",
        "cache": "str | os.PathLike[str] | None",
        "output": "Literal['content', 'struct']",
        "on_error": "Literal['null', 'raise']",
        "on_truncated": "Literal['keep', 'error']",
        "repair": "Literal['resend', 'teach']",
        "mode": "Literal['online', 'batch']",
        "batch_fallback": "Literal['online'] | None",
    }
    return [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=f.default,
            annotation=hints.get(f.name, f.type),
        )
        for f in dataclasses.fields(ChatOptions)
    ]


def options_doc(indent: str = "    ") -> str:
    """The numpydoc entries of every option (for generated docstrings)."""
    lines = []
    for f in dataclasses.fields(ChatOptions):
        lines.append(f"{indent}{f.name} : {f.type}, default {f.default!r}")
        lines.append(f"{indent}    {f.metadata['doc']}")
    return "\n".join(lines).lstrip()


def with_options(
    *, before: tuple[str, ...] = (), after: tuple[str, ...] = ()
) -> Callable[[F], F]:
    """Give a ``(..., **kwargs)`` function the signature and docs of every option.

    ``before`` / ``after`` name the function's own parameters that come before and
    after the options (its ``**params`` last). ``{options}`` in the docstring is
    replaced by the options' numpydoc entries.
    """

    def decorate(func: F) -> F:
        own = inspect.signature(func).parameters
        params = [
            *(own[n] for n in before),
            *option_parameters(),
            *(own[n] for n in after),
            inspect.Parameter(
                "params",
                inspect.Parameter.VAR_KEYWORD,
                annotation="Unpack[ChatBodyDict]",
            ),
        ]
        func.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            params, return_annotation=inspect.signature(func).return_annotation
        )
        if func.__doc__:  # the entries take the {options} line's indentation
            indent = func.__doc__.split("{options}")[0].rsplit("\n", 1)[-1]
            func.__doc__ = func.__doc__.replace("{options}", options_doc(indent))
        return func

    return decorate
