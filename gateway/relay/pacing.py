"""Uplink pacing: a token bucket over bytes, as a plain class (no I/O, no clock).

The caller passes the time; ``delay_for`` answers how long to wait before
sending ``size`` bytes so that the long-run rate stays under
``bytes_per_s``, allowing a burst of ``burst_bytes``.
"""

from __future__ import annotations


class Pacer:
    """Token bucket: ``bytes_per_s`` refill, ``burst_bytes`` capacity, debt allowed."""

    def __init__(self, bytes_per_s: float, burst_bytes: float) -> None:
        if bytes_per_s <= 0 or burst_bytes <= 0:
            raise ValueError("rate and burst must be positive")
        self.bytes_per_s = bytes_per_s
        self.burst_bytes = burst_bytes
        self._tokens = burst_bytes
        self._last: float | None = None

    def delay_for(self, size: int, now: float) -> float:
        """Seconds to wait before sending ``size`` bytes at ``now`` (then it is charged)."""
        if self._last is not None:
            elapsed = max(0.0, now - self._last)
            self._tokens = min(self.burst_bytes, self._tokens + elapsed * self.bytes_per_s)
        self._last = now
        self._tokens -= size
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.bytes_per_s
