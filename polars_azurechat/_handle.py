"""What the job objects (:class:`~polars_azurechat.Completer`, :class:`~polars_azurechat.Embedder`) share. Internal.

A ``with`` block closes the job; the repr names the deployment and the host (never the
key) and what else the job says of itself.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from polars_azurechat.engine.core import ChatEngine
    from polars_azurechat.engine.progress import ProgressBar


class JobHandle:
    """A job's ``with`` block and repr; the job gives its engine and its closing."""

    engine: ChatEngine
    _bar: ProgressBar | None

    def _described(self) -> str:
        """What the repr adds after the deployment and the host (``""``: nothing)."""
        return ""

    def __repr__(self) -> str:
        t = self.engine.transport
        more = self._described()
        return (
            f"{type(self).__name__}(deployment={t.deployment!r}, "
            f"host={t.endpoint_host!r}{', ' + more if more else ''})"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the job's connections, cache and progress bar (it cannot be used after)."""
        if self._bar is not None:
            self._bar.close()
        self._close_more()
        self.engine.close()

    def _close_more(self) -> None:
        """What the job closes besides its progress bar and its engine."""
