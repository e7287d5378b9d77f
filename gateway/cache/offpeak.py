"""Off-peak windows (``cache.offpeak_windows``), when prefetch may use the uplink: pure values."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import ConfigError

_WINDOW = re.compile(r"([01]\d|2[0-4]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)")


@dataclass(frozen=True)
class Window:
    """From ``start`` to ``end`` minutes after local midnight; wraps past midnight."""

    start: int
    end: int

    def contains(self, minute_of_day: int) -> bool:
        if self.start <= self.end:
            return self.start <= minute_of_day < self.end
        return minute_of_day >= self.start or minute_of_day < self.end


def parse_windows(texts: tuple[str, ...], key: str = "cache.offpeak_windows") -> tuple[Window, ...]:
    """``"22:00-06:00"`` strings into windows; ``"00:00-24:00"`` is all day."""
    windows = []
    for text in texts:
        match = _WINDOW.fullmatch(text.strip())
        if match is None:
            raise ConfigError(f"{key}: {text!r} is not 'HH:MM-HH:MM'")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start > 24 * 60 or end > 24 * 60:
            raise ConfigError(f"{key}: {text!r} is past 24:00")
        windows.append(Window(start, end))
    return tuple(windows)


def in_windows(windows: tuple[Window, ...], minute_of_day: int) -> bool:
    return any(w.contains(minute_of_day) for w in windows)
