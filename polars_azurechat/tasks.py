"""Tasks: classify, extract, filter, sentiment, summarize, translate, in one call each.

Each task is :func:`polars_azurechat.complete` with a prompt and a typed answer: the
row's text is the user message, the task's prompt (a module constant, readable with
:func:`explain_prompt`, changed with ``instructions=`` or replaced with ``prompt=``)
the system message, and a strict ``response_format`` constrains the answer
(``classify``: a JSON schema whose ``label`` is an ``enum`` of the labels). The answer
is converted to the task's dtype, known before any request:

==============  ============================================================
``classify``    ``Enum`` of the labels (``confidence=True``: ``Struct{label,
                confidence}``)
``filter``      ``Boolean``, for ``.filter()`` (``confidence=True``:
                ``Struct{match, confidence}``)
``sentiment``   ``Enum(["positive", "neutral", "negative"])`` (as ``classify``)
``extract``     the ``Struct`` of the given model or schema
``summarize``   ``String``
``translate``   ``String``
==============  ============================================================

Every task takes :func:`~polars_azurechat.complete`'s options and body fields
(``cache``, ``max_concurrency``, ``repair``, ``max_tokens``, ...) and runs through a
:class:`~polars_azurechat.Completer`: the cache, deduplication, retries, quota and
errors are those of ``complete``; :func:`plan` estimates a task without sending.

Confidence (``classify``, ``filter``, ``sentiment``): ``confidence=True`` asks for
the answer's log-probabilities (``logprobs=True``: more completion tokens billed) and
gives the probability of the chosen answer: the product of the probabilities of the
tokens that spell the label (or ``true``/``false``) within the JSON answer, that is
``exp`` of the sum of their log-probabilities (null when the tokens do not spell the
answer). The cache keeps the log-probabilities with the answer, so a cached row has
its confidence too. Reasoning models refuse ``logprobs``: a job that sets
``reasoning_effort`` or ``max_completion_tokens`` is refused before any request;
otherwise the deployment's 400 stops the run with an
:class:`~polars_azurechat.UnsupportedParameterError` naming ``logprobs``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Unpack

import polars as pl

from polars_azurechat._body_fields import known_keywords
from polars_azurechat.errors import UnsupportedParameterError, remember_for_polars
from polars_azurechat.functions import Completer
from polars_azurechat.options import ChatOptions, ChatOptionsDict
from polars_azurechat.prompts import messages
from polars_azurechat.schema.tasks import (
    BUILDERS,
    CLASSIFY_PROMPT,
    EXTRACT_PROMPT,
    FILTER_PROMPT,
    PROMPTS,
    SENTIMENT_LABELS,
    SENTIMENT_PROMPT,
    SUMMARIZE_PROMPT,
    TRANSLATE_PROMPT,
    Task,
    build_task,
)

if TYPE_CHECKING:
    import openai

    from polars_azurechat._types import ChatResult
    from polars_azurechat.config import ChatConfig
    from polars_azurechat.plan import Plan

__all__ = [
    "CLASSIFY_PROMPT",
    "EXTRACT_PROMPT",
    "FILTER_PROMPT",
    "PROMPTS",
    "SENTIMENT_LABELS",
    "SENTIMENT_PROMPT",
    "SUMMARIZE_PROMPT",
    "TRANSLATE_PROMPT",
    "Task",
    "classify",
    "explain_prompt",
    "extract",
    "filter",
    "plan",
    "sentiment",
    "summarize",
    "translate",
]


def explain_prompt(task: str, **arguments: Any) -> str:
    """The system message ``task`` sends with every row, for these arguments.

    Parameters
    ----------
    task
        ``"classify"``, ``"filter"``, ``"sentiment"``, ``"extract"``,
        ``"summarize"`` or ``"translate"``.
    **arguments
        The task's own arguments (``labels=``, ``condition=``, ``instructions=``,
        ``prompt=``, ...); a job's keywords (``max_tokens=``, ...) are ignored, so
        a task call's may be given as they are.

    Returns
    -------
    str

    Examples
    --------
    >>> from polars_azurechat import tasks
    >>> print(tasks.explain_prompt("classify", labels=["billing", "shipping"]))
    Classify the text the user sends into exactly one of these labels:
    - billing
    - shipping
    Answer in JSON as {"label": "<label>"}, the label spelt exactly as listed.
    >>> print(tasks.explain_prompt("filter", condition="asks for a refund"))
    Decide whether the text the user sends meets this condition: "asks for a refund"
    Answer in JSON as {"match": true} when it does, {"match": false} when it does not.
    """
    known = set(known_keywords())  # a task call's job keywords (max_tokens=, ...)
    own = inspect.signature(BUILDERS[task]).parameters if task in BUILDERS else {}
    for key in set(arguments) - known - set(own):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        if close and not difflib.get_close_matches(key, own, cutoff=0.75):
            msg = f"{task}() takes no argument {key!r} (did you mean {close[0]!r}?)"
            raise TypeError(msg)
    return build_task(
        task, {k: v for k, v in arguments.items() if k not in known}
    ).system


# -- running them -----------------------------------------------------------------------


def _texts(s: pl.Series, task: str) -> pl.Series:
    """A task's column of texts as String; a list or struct column is refused."""
    if isinstance(s.dtype, pl.List | pl.Array | pl.Struct) or s.dtype == pl.Binary:
        msg = (
            f"{task}() takes a column of texts (String), not {s.dtype}: give the "
            "text column (images go in images=)"
        )
        raise TypeError(msg)
    return s if s.dtype in (pl.String, pl.Null) else s.cast(pl.String)


