"""Waiting with a deadline, for tests and benchmarks (never a fixed sleep)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(predicate: Callable[[], bool], within_s: float, step_s: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``within_s`` passes; return its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        if loop.time() > deadline:
            return predicate()
        await asyncio.sleep(step_s)
    return True
