"""One deployment of the emulator: its settings, quota windows, counters, downtime."""

from __future__ import annotations

import collections
import random
from collections.abc import Callable

from polars_azurechat.emulator._faults import Faults
from polars_azurechat.emulator._prompt_cache import PromptCache
from polars_azurechat.emulator._quota import Quota
from polars_azurechat.emulator._settings import EmulatorSettings

__all__ = ["Lane"]

Clock = Callable[[], float]


class Lane:
    """One deployment: its settings, quota windows, prompt cache, counters, downtime.

    Deployments without settings of their own share the emulator's faults (so a
    scripted ``[emu:500*2]`` counts across them) but never a quota.
    """

    def __init__(
        self,
        name: str,
        settings: EmulatorSettings,
        shared: Faults,
        clock: Clock,
        origin: float,
    ) -> None:
        self.name = name
        self.settings = settings.for_deployment(name)  # its model, its own fields
        self.clock = clock
        if settings.per_deployment and name in settings.per_deployment:
            self.rng = random.Random(self.settings.seed)  # noqa: S311 - not secrets
            self.faults = Faults(self.settings, self.rng)
        else:
            self.faults = shared
            self.rng = shared.rng
        self.quota = Quota(self.settings, clock)
        self.prompt_cache = PromptCache(self.settings.prompt_cache_ttl_s, clock)
        self.quota.origin = origin  # fixed windows turn from the emulator's creation
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.statuses: collections.Counter[str] = collections.Counter()
        after = self.settings.down_after_s
        self.down_from = None if after is None else self.clock() + after
        self.quota.reset()
        self.prompt_cache.reset()
        self.faults.reset()

    def is_down(self) -> bool:
        return self.down_from is not None and self.clock() >= self.down_from