class _TaskCompleter(Completer):
    """A :class:`Completer` whose column is a task's (its dtype and conversion)."""

    task: Task
    #: the column is the task's messages (images sent), not the texts
    task_messages: bool = False
    #: the error the task raised last (clearer than the engine's), or None
    task_error: BaseException | None = None

    def __init__(self, task: Task, **kw: Any) -> None:
        self.task = task
        super().__init__(**kw)
        # without output="struct", a run's warning points to on_error="raise"
        self._reports.update(struct=self._struct, call=f"chat.{task.name}")

    @property
    def _struct(self) -> bool:
        """``output="struct"``: complete's struct, the task's value in ``parsed``."""
        return self.options.output == "struct"

    @property
    def _return_dtype(self) -> pl.DataType:
        return super()._return_dtype if self._struct else self.task.dtype

    def _elementwise(self) -> bool:
        # filter() goes in .filter(): as an elementwise predicate, Polars would merge
        # it with the cheap filters before it and send it every row
        return self.task.name != "filter"

    def _series(self, s: pl.Series) -> pl.Series:
        if not self.task_messages:
            s = _texts(s, self.task.name)
        try:
            return super()._series(s)
        except UnsupportedParameterError as exc:
            if not (self.task.confidence and exc.param in ("logprobs", "include")):
                raise
            told = UnsupportedParameterError(
                "confidence=True asks for log-probabilities (logprobs), which this "
                "deployment refuses (a reasoning model does): drop confidence=True. "
                f"{exc}",
                param="logprobs",
                status_code=exc.status_code,
                request_id=exc.request_id,
                code=exc.code,
            )
            self.task_error = told  # held: Polars' copy of it finds it
            remember_for_polars(told)
            raise told from exc

    def _results_series(
        self, results: Sequence[ChatResult | None], name: str
    ) -> pl.Series:
        if self.task.field is None or self._struct:
            return super()._results_series(results, name)
        return self.task.column(results, name)


#: The tasks that take ``images=``.
_SEE_IMAGES = ("classify", "filter", "extract")


