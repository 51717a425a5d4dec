"""Answer every row of a Polars column with Azure OpenAI chat completions.

Importing this package registers the ``chat`` expression namespace::

    df.with_columns(answer=pl.col("messages").chat.complete(max_tokens=20))
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from polars_azurechat import namespace as _namespace  # registers `.chat`
from polars_azurechat._schema import OutputSchema
from polars_azurechat.config import ChatConfig
from polars_azurechat.deployments import Deployment, load_deployments
from polars_azurechat.errors import (
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
    RefusalError,
    RequestError,
    RowError,
    SchemaValidationError,
    ServerError,
    SpendingCapError,
    TruncatedError,
)
from polars_azurechat.functions import Completer, complete, complete_many
from polars_azurechat.options import ChatOptions
from polars_azurechat.plan import Plan, plan
from polars_azurechat.prompts import messages
from polars_azurechat.summary import RunSummary

try:
    __version__ = version("polars-azurechat")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
del _namespace

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
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
    "InputError",
    "LimiterError",
    "MalformedResponseError",
    "NotFoundError",
    "OutputSchema",
    "Plan",
    "PoolUnavailableError",
    "RateLimitError",
    "RefusalError",
    "RequestError",
    "RowError",
    "RunSummary",
    "SchemaValidationError",
    "ServerError",
    "SpendingCapError",
    "TruncatedError",
    "__version__",
    "complete",
    "complete_many",
    "load_deployments",
    "messages",
    "plan",
]
