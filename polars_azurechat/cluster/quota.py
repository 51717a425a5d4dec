"""The quota each Spark task gets. Not meant for outside use.

Every Python worker runs its own job, with its own limiter. With ``limiter=
"redis://..."`` they admit against one ledger, and the quota given is the
deployment's. Without it, each task that runs at once gets an equal share of the
quota (``requests_per_minute``, ``tokens_per_minute``, each deployment's of a pool)
and of the spending cap (``max_cost_usd``), and the driver says so in a warning.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from polars_azurechat.options import ChatOptions
from polars_azurechat.store.redis import is_redis_url

__all__ = ["task_share", "tasks_at_once"]

logger = logging.getLogger("polars_azurechat.spark")

_SHARED = ("requests_per_minute", "tokens_per_minute", "max_cost_usd")


def tasks_at_once(spark: Any) -> int:
    """Tasks the cluster runs at once: its cores over ``spark.task.cpus``.

    ``spark.sparkContext.defaultParallelism`` is the executors' cores (``local[n]``:
    ``n``); Spark Connect has no context, so ``spark.default.parallelism`` is read,
    else 1 (pass ``concurrent_tasks=`` then).
    """
    try:
        cores = int(spark.sparkContext.defaultParallelism)
    except Exception:  # noqa: BLE001 - Spark Connect: no SparkContext
        cores = int(spark.conf.get("spark.default.parallelism", "1") or 1)
    cpus = int(spark.conf.get("spark.task.cpus", "1") or 1)
    return max(1, cores // max(1, cpus))


def task_share(
    params: dict[str, Any], options: ChatOptions, tasks: int, *, what: str
) -> dict[str, Any]:
    """``params`` with each task's share of the quota and cap, warning when it divides.

    Parameters
    ----------
    params
        The job's keywords, as given.
    options
        The options they make.
    tasks
        Tasks that run at once.
    what
        The call, for the warning (``"spark.complete"``).

    Returns
    -------
    dict
        The keywords each worker's job is built with.

    Examples
    --------
    >>> opts = ChatOptions(requests_per_minute=600)
    >>> task_share({"requests_per_minute": 600}, opts, 4, what="spark.complete")
    {'requests_per_minute': 150.0}
    >>> opts = ChatOptions(requests_per_minute=600, limiter="redis://h:6379/0")
    >>> task_share({"requests_per_minute": 600}, opts, 4, what="spark.complete")
    {'requests_per_minute': 600}
    """
    if is_redis_url(options.limiter) or tasks <= 1:
        return params
    out = dict(params)
    divided = []
    for name in _SHARED:
        value = getattr(options, name)
        if value:
            out[name] = value / tasks
            divided.append(f"{name} {value:g} -> {value / tasks:g}")
    if options.deployments:
        out["deployments"] = [_share(d, tasks) for d in options.deployments]
        divided.append("each deployment's quota")
    if divided:
        logger.warning(
            "%s: no shared limiter, so each of the %d tasks that run at once gets "
            "1/%d of the quota (%s); pass limiter='redis://...' for one quota every "
            "executor shares",
            what,
            tasks,
            tasks,
            ", ".join(divided),
        )
    else:
        logger.warning(
            "%s: no quota given and no shared limiter: each of the %d tasks that run "
            "at once learns the deployment's quota alone, so they may overshoot it "
            "together (429s, retried); pass requests_per_minute= / "
            "tokens_per_minute= (each task gets 1/%d) or limiter='redis://...'",
            what,
            tasks,
            tasks,
        )
    return out


def _share(d: Any, tasks: int) -> Any:
    changes = {
        name: getattr(d, name) / tasks
        for name in ("requests_per_minute", "tokens_per_minute")
        if getattr(d, name)
    }
    return dataclasses.replace(d, **changes) if changes else d