def _near_miss(task: Task, params: Mapping[str, Any]) -> None:
    """Refuse a keyword that is a misspelling of one of the task's own arguments.

    (The job's options and body fields are checked later, with their own hints; the
    task's arguments are not among them.)
    """
    own = list(inspect.signature(BUILDERS[task.name]).parameters)
    if task.name in _SEE_IMAGES:
        own += ["images", "detail"]
    known = set(known_keywords())
    for key in params:
        if key in known:
            continue
        if key in ("images", "detail"):
            msg = (
                f"{task.name}() takes no {key}=: the tasks that see images are "
                f"{', '.join(_SEE_IMAGES)}"
            )
            raise TypeError(msg)
        others = [
            name
            for name, builder in BUILDERS.items()
            if key in inspect.signature(builder).parameters and not key.startswith("_")
        ]
        if others and key not in own:
            takes = "takes" if len(others) == 1 else "take"
            msg = f"{task.name}() takes no {key}=: {', '.join(others)} {takes} it"
            raise TypeError(msg)
        close = difflib.get_close_matches(key, own, n=1, cutoff=0.75)
        if close:
            msg = (
                f"{task.name}() takes no argument {key!r} (did you mean {close[0]!r}?)"
            )
            raise TypeError(msg)


def _job_params(task: Task, params: Mapping[str, Any]) -> dict[str, Any]:
    """The job's keywords: the user's, the task's response format and log-probs."""
    for key in ("response_format", "system"):
        if key in params:
            hint = {
                "response_format": "the task sets it",
                "system": "the task's prompt is the system message: use instructions= "
                "or prompt=",
            }[key]
            msg = f"{task.name}() takes no {key}= ({hint})"
            raise TypeError(msg)
    if params.get("output") == "struct" and task.confidence:
        msg = (
            "confidence=True gives the task's own column: drop output='struct' (its "
            "rows' errors: on_error='raise'), or confidence"
        )
        raise ValueError(msg)
    _near_miss(task, params)
    out = {**params, "response_format": task.response_format}
    if task.confidence and params.get("logprobs") is False:
        msg = "confidence=True asks for logprobs: drop logprobs=False"
        raise ValueError(msg)
    if task.confidence:
        reasoning = [
            k for k in ("reasoning_effort", "max_completion_tokens") if k in params
        ]
        if reasoning:
            msg = (
                f"confidence=True needs log-probabilities, which reasoning models "
                f"refuse ({reasoning[0]}= says this job runs one); drop "
                "confidence=True, or use a chat model"
            )
            raise ValueError(msg)
        out["logprobs"] = True
    return out


def _run(
    task: Task,
    expr: str | pl.Expr,
    config: ChatConfig | None,
    client: openai.OpenAI | None,
    options: ChatOptions | None,
    params: Mapping[str, Any],
    *,
    images: pl.Expr | None = None,
    detail: str = "auto",
) -> pl.Expr:
    expr = pl.col(expr) if isinstance(expr, str) else expr
    if images is not None and not isinstance(images, pl.Expr):
        msg = (
            f"{task.name}(): images must be a pl.Expr (a column of images, such as "
            f"pl.col('photo')), not {type(images).__name__}"
        )
        raise TypeError(msg)
    fields = _job_params(task, params)
    if options is not None and options.output == "struct" and task.confidence:
        _job_params(task, {"output": "struct"})  # refused as the keyword is
    if options is not None and options.system is not None:
        msg = (
            f"{task.name}() takes no system (the task's prompt is the system message: "
            "use instructions= or prompt=); options= sets one"
        )
        raise TypeError(msg)
    if images is None:  # String prompts: the task's prompt is the system message
        job = _TaskCompleter(
            task,
            config=config,
            client=client,
            options=options,
            system=task.system,
            **fields,
        )
        return job.expr(expr)
    job = _TaskCompleter(task, config=config, client=client, options=options, **fields)
    job.task_messages = True
    return job.expr(
        messages(system=task.system, user=expr, images=images, detail=detail).alias(
            expr.meta.output_name(raise_if_undetermined=False) or "messages"
        )
    )


