"""A token bucket over bytes, as a plain class (no I/O, no clock).

The uplink drain (gateway.relay.drain), the cache's downloads
(gateway.cache.uplink_budget) and the lab origin pace with it. It works by
reservation: ``take`` always succeeds, charges the bytes (the bucket may go
into debt) and returns how long the caller must wait before sending them, so
concurrent takers queue up in time instead of polling. The caller passes the
time. A rate of 0 means no limit.
"""

from __future__ import annotations


class TokenBucket:
    """``rate`` bytes/s refill, up to ``burst`` bytes of credit (default: a quarter second,
    at least 64 KiB); starts full. Without ``now``, time starts at the first take."""

    def __init__(self, rate: float, burst: float | None = None, now: float | None = None) -> None:
        if rate < 0 or (burst is not None and burst <= 0):
            raise ValueError("rate must be >= 0 and burst > 0")
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 4, 64 * 1024)
        self.tokens = self.burst
        self.stamp = now

    def take(self, amount: int, now: float) -> float:
        """Reserve ``amount`` bytes at ``now``; return the seconds to wait before sending them."""
        if self.rate <= 0:
            return 0.0
        if self.stamp is not None:
            elapsed = max(0.0, now - self.stamp)
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.stamp = now
        self.tokens -= amount
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
