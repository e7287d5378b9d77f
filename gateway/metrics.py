"""In-process counters: every rejection, drop and shed is counted here.

Counters are plain integers keyed by snake_case names; /metrics, ``status``
and the summaries read snapshots of them.
"""

from __future__ import annotations

from collections import Counter


class Counters:
    """Monotonic event counters for this process."""

    def __init__(self) -> None:
        self._values: Counter[str] = Counter()

    def inc(self, name: str, amount: int = 1) -> None:
        self._values[name] += amount

    def get(self, name: str) -> int:
        return self._values[name]

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._values.items()))