def classify(
    expr: str | pl.Expr,
    labels: Any,
    *,
    instructions: str | None = None,
    prompt: str | None = None,
    confidence: bool = False,
    images: pl.Expr | None = None,
    detail: str = "auto",
    config: ChatConfig | None = None,
    client: openai.OpenAI | None = None,
    options: ChatOptions | None = None,
    **params: Unpack[ChatOptionsDict],
) -> pl.Expr:
    """Put each row's text in one of ``labels``: an ``Enum`` column.

    Parameters
    ----------
    expr
        A column name or expression of texts (String; other dtypes are cast).
    labels
        The labels: a list of strings, a ``{label: description}`` dict (the
        descriptions go in the prompt), an ``enum.Enum`` class (its values) or a
        ``pl.Enum``. At least 2.
    instructions
        A line added to the prompt (:data:`CLASSIFY_PROMPT`).
    prompt
        Your own prompt instead of :data:`CLASSIFY_PROMPT` (``{labels}`` and
        ``{instructions}`` are filled in, ``{{labels}}`` writes ``{labels}``; other
        braces are left as they are).
    confidence
        Add the probability of the chosen label (see the module docstring): the
        column is then ``Struct{label, confidence}``.
    images
        Images sent with each row's text (as :func:`polars_azurechat.messages`
        takes them: URLs, bytes, or lists of either), with ``detail``.
    detail
        Azure's ``detail`` for the images.
    config, client, options
        As for :func:`polars_azurechat.complete`.
    **params
        Options and body fields, as for :func:`polars_azurechat.complete`
        (``max_tokens``, ``cache``, ``repair``, ...); not ``response_format``,
        ``system`` or ``output``.

    Returns
    -------
    pl.Expr
        ``Enum(labels)`` (null for a null or failed row), or ``Struct{label:
        Enum, confidence: Float64}``.

    Raises
    ------
    TypeError, ValueError
        Bad labels or arguments (before any request).

    Examples
    --------
    >>> import polars as pl
    >>> from polars_azurechat import tasks
    >>> df = pl.DataFrame(
    ...     {"ticket": ["Wrong billing address", "Parcel lost in shipping", None]}
    ... )
    >>> out = df.with_columns(
    ...     topic=tasks.classify("ticket", ["billing", "shipping"], max_tokens=20)
    ... )
    >>> out.schema["topic"]
    Enum(categories=['billing', 'shipping'])
    >>> out["topic"].to_list()
    ['billing', 'shipping', None]
    """
    task = BUILDERS["classify"](labels, instructions, prompt, confidence)
    return _run(
        task, expr, config, client, options, params, images=images, detail=detail
    )


def filter(  # the name users look for; the builtin is not used here
    expr: str | pl.Expr,
    condition: str,
    *,
    instructions: str | None = None,
    prompt: str | None = None,
    confidence: bool = False,
    images: pl.Expr | None = None,
    detail: str = "auto",
    config: ChatConfig | None = None,
    client: openai.OpenAI | None = None,
    options: ChatOptions | None = None,
    **params: Unpack[ChatOptionsDict],
) -> pl.Expr:
    """Whether each row's text meets ``condition``: a ``Boolean`` column.

    Use it in ``.filter()`` (a null or failed row is null: left out). Parameters as
    for :func:`classify` (the prompt is :data:`FILTER_PROMPT`, with ``{condition}``);
    ``confidence=True`` gives ``Struct{match, confidence}``.

    Parameters
    ----------
    expr
        A column name or expression of texts.
    condition
        What a row must meet, in words (``"asks for a refund"``).
    instructions, prompt, confidence, images, detail, config, client, options
        As for :func:`classify`.
    **params
        Options and body fields, as for :func:`polars_azurechat.complete`.

    Returns
    -------
    pl.Expr
        ``Boolean``, or ``Struct{match: Boolean, confidence: Float64}``.

    Examples
    --------
    >>> import polars as pl
    >>> from polars_azurechat import tasks
    >>> df = pl.DataFrame({"ticket": ["Please refund my order", "Love the app"]})
    >>> df.filter(tasks.filter("ticket", "asks for a refund", max_tokens=20))
    shape: (1, 1)
    ┌────────────────────────┐
    │ ticket                 │
    │ ---                    │
    │ str                    │
    ╞════════════════════════╡
    │ Please refund my order │
    └────────────────────────┘
    """
    task = BUILDERS["filter"](condition, instructions, prompt, confidence)
    return _run(
        task, expr, config, client, options, params, images=images, detail=detail
    )


