"""One batch of the emulator's Global Batch API: its record, its answers, its JSON.

The service (``emulator/_batch.py``) moves a :class:`Batch` through its statuses over
its clock; the record keeps what the batch answered (the lines of its output and error
files) and renders the batch object the endpoints answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

from polars_azurechat.emulator._batch_lines import Line

__all__ = ["Batch"]

_NOT_ANSWERED = {
    "cancelled": (
        "batch_cancelled",
        "This request could not be executed before the batch was cancelled.",
    ),
    "expired": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
}


@dataclasses.dataclass
class Batch:
    """A batch: its lines, its status and times (on the clock), what it answered."""

    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, str] | None
    created: float  # on the clock
    model: str | None
    lines: list[Line]
    order: list[int]
    tokens: int
    problems: list[dict[str, Any]]
    status: str = "validating"
    times: dict[str, float] = dataclasses.field(default_factory=dict)
    done: int = 0  # positions of ``order`` handled
    due: float = 0.0  # when the last answered line ended, on the clock
    answered: set[int] = dataclasses.field(default_factory=set)
    output: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    completed: int = 0
    failed: int = 0
    error_data: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    #: ``output_expires_after.seconds``: the output and error files expire then
    output_expires_s: float | None = None
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    def add_answer(self, line: Line, status: int, request_id: str, body: Any) -> None:
        """Record ``line`` answered: to the output file if ``status`` is 200, else errors."""
        out = {
            "id": f"batch_req_{uuid.uuid4().hex}",
            "custom_id": line.custom_id,
            "response": {
                "status_code": status,
                "request_id": request_id,
                "body": body,
            },
            "error": None,
        }
        if status == 200:
            self.output.append(out)
            self.completed += 1
        else:
            self.errors.append(out)
            self.failed += 1

    def add_not_answered(self, status: str) -> None:
        """Record the lines never answered as errors, if the batch ends ``status``.

        A batch ``cancelled`` or ``expired`` has them; one ``completed`` has none.
        """
        code_message = _NOT_ANSWERED.get(status)
        if code_message is not None:
            code, message = code_message
            for index, line in enumerate(self.lines):
                if index not in self.answered:
                    self.errors.append(
                        {
                            "id": f"batch_req_{uuid.uuid4().hex}",
                            "custom_id": line.custom_id,
                            "response": None,
                            "error": {"code": code, "message": message},
                        }
                    )
                    self.failed += 1

    def as_json(
        self, epoch: Callable[[float], int], completion_window_s: float
    ) -> dict[str, Any]:
        """The batch object, times on the clock given as Unix seconds by ``epoch``."""

        def at(name: str) -> int | None:
            t = self.times.get(name)
            return None if t is None else epoch(t)

        validated = self.status != "validating" and self.error_data is None
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": (
                None
                if self.error_data is None
                else {"object": "list", "data": self.error_data}
            ),
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": epoch(self.created),
            "in_progress_at": at("in_progress"),
            "expires_at": epoch(self.created + completion_window_s),
            "finalizing_at": at("finalizing"),
            "completed_at": at("completed"),
            "failed_at": at("failed"),
            "expired_at": at("expired"),
            "cancelling_at": at("cancelling"),
            "cancelled_at": at("cancelled"),
            "request_counts": {
                "total": len(self.lines) if validated else 0,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
        }
