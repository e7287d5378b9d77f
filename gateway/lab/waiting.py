"""Waiting with a deadline, for tests and benchmarks (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable


async def wait_until(
    predicate: Callable[[], bool], within_s: float, step_s: float = 0.02, *, what: str = ""
) -> bool:
    """Poll ``predicate`` until it holds; TimeoutError if ``within_s`` passes first.

    Returns True, so ``assert await wait_until(...)`` reads as it always did;
    a call whose result nobody checks can no longer pass on a timeout. The
    error names ``what`` (else the predicate's source line).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        if loop.time() > deadline:
            if predicate():
                return True
            raise TimeoutError(f"not within {within_s} s: {what or _source(predicate)}")
        await asyncio.sleep(step_s)
    return True


def _source(predicate: Callable[[], bool]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)