def sentiment(
    expr: str | pl.Expr,
    *,
    instructions: str | None = None,
    prompt: str | None = None,
    confidence: bool = False,
    labels: Any = SENTIMENT_LABELS,
    config: ChatConfig | None = None,
    client: openai.OpenAI | None = None,
    options: ChatOptions | None = None,
    **params: Unpack[ChatOptionsDict],
) -> pl.Expr:
    """The sentiment of each row's text: ``Enum(["positive", "neutral", "negative"])``.

    :func:`classify` with :data:`SENTIMENT_PROMPT` and :data:`SENTIMENT_LABELS`
    (``labels=`` changes them, e.g. a 5-point scale).

    Parameters
    ----------
    expr
        A column name or expression of texts.
    instructions, prompt, confidence, labels, config, client, options
        As for :func:`classify`.
    **params
        Options and body fields, as for :func:`polars_azurechat.complete`.

    Returns
    -------
    pl.Expr
        ``Enum`` of the labels, or ``Struct{label, confidence}``.

    Examples
    --------
    >>> import polars as pl
    >>> from polars_azurechat import tasks
    >>> df = pl.DataFrame({"review": ["A positive surprise", "negative, sadly"]})
    >>> df.select(tasks.sentiment("review", max_tokens=20))["review"].to_list()
    ['positive', 'negative']
    """
    task = BUILDERS["sentiment"](instructions, prompt, confidence, labels)
    return _run(task, expr, config, client, options, params)


def extract(
    expr: str | pl.Expr,
    schema: Any,
    *,
    instructions: str | None = None,
    prompt: str | None = None,
    images: pl.Expr | None = None,
    detail: str = "auto",
    config: ChatConfig | None = None,
    client: openai.OpenAI | None = None,
    options: ChatOptions | None = None,
    **params: Unpack[ChatOptionsDict],
) -> pl.Expr:
    """Pull the fields of ``schema`` out of each row's text: a ``Struct`` column.

    ``complete``'s typed answers with :data:`EXTRACT_PROMPT` as the system message.

    Parameters
    ----------
    expr
        A column name or expression of texts.
    schema
        The fields: a pydantic model, a JSON-schema dict or a ``pl.Struct`` (as
        ``response_format`` takes them).
    instructions, prompt, images, detail, config, client, options
        As for :func:`classify`.
    **params
        Options and body fields, as for :func:`polars_azurechat.complete`.

    Returns
    -------
    pl.Expr
        The schema's ``Struct`` (``unnest`` it for columns).

    Examples
    --------
    >>> import polars as pl
    >>> from polars_azurechat import tasks
    >>> df = pl.DataFrame({"note": ["What is 6 x 7?"]})
    >>> q = df.lazy().select(
    ...     tasks.extract("note", pl.Struct({"total": pl.Int64}), max_tokens=30)
    ... )
    >>> q.collect_schema()["note"]
    Struct({'total': Int64})
    >>> q.collect().unnest("note")["total"].to_list()
    [42]
    """
    task = BUILDERS["extract"](schema, instructions, prompt)
    return _run(
        task, expr, config, client, options, params, images=images, detail=detail
    )


def summarize(
    expr: str | pl.Expr,
    *,
    max_words: int = 50,
    instructions: str | None = None,
    prompt: str | None = None,
    config: ChatConfig | None = None,
    client: openai.OpenAI | None = None,
    options: ChatOptions | None = None,
    **params: Unpack[ChatOptionsDict],
) -> pl.Expr:
    """A summary of each row's text in at most ``max_words`` words: ``String``.

    The bound is asked in the prompt (:data:`SUMMARIZE_PROMPT`), not enforced: set
    ``max_tokens`` to bound the cost.

    Parameters
    ----------
    expr
        A column name or expression of texts.
    max_words
        The summary's length, in words.
    instructions, prompt, config, client, options
        As for :func:`classify`.
    **params
        Options and body fields, as for :func:`polars_azurechat.complete`.

    Returns
    -------
    pl.Expr
        ``String``.

    Examples
    --------
    >>> import polars as pl
    >>> from polars_azurechat import tasks
    >>> df = pl.DataFrame({"text": ["The parcel came late and the box was torn"]})
    >>> df.select(tasks.summarize("text", max_words=5, max_tokens=40)).dtypes
    [String]
    """
    task = BUILDERS["summarize"](max_words, instructions, prompt)
    return _run(task, expr, config, client, options, params)


