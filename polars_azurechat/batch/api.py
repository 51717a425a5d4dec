"""The openai SDK calls batch mode makes, and their errors. Not meant for outside use.

:class:`Api` wraps an ``openai.AzureOpenAI`` client, or an ``AsyncAzureOpenAI`` one
(whose calls then run on the process's background loop), for the ``files`` and
``batches`` resources; every SDK error comes out as the package's own
(:func:`~polars_azurechat.transport.status.sdk_errors`). A 404 on a file or a batch
means it is gone; a 3xx (:class:`~polars_azurechat.errors.RedirectError`, a kind of
404) is raised as it is.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

from polars_azurechat.engine import loop as _loop
from polars_azurechat.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
    NotFoundError,
    RateLimitError,
    RedirectError,
    ServerError,
)
from polars_azurechat.transport.status import sdk_errors

__all__ = [
    "BATCH_URL",
    "EXPIRES_AFTER",
    "FILE_EXPIRY_S",
    "RESPONSES_URL",
    "STRUCTURED_API_VERSION",
    "TRANSIENT",
    "Api",
    "check_api_version",
]

#: The url of every line, and the batch's endpoint (chat completions).
BATCH_URL = "/chat/completions"
#: The same for the Responses API (Azure takes it on the v1 API only).
RESPONSES_URL = "/v1/responses"
#: How long every file the package uploads, and every output and error file of its
#: batches, lives on the server: 14 days (Azure takes 14 to 30), far past a batch's
#: 24-hour completion window. The job deletes them as soon as their answers are in
#: the cache; the expiry is for the files of a job that never got that far.
FILE_EXPIRY_S = 14 * 24 * 3600
#: The expiry policy sent as ``expires_after`` and ``output_expires_after`` (Azure
#: takes 14 to 30 days; with expiries a resource may hold 10,000 files, not 500).
EXPIRES_AFTER: dict[str, Any] = {"anchor": "created_at", "seconds": FILE_EXPIRY_S}
#: The first classic api-version that takes expiries (the v1 API takes them); an
#: older one gets none: the job's own deletes still clean up.
EXPIRY_API_VERSION = "2025-03-01"
#: Structured outputs in batches need this api-version or a later one.
STRUCTURED_API_VERSION = "2024-08-01"
#: The errors of a call that may well succeed when made again (a poll is retried).
TRANSIENT = (APIConnectionError, APITimeoutError, RateLimitError, ServerError)


class Api:
    """The SDK calls batch mode makes, sync or async client alike, errors mapped.

    Parameters
    ----------
    client
        An ``openai.AzureOpenAI`` (or ``AsyncAzureOpenAI``) client of the resource.
    deployment
        The batch deployment, named in the errors.
    endpoint
        The batches' endpoint: :data:`BATCH_URL`, or :data:`RESPONSES_URL`.
    """

    def __init__(
        self, client: Any, deployment: str, *, endpoint: str = BATCH_URL
    ) -> None:
        import openai

        self.client = client
        self.deployment = deployment
        self.endpoint = endpoint
        self.is_async = isinstance(client, openai.AsyncOpenAI)
        self.host = str(client.base_url.host)
        version = getattr(client, "_api_version", None)
        self.api_version = str(version) if version else None
        #: what uploads and batches are sent to expire them (none: an api-version
        #: older than :data:`EXPIRY_API_VERSION`)
        self.expiry = (
            EXPIRES_AFTER
            if self.api_version is None or self.api_version >= EXPIRY_API_VERSION
            else None
        )

    def _run(self, call: Callable[[], Any]) -> Any:
        with sdk_errors(self.deployment, self.host):
            result = call()
            if self.is_async:
                result = _loop.call(_awaited(result))
        return result

    def upload(self, name: str, data: bytes | IO[bytes]) -> Any:
        """Upload ``data`` as a file named ``name`` (``purpose="batch"``).

        A file object is read as it is sent (httpx streams a multipart file part).
        The file expires :data:`FILE_EXPIRY_S` after its upload (see ``expiry``).
        """
        extra = {} if self.expiry is None else {"expires_after": self.expiry}
        return self._run(
            lambda: self.client.files.create(
                file=(name, data), purpose="batch", **extra
            )
        )

    def delete(self, file_id: str) -> bool:
        """Delete the file ``file_id``: ``True``, or ``False`` if it was already gone."""
        try:
            self._run(lambda: self.client.files.delete(file_id))
        except RedirectError:
            raise  # not a file that is gone: the endpoint sends elsewhere
        except NotFoundError:
            return False
        return True

    def file(self, file_id: str) -> Any | None:
        """The file ``file_id``, or ``None`` if the server no longer has it."""
        try:
            return self._run(lambda: self.client.files.retrieve(file_id))
        except RedirectError:
            raise  # not a file or batch that is gone: the endpoint sends elsewhere
        except NotFoundError:
            return None

    def files(self) -> list[Any]:
        """Every file of ``purpose="batch"`` on the resource."""
        return self._list(lambda: self.client.files.list(purpose="batch"))

    def content(self, file_id: str) -> bytes:
        """The content of the file ``file_id`` (an output or error file)."""
        if self.is_async:
            return bytes(self._run(lambda: _async_content(self.client, file_id)))
        return bytes(self._run(lambda: self.client.files.content(file_id).content))

    def lines(self, file_id: str) -> Iterator[bytes]:
        """The lines of the file ``file_id``, read as they arrive (a sync client).

        An async client's file is downloaded whole first, then cut into lines as
        they are read.
        """
        if self.is_async:
            yield from io.BytesIO(self.content(file_id))
            return
        with (
            sdk_errors(self.deployment, self.host),
            self.client.files.with_streaming_response.content(file_id) as response,
        ):
            rest = b""
            try:
                for part in response.iter_bytes(1 << 16):
                    lines = (rest + part).split(b"\n")
                    rest = lines.pop()
                    yield from lines
            except _transport_errors() as exc:
                msg = f"connection to {self.host} failed: {type(exc).__name__}"
                raise APIConnectionError(msg) from exc
            if rest:
                yield rest

    def create(self, file_id: str, metadata: dict[str, str]) -> Any:
        """Create a batch (24 hours) of the input file ``file_id``, with ``metadata``.

        Its output and error files expire :data:`FILE_EXPIRY_S` after they are made
        (see ``expiry``).
        """
        extra = {} if self.expiry is None else {"output_expires_after": self.expiry}
        return self._run(
            lambda: self.client.batches.create(
                input_file_id=file_id,
                endpoint=self.endpoint,
                completion_window="24h",
                metadata=metadata,
                **extra,
            )
        )

    def batch(self, batch_id: str) -> Any | None:
        """The batch ``batch_id``, or ``None`` if the server no longer has it."""
        try:
            return self._run(lambda: self.client.batches.retrieve(batch_id))
        except RedirectError:
            raise  # not a file or batch that is gone: the endpoint sends elsewhere
        except NotFoundError:
            return None

    def batches(self) -> list[Any]:
        """The batches of the resource (the SDK's pages, up to 100 each, all read)."""
        return self._list(lambda: self.client.batches.list(limit=100))

    def cancel(self, batch_id: str) -> Any | None:
        """Ask to cancel ``batch_id``; ``None`` if it is gone or has already ended."""
        try:
            return self._run(lambda: self.client.batches.cancel(batch_id))
        except RedirectError:
            raise  # not a file or batch that is gone: the endpoint sends elsewhere
        except NotFoundError:
            return None
        except APIStatusError as exc:
            if exc.status_code == 409:  # it ended meanwhile
                return None
            raise

    def _list(self, make: Callable[[], Any]) -> list[Any]:
        if self.is_async:
            return list(self._run(lambda: _async_list(make())))
        return list(self._run(lambda: list(make())))


def check_api_version(version: str | None, params: Mapping[str, Any]) -> None:
    """Refuse a json-schema ``response_format`` with an api-version too old for it.

    Raises
    ------
    ConfigurationError
        ``params`` asks for structured outputs and ``version`` is older than
        :data:`STRUCTURED_API_VERSION`.
    """
    schema = params.get("response_format")
    if (
        version
        and isinstance(schema, Mapping)
        and schema.get("type") == "json_schema"
        and version[:10] < STRUCTURED_API_VERSION
    ):
        raise ConfigurationError(
            f"structured outputs in batches need api-version {STRUCTURED_API_VERSION} "
            f"or later; the client uses {version}"
        )


def check_responses_client(client: Any) -> None:
    """Refuse a client not on the v1 API for Responses API batches.

    Azure's Global Batch takes ``/v1/responses`` lines only through the v1 API
    (``<resource>/openai/v1/``): a classic ``AzureOpenAI`` client (an api-version)
    cannot create them.

    Raises
    ------
    ConfigurationError
        ``client``'s base URL is not the v1 API's.
    """
    base = str(client.base_url).rstrip("/")
    if not base.endswith("/openai/v1"):
        msg = (
            "mode='batch' with api='responses' needs the v1 API: Azure's Global Batch "
            "takes /v1/responses lines only there. Give config=ChatConfig(...) (batch "
            "mode then uses the v1 API itself), or client=openai.OpenAI(base_url="
            "'https://<resource>.openai.azure.com/openai/v1/', ...), not "
            f"{type(client).__name__} on {client.base_url.host}{client.base_url.path}"
        )
        raise ConfigurationError(msg)


def _transport_errors() -> tuple[type[Exception], ...]:
    """The errors of a connection failing while a file downloads (the SDK's httpx)."""
    import openai

    module = getattr(openai, "_httpx", None)  # httpx, or httpx2 in later SDKs
    error = getattr(module, "TransportError", None)
    return (error,) if isinstance(error, type) and issubclass(error, Exception) else ()


async def _awaited(value: Any) -> Any:
    return await value


async def _async_list(pager: Any) -> list[Any]:
    return [item async for item in pager]


async def _async_content(client: Any, file_id: str) -> bytes:
    response = await client.files.content(file_id)
    return bytes(response.content)
