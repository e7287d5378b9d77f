"""Numbers, sizes, times and ages shown the way the reader's language writes them."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from babel.dates import format_datetime, format_time, format_timedelta
from babel.numbers import format_decimal

_DECIMAL = {"fr": ",", "en": "."}
_GROUP = {"fr": "\u202f", "en": ","}
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
        if isinstance(value, int) or float(value).is_integer():
            return f"{int(value):,}".replace(",", _GROUP.get(self.lang, ","))
        return format_decimal(value, locale=self.lang)

    def size(self, nbytes: float | int | None) -> str:
        """1,2 Mo / 1.2 MB (decimal units; pages list hundreds: no Babel call per value)."""
        if nbytes is None:
            return "—"
        units = _UNITS.get(self.lang, _UNITS["en"])
        value = float(nbytes)
        unit = 0
        while abs(value) >= 1000 and unit < len(units) - 1:
            value /= 1000
            unit += 1
        if unit == 0 or value >= 100:
            text = f"{value:.0f}"
        else:
            text = f"{value:.1f}".rstrip("0").rstrip(".")
        return f"{text.replace('.', _DECIMAL.get(self.lang, '.'))}\u00a0{units[unit]}"

    def age(self, seconds: float | None) -> str:
        """A duration such as "3 minutes" (rounded the way people say it)."""
        if seconds is None:
            return "—"
        return _age(self.lang, _rounded(max(0.0, seconds)))

    def ago(self, ts: float | None) -> str:
        """ "il y a 3 minutes" / "3 minutes ago"."""
        if not ts:
            return "—"
        return _age(self.lang, _rounded(max(0.0, self.now - ts)), direction=True)

    def when(self, ts: float | None) -> str:
        """A time of day today, else a date and time (the box's local time zone)."""
        if not ts:
            return "—"
        moment = dt.datetime.fromtimestamp(ts).astimezone()
        today = dt.datetime.fromtimestamp(self.now).astimezone().date()
        if moment.date() == today:
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


def _rounded(seconds: float) -> int:
    """Seconds rounded to the unit the words will use, so equal words share a cache entry."""
    for unit in (86_400, 3_600, 60):
        if seconds >= unit:
            return round(seconds / unit) * unit
    return round(seconds)


@lru_cache(maxsize=4096)
def _age(lang: str, seconds: int, direction: bool = False) -> str:
    delta = dt.timedelta(seconds=-seconds if direction else seconds)
    return format_timedelta(delta, add_direction=direction, locale=lang)


def formatter(lang: str) -> Formatter:
    return Formatter(lang, time.time())