def translate(
    expr: str | pl.Expr,
    to: str,
    *,
    instructions: str | None = None,
    prompt: str | None = None,
    config: ChatConfig | None = None,
    client: openai.OpenAI | None = None,
    options: ChatOptions | None = None,
    **params: Unpack[ChatOptionsDict],
) -> pl.Expr:
    """Each row's text translated into the language ``to``: ``String``.

    Parameters
    ----------
    expr
        A column name or expression of texts.
    to
        The target language, in words (``"French"``, ``"Brazilian Portuguese"``).
    instructions, prompt, config, client, options
        As for :func:`classify`.
    **params
        Options and body fields, as for :func:`polars_azurechat.complete`.

    Returns
    -------
    pl.Expr
        ``String``.

    Examples
    --------
    >>> import polars as pl
    >>> from polars_azurechat import tasks
    >>> df = pl.DataFrame({"text": ["Good morning"]})
    >>> print(tasks.explain_prompt("translate", to="French").splitlines()[0])
    Translate the text the user sends into French. Keep its meaning, tone and formatting; translate nothing else.
    >>> df.select(tasks.translate("text", to="French", max_tokens=40)).dtypes
    [String]
    """
    task = BUILDERS["translate"](to, instructions, prompt)
    return _run(task, expr, config, client, options, params)


def plan(
    task: str,
    data: pl.Series | Sequence[Any],
    *,
    images: pl.Series | Sequence[Any] | None = None,
    detail: str = "auto",
    **arguments: Any,
) -> Plan:
    """Estimate a task without sending anything (:func:`polars_azurechat.plan`).

    Parameters
    ----------
    task
        The task's name (see :func:`explain_prompt`).
    data
        The texts (a ``pl.Series`` or a list).
    images
        The rows' images, if the task sends them (a ``pl.Series`` or a list).
    detail
        Azure's ``detail`` for the images (``low`` counts 85 tokens an image).
    **arguments
        The task's own arguments (``labels=``, ...), then :func:`polars_azurechat.plan`'s
        (``model``, ``latency_s``, options and body fields such as ``max_tokens``).

    Returns
    -------
    Plan

    Examples
    --------
    >>> import polars as pl
    >>> from polars_azurechat import tasks
    >>> p = tasks.plan(
    ...     "classify",
    ...     pl.Series(["Wrong invoice", "Wrong invoice", "Lost parcel"]),
    ...     labels=["billing", "shipping"],
    ...     max_tokens=20,
    ... )
    >>> p.requests, p.rows["prompt_tokens"].null_count()
    (2, 0)
    """
    from polars_azurechat.plan import plan as plan_job

    if task not in BUILDERS:
        build_task(task, {})  # raises, naming the tasks
    if images is not None and task not in _SEE_IMAGES:  # as the task itself refuses
        msg = (
            f"{task}() takes no images=: the tasks that see images are "
            f"{', '.join(_SEE_IMAGES)}"
        )
        raise TypeError(msg)
    if images is not None and not isinstance(images, pl.Series):
        if isinstance(images, pl.Expr | str | bytes) or not isinstance(
            images, Sequence
        ):
            msg = (
                "images must be a pl.Series (or a list) of the rows' images, not "
                f"{type(images).__name__}"
            )
            raise TypeError(msg)
        images = pl.Series("images", list(images))
    own = set(inspect.signature(BUILDERS[task]).parameters)
    spec = build_task(task, {k: v for k, v in arguments.items() if k in own})
    params = _job_params(spec, {k: v for k, v in arguments.items() if k not in own})
    texts = data if isinstance(data, pl.Series) else pl.Series("text", list(data))
    frame = pl.DataFrame({"text": _texts(texts, task)})
    if images is not None:
        frame = frame.with_columns(images.alias("images"))
    rows = frame.select(
        messages(
            system=spec.system,
            user=pl.col("text"),
            images=None if images is None else pl.col("images"),
            detail=detail,
        )
    ).to_series()
    return plan_job(rows, **params)
