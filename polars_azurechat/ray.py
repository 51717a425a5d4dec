"""Ray Data: answer a column of a ``ray.data.Dataset`` where the data lives.

``pip install "polars-azurechat[ray]"``; this module imports Ray only when used.

Each Ray worker runs one job (a :class:`~polars_azurechat.Completer`: its own engine,
connections and event loop) for all the batches it is given; a batch goes from Arrow
to Polars and back without a Python loop over rows, and its answers are aligned with
its rows as in Polars. Workers share one quota and one cache when the job is given
``limiter="redis://..."`` and ``cache="redis://..."``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Unpack

from polars_azurechat.config import ChatConfig
from polars_azurechat.options import ChatOptions, ChatOptionsDict

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

__all__ = ["complete"]

logger = logging.getLogger(__name__)


def complete(
    dataset: ray.data.Dataset,
    *,
    column: str = "messages",
    output_column: str = "answer",
    config: ChatConfig | None = None,
    workers: int = 2,
    batch_size: int | None = 4096,
    **params: Unpack[ChatOptionsDict],
) -> ray.data.Dataset:
    """Add ``output_column`` with the answer to each row's ``column``.

    Parameters
    ----------
    dataset
        The rows; ``column`` holds prompts (String) or message lists
        (``List(Struct{role, content})``), as for ``pl.col(column).chat.complete``.
    column, output_column
        Where the prompts are, and the name of the answers' column.
    config
        Where and how to reach Azure (``None``: each worker reads its environment and
        ``.env``, as :meth:`ChatConfig.from_env`). It travels to the workers with the
        task, credential included.
    workers
        Ray workers (actors), each with its own job.
    batch_size
        Rows per batch handed to a worker.
    **params
        Every option and body field :func:`polars_azurechat.complete` takes
        (``max_tokens``, ``output``, ``max_concurrency`` per worker, ...).

    Returns
    -------
    ray.data.Dataset
        The rows with ``output_column`` added (lazy, as Ray Data is).

    Raises
    ------
    TypeError, ValueError
        An unknown keyword or a wrong option, before anything runs.

    Examples
    --------
    >>> import ray  # doctest: +SKIP
    >>> import polars_azurechat.ray as pac_ray  # doctest: +SKIP
    >>> ds = ray.data.from_items([{"q": "What is 2 + 2?"}])  # doctest: +SKIP
    >>> pac_ray.complete(ds, column="q", max_tokens=5).take_all()  # doctest: +SKIP
    [{'q': 'What is 2 + 2?', 'answer': '4'}]
    """
    ChatOptions.split(params)  # refuse a wrong keyword here, not on a worker
    if workers < 1:
        msg = f"workers must be >= 1, got {workers}"
        raise ValueError(msg)
    from ray.data import ActorPoolStrategy

    return dataset.map_batches(
        _Worker,
        fn_constructor_kwargs={
            "config": config,
            "params": dict(params),
            "column": column,
            "output_column": output_column,
        },
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=workers),
    )


class _Worker:
    """One Ray actor's job: built once, called once per batch."""

    def __init__(
        self,
        config: ChatConfig | None,
        params: Mapping[str, Any],
        column: str,
        output_column: str,
    ) -> None:
        from polars_azurechat.functions import Completer

        self.column = column
        self.output_column = output_column
        self.job = Completer(config=config, progress=False, **params)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import polars as pl

        df = pl.from_arrow(batch)
        assert isinstance(df, pl.DataFrame)  # noqa: S101 - a Table gives a frame
        if self.column not in df.columns:
            msg = f"no column {self.column!r} in the dataset (it has {df.columns})"
            raise KeyError(msg)
        out = df.with_columns(self.job.expr(self.column).alias(self.output_column))
        return out.to_arrow()

    def __del__(self) -> None:
        job = getattr(self, "job", None)
        if job is not None:
            job.close()
