"""Reconnect backoff (pure): capped, jittered, growing."""

from __future__ import annotations

import random

import pytest

from gateway.backoff import backoff_delay


class TestBackoff:
    """Delays stay within the exponential ceiling and the cap."""

    def test_within_ceiling_and_cap(self):
        rng = random.Random(7)
        for attempt in range(40):
            delay = backoff_delay(attempt, base_s=0.5, cap_s=30, rng=rng)
            assert 0 <= delay <= min(30, 0.5 * 2**attempt)

    def test_jitter_spreads_reconnects(self):
        rng = random.Random(1)
        delays = {round(backoff_delay(6, rng=rng), 3) for _ in range(50)}
        assert len(delays) > 40

    def test_negative_attempt_is_an_error(self):
        with pytest.raises(ValueError, match="attempt"):
            backoff_delay(-1)
