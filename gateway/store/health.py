"""Whether the store takes writes, as people and the academy should see it.

A full state disk (or a failing card) makes every write transaction fail
with :class:`~gateway.errors.StoreUnavailable`. The gateway stays up: each
writer keeps what it could not commit and tries again
(:func:`retry_while_unavailable`), without acknowledging it, so the brokers
keep the messages. This object turns the failures into ONE log line when
writes start failing and one when they work again, and into what
``status``, ``/metrics`` and the academy status message show. Pure state,
no I/O beyond logging.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.backoff import backoff_delay
from gateway.errors import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_BASE_S = 0.5
RETRY_CAP_S = 5.0


class StoreHealth:
    """``writable`` and why not; ``changed`` is set at every transition."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.writable = True
        self.error = ""
        self.since: float | None = None
        self.failures = 0
        self.changed = asyncio.Event()
        self._clock = clock

    def failed(self, exc: StoreUnavailable) -> None:
        self.failures += 1
        if not self.writable:
            return
        self.writable, self.error, self.since = False, str(exc), self._clock()
        log.error(
            "state store cannot write (%s): messages are no longer acknowledged, the brokers "
            "keep them; free space in the state directory, the gateway resumes by itself",
            exc,
        )
        self.changed.set()

    def succeeded(self) -> None:
        if self.writable:
            return
        down_s = self._clock() - (self.since or self._clock())
        self.writable, self.error, self.since = True, "", None
        log.warning("state store writes again after %.0f s; storing what the brokers kept", down_s)
        self.changed.set()

    def as_dict(self) -> dict[str, Any]:
        return {
            "writable": self.writable,
            "error": self.error,
            "since": self.since,
            "write_failures": self.failures,
        }


async def retry_while_unavailable(write: Callable[[], Awaitable[T]]) -> T:
    """Run ``write`` until it no longer fails with StoreUnavailable (capped jittered waits)."""
    attempt = 0
    while True:
        try:
            return await write()
        except StoreUnavailable:
            await asyncio.sleep(backoff_delay(attempt, base_s=RETRY_BASE_S, cap_s=RETRY_CAP_S))
            attempt += 1
