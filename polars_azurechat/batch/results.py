"""A finished batch's output and error files, back to per-row results. Not meant for outside use.

A finished batch's output and error files are downloaded and every line joined back to
its key by ``custom_id`` (the order of lines is not the input's). A line's
``response.body`` is read as the online path reads a body
(:func:`~polars_azurechat.transport.http.parse_completion`, or
:func:`~polars_azurechat.transport.responses.parse_response` for Responses API
batches), an error status as
:func:`~polars_azurechat.transport.status.status_error` maps it. Rows an expired or
cancelled batch never answered get a :class:`~polars_azurechat.errors.BatchIncompleteError`;
rows of a batch that failed (validation, a quota it can never fit) get a
:class:`~polars_azurechat.errors.BatchFailedError` naming Azure's reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from polars_azurechat._types import ChatResult
from polars_azurechat.batch.api import RESPONSES_URL
from polars_azurechat.errors import (
    AzureChatError,
    BatchFailedError,
    BatchIncompleteError,
    MalformedResponseError,
)
from polars_azurechat.transport.http import mark_emptied, parse_completion
from polars_azurechat.transport.responses import parse_response
from polars_azurechat.transport.status import status_error

if TYPE_CHECKING:
    from polars_azurechat.batch.api import Api
    from polars_azurechat.schema.output import OutputSchema

__all__ = ["ResultReader"]

logger = logging.getLogger(__name__)

_INCOMPLETE_CODES = frozenset({"batch_expired", "batch_cancelled"})


class ResultReader:
    """Reads what a finished batch holds for each of its rows.

    Parameters
    ----------
    api
        Where the output and error files are downloaded from.
    deployment, host
        The batch deployment and the endpoint's host, named in the errors.
    schema
        The typed answer's schema, or ``None``: each answer is then parsed and
        validated, as online.
    max_tokens
        The requests' ``max_tokens`` (or ``max_completion_tokens``), ``None`` if not
        set: an answer cut there is truncated.
    on_truncated
        ``"error"`` makes an answer cut at ``max_tokens`` a :class:`TruncatedError`.
    """

    def __init__(
        self,
        api: Api,
        *,
        deployment: str,
        host: str,
        schema: OutputSchema | None,
        max_tokens: Any,
        on_truncated: Literal["keep", "error"],
    ) -> None:
        self.api = api
        # the Responses API's lines are read as its online answers are
        responses = api.endpoint == RESPONSES_URL
        self._parse = parse_response if responses else parse_completion
        self.deployment = deployment
        self.host = host
        self.schema = schema
        self.max_tokens = max_tokens
        self.on_truncated = on_truncated

    def failed_rows(
        self, keys: Sequence[str], batch_id: str, errors: Sequence[Any]
    ) -> dict[str, AzureChatError | ChatResult]:
        """Each row's error for a batch that failed: its own line's, else the batch's."""
        described = (
            "; ".join(
                f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "")
                for e in errors[:3]
            )
            or "no reason given"
        )
        first = errors[0] if errors else None
        out: dict[str, AzureChatError | ChatResult] = {}
        for key in keys:
            out[key] = BatchFailedError(
                f"batch {batch_id} failed validation: {described}",
                batch_id=batch_id,
                code=str(first.code) if first is not None else None,
            )
        for e in errors:
            line = getattr(e, "line", None)
            if isinstance(line, int) and 1 <= line <= len(keys):
                out[keys[line - 1]] = BatchFailedError(
                    f"batch {batch_id} failed validation at this row's line {line}: "
                    f"{e.code}: {e.message}",
                    batch_id=batch_id,
                    code=str(e.code),
                    line=line,
                )
        return out

    def collect(
        self, keys: Sequence[str], batch: Any, status: str, *, page: int = 4096
    ) -> Iterator[dict[str, AzureChatError | ChatResult]]:
        """Join the output and error files' lines back to the chunk's ``keys``.

        The files are read as they download and the results given ``page`` at a
        time (then the keys no line answered, with why): memory holds a page.
        """
        batch_id = str(batch.id)
        missing = set(keys)
        found: dict[str, AzureChatError | ChatResult] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for raw in self.api.lines(str(file_id)):
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                    custom_id = str(line["custom_id"])
                except (ValueError, KeyError, TypeError):
                    logger.warning("batch %s: an unreadable output line", batch_id)
                    continue
                found[custom_id] = self.line_result(line, batch_id)
                missing.discard(custom_id)
                if len(found) >= page:
                    yield found
                    found = {}
        for key in keys:
            if key not in missing:
                continue
            if status in ("expired", "cancelled"):
                found[key] = BatchIncompleteError(
                    f"batch {batch_id} {status} before this request was answered",
                    batch_id=batch_id,
                    status=status,
                )
            else:
                found[key] = BatchFailedError(
                    f"batch {batch_id} {status} without a line for this request",
                    batch_id=batch_id,
                )
            if len(found) >= page:
                yield found
                found = {}
        if found:
            yield found

    def line_result(self, line: Any, batch_id: str) -> AzureChatError | ChatResult:
        """One output or error line as a result (or the error it carries)."""
        response = line.get("response") if isinstance(line, dict) else None
        error = line.get("error") if isinstance(line, dict) else None
        if isinstance(response, dict):
            code = response.get("status_code")
            request_id = response.get("request_id")
            headers = {"apim-request-id": str(request_id)} if request_id else {}
            raw = json.dumps(response.get("body")).encode()
            if code == 200:
                try:
                    completion = self._parse(raw, headers)
                    mark_emptied(completion)
                except MalformedResponseError as exc:
                    return exc
                return self.answer(completion)
            if isinstance(code, int):
                return status_error(
                    code, headers, raw, self.deployment, self.host, batch=True
                )
        if isinstance(error, dict):
            code_text = str(error.get("code"))
            message = str(error.get("message"))
            if code_text in _INCOMPLETE_CODES:
                status = code_text.removeprefix("batch_")
                return BatchIncompleteError(
                    f"batch {batch_id} {status} before this request was answered "
                    f"({message})",
                    batch_id=batch_id,
                    status=status,
                )
            return BatchFailedError(
                f"batch {batch_id}: the request failed ({code_text}): {message}",
                batch_id=batch_id,
                code=code_text,
            )
        return MalformedResponseError(
            f"batch {batch_id}: an output line without a response or an error"
        )

    def answer(self, completion: Any) -> ChatResult:
        """A completion as a row's result (the online path's rules), with provenance.

        A filtered answer is a :class:`ContentFilterError`, a refusal a
        :class:`RefusalError`, a truncated typed answer (or any truncated one with
        ``on_truncated="error"``) a :class:`TruncatedError`, and a typed answer that
        does not validate a :class:`SchemaValidationError` (not sent again: a batch
        line has one attempt).
        """
        from polars_azurechat.engine.online import (
            answer_error,
            completed,
            invalid_answer,
        )

        parsed: dict[str, Any] | None = None
        rid = completion.request_id
        schema = self.schema
        exception = answer_error(
            completion,
            typed=schema is not None,
            max_tokens=self.max_tokens,
            on_truncated=self.on_truncated,
        )
        if exception is None and schema is not None:
            try:
                parsed = schema.parse(_content_of(completion.content))
            except Exception as err:  # noqa: BLE001 - a user's validator may raise anything
                exception = invalid_answer(schema.name, err, rid)
        return completed(completion, parsed, 1, exception, deployment=self.deployment)


def _content_of(content: str | None) -> str:
    """A typed answer's text; no content at all is a mismatch (as online)."""
    if content is None:
        from polars_azurechat.schema.errors import SchemaMismatchError

        raise SchemaMismatchError("the answer has no content", json_error=True)
    return content
