"""Reconnect delays: capped exponential backoff with full jitter, as a pure function."""

from __future__ import annotations

import random


def backoff_delay(
    attempt: int,
    *,
    base_s: float = 0.5,
    cap_s: float = 30.0,
    rng: random.Random | None = None,
) -> float:
    """Delay before reconnect attempt ``attempt`` (0 for the first retry).

    Full jitter (uniform in [0, min(cap, base * 2**attempt)]) spreads the
    reconnects of thousands of schools after an academy broker restart.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    ceiling = min(cap_s, base_s * (2 ** min(attempt, 32)))
    chooser = rng if rng is not None else random
    return chooser.uniform(0.0, ceiling)
