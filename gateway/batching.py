"""Taking work off a queue in batches: few transactions, bounded latency."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


async def next_batch(queue: asyncio.Queue[T], max_items: int, window_s: float) -> list[T]:
    """Wait for one item, then take what else arrives within ``window_s`` (up to ``max_items``)."""
    batch = [await queue.get()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window_s
    while len(batch) < max_items:
        if not queue.empty():
            batch.append(queue.get_nowait())
            continue
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
        # cancellation that races with an item arriving, and shutdown hangs.
        try:
            async with asyncio.timeout(remaining):
                batch.append(await queue.get())
        except TimeoutError:
            break
    return batch
