"""Numbers, sizes, times and ages shown the way the reader's language writes them."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass

from babel.dates import format_datetime, format_time, format_timedelta
from babel.numbers import format_decimal

_UNITS = {
    "fr": ("o", "ko", "Mo", "Go", "To"),
    "en": ("B", "kB", "MB", "GB", "TB"),
}


@dataclass(frozen=True)
class Formatter:
    """Per-language formatting for the templates (``fmt.size(n)``, ``fmt.age(s)``...)."""

    lang: str
    now: float

    def number(self, value: float | int | None) -> str:
        if value is None:
            return "—"
        return format_decimal(value, locale=self.lang)

    def size(self, nbytes: float | int | None) -> str:
        if nbytes is None:
            return "—"
        units = _UNITS.get(self.lang, _UNITS["en"])
        value = float(nbytes)
        unit = 0
        while abs(value) >= 1000 and unit < len(units) - 1:
            value /= 1000
            unit += 1
        pattern = "#,##0" if unit == 0 or value >= 100 else "#,##0.#"
        return f"{format_decimal(value, format=pattern, locale=self.lang)}\u00a0{units[unit]}"

    def age(self, seconds: float | None) -> str:
        """A duration such as "3 minutes" (rounded the way people say it)."""
        if seconds is None:
            return "—"
        return format_timedelta(dt.timedelta(seconds=max(0.0, seconds)), locale=self.lang)

    def ago(self, ts: float | None) -> str:
        if not ts:
            return "—"
        return self.age(self.now - ts)

    def when(self, ts: float | None) -> str:
        """A time of day today, else a date and time (the box's local time zone)."""
        if not ts:
            return "—"
        moment = dt.datetime.fromtimestamp(ts).astimezone()
        if self.now - ts < 20 * 3600:
            return format_time(moment, format="short", locale=self.lang)
        return format_datetime(moment, format="short", locale=self.lang)

    def params(self, raw: Mapping[str, float | int]) -> dict[str, str]:
        """Glance parameters shown by their name: *_age, *_bytes, *_at, else a number."""
        shown: dict[str, str] = {}
        for name, value in raw.items():
            if name.endswith("_age"):
                shown[name] = self.age(float(value))
            elif name.endswith("_bytes"):
                shown[name] = self.size(value)
            elif name.endswith("_at"):
                shown[name] = self.when(float(value))
            else:
                shown[name] = self.number(value)
        return shown


def formatter(lang: str) -> Formatter:
    return Formatter(lang, time.time())
