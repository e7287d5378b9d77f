"""The uplink budget as the downloads use it: one shared bucket, prefetch behind.

On-demand downloads (a tablet is waiting) take only from the shared bucket
(``cache.uplink_bytes_per_s``, 0 = no limit). Prefetch downloads also take
from their own bucket (``cache.prefetch_bytes_per_s``), run only inside the
off-peak windows, and stand still while any on-demand download is running,
so tablets always go first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.cache.offpeak import Window, in_windows
from gateway.pacing import TokenBucket

WINDOW_RECHECK_S = 30.0


def local_minute_of_day() -> int:
    now = time.localtime()
    return now.tm_hour * 60 + now.tm_min


class UplinkBudget:
    def __init__(
        self,
        bytes_per_s: float,
        prefetch_bytes_per_s: float,
        windows: tuple[Window, ...],
        minute_of_day: Callable[[], int] = local_minute_of_day,
    ) -> None:
        self._shared = TokenBucket(bytes_per_s, now=time.monotonic())
        self._prefetch = TokenBucket(prefetch_bytes_per_s, now=time.monotonic())
        self._windows = windows
        self._minute_of_day = minute_of_day
        self._on_demand = 0
        self._no_demand = asyncio.Event()
        self._no_demand.set()

    def demand_started(self) -> None:
        self._on_demand += 1
        self._no_demand.clear()

    def demand_ended(self) -> None:
        self._on_demand -= 1
        if self._on_demand <= 0:
            self._on_demand = 0
            self._no_demand.set()

    def prefetch_window_open(self) -> bool:
        return in_windows(self._windows, self._minute_of_day())

    async def take(self, amount: int, *, on_demand: bool) -> None:
        """Wait until ``amount`` bytes may be read from the origin."""
        if not on_demand:
            while True:
                await self._no_demand.wait()
                if self.prefetch_window_open():
                    break
                await asyncio.sleep(WINDOW_RECHECK_S)
            delay = self._prefetch.take(amount, time.monotonic())
            if delay > 0:
                await asyncio.sleep(delay)
        delay = self._shared.take(amount, time.monotonic())
        if delay > 0:
            await asyncio.sleep(delay)
