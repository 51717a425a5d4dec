"""Answer every row of a Polars column with Azure OpenAI chat completions.

Importing this package registers the ``chat`` expression namespace::

    df.with_columns(answer=pl.col("messages").chat.complete(max_tokens=20))
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from polars_azurechat import namespace as _namespace  # registers `.chat`
from polars_azurechat.config import ChatConfig
from polars_azurechat.embeddings import Embedder, embed, embed_many
from polars_azurechat.engine import warm as _warm
from polars_azurechat.errors import (
    AnswerConversionError,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    AzureChatError,
    BadRequestError,
    BatchFailedError,
    BatchIncompleteError,
    CacheError,
    CompletionFailed,
    ConfigurationError,
    ContentFilterError,
    ContextLengthError,
    DeadlineExceededError,
    InputError,
    LimiterError,
    MalformedResponseError,
    NotFoundError,
    PoolUnavailableError,
    RateLimitError,
    RedirectError,
    RefusalError,
    RequestError,
    RowError,
    SchemaValidationError,
    ServerError,
    SpendingCapError,
    TruncatedError,
    UnsupportedParameterError,
)
from polars_azurechat.functions import Completer, complete, complete_many
from polars_azurechat.options import ChatOptions
from polars_azurechat.plan import Plan, plan
from polars_azurechat.summary import RunSummary

if TYPE_CHECKING:
    from polars_azurechat import tasks as tasks
    from polars_azurechat.deployments import Deployment, load_deployments
    from polars_azurechat.prompts import messages
    from polars_azurechat.schema.output import OutputSchema
    from polars_azurechat.vectors import cosine_similarity, top_k, top_k_many

    __version__: str

#: Names loaded on first use (each costs import time a job may never need).
#: (``plan`` is not among them: importing the submodule ``polars_azurechat.plan``
#: would set the package's ``plan`` to the module.)
#: (the vectors' functions load numpy: a job that only embeds or chats never does.)
_LAZY = {
    "Deployment": "polars_azurechat.deployments",
    "load_deployments": "polars_azurechat.deployments",
    "messages": "polars_azurechat.prompts",
    "OutputSchema": "polars_azurechat.schema.output",
    "cosine_similarity": "polars_azurechat.vectors",
    "top_k": "polars_azurechat.vectors",
    "top_k_many": "polars_azurechat.vectors",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value: Any = version("polars-azurechat")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0.0.0"
    elif name in _SUBMODULES:  # ``pac.tasks.classify``: the module, on first use
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *_SUBMODULES, "__version__"])


#: Public submodules reachable as attributes without an import of their own.
_SUBMODULES = frozenset({"tasks"})

logging.getLogger(__name__).addHandler(logging.NullHandler())
del _namespace
_warm.start()  # a job's heavier imports, on a daemon thread (POLARS_AZURECHAT_PREWARM=0)

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AnswerConversionError",
    "AuthenticationError",
    "AzureChatError",
    "BadRequestError",
    "BatchFailedError",
    "BatchIncompleteError",
    "CacheError",
    "ChatConfig",
    "ChatOptions",
    "Completer",
    "CompletionFailed",
    "ConfigurationError",
    "ContentFilterError",
    "ContextLengthError",
    "DeadlineExceededError",
    "Deployment",
    "Embedder",
    "InputError",
    "LimiterError",
    "MalformedResponseError",
    "NotFoundError",
    "OutputSchema",
    "Plan",
    "PoolUnavailableError",
    "RateLimitError",
    "RedirectError",
    "RefusalError",
    "RequestError",
    "RowError",
    "RunSummary",
    "SchemaValidationError",
    "ServerError",
    "SpendingCapError",
    "TruncatedError",
    "UnsupportedParameterError",
    "__version__",
    "complete",
    "complete_many",
    "cosine_similarity",
    "embed",
    "embed_many",
    "load_deployments",
    "messages",
    "plan",
    "top_k",
    "top_k_many",
]
