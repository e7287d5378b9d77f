"""The uplink budget: a token bucket (bytes/s) and off-peak windows, as pure values.

The bucket works by reservation: ``take`` always succeeds and returns how
long the caller must wait before using what it took, so concurrent takers
queue up in time instead of polling. A rate of 0 means no limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import ConfigError

_WINDOW = re.compile(r"([01]\d|2[0-4]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)")


class TokenBucket:
    """``rate`` bytes/s with up to ``burst`` bytes of credit."""

    def __init__(self, rate: float, burst: float | None = None, now: float = 0.0) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 4, 64 * 1024)
        self.tokens = self.burst
        self.stamp = now

    def take(self, amount: int, now: float) -> float:
        """Reserve ``amount`` bytes; return the seconds to wait before sending them."""
        if self.rate <= 0:
            return 0.0
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= amount
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass(frozen=True)
class Window:
    """From ``start`` to ``end`` minutes after local midnight; wraps past midnight."""

    start: int
    end: int

    def contains(self, minute_of_day: int) -> bool:
        if self.start <= self.end:
            return self.start <= minute_of_day < self.end
        return minute_of_day >= self.start or minute_of_day < self.end


def parse_windows(texts: tuple[str, ...]) -> tuple[Window, ...]:
    """``"22:00-06:00"`` strings into windows; ``"00:00-24:00"`` is all day."""
    windows = []
    for text in texts:
        match = _WINDOW.fullmatch(text.strip())
        if match is None:
            raise ConfigError(f"cache.offpeak_windows: {text!r} is not 'HH:MM-HH:MM'")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start > 24 * 60 or end > 24 * 60:
            raise ConfigError(f"cache.offpeak_windows: {text!r} is past 24:00")
        windows.append(Window(start, end))
    return tuple(windows)


def in_windows(windows: tuple[Window, ...], minute_of_day: int) -> bool:
    return any(w.contains(minute_of_day) for w in windows)
