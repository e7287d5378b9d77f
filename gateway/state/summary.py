"""Per-school summaries: what the academy sees at a glance (no I/O).

``build_summary`` turns the shadow (every tablet's latest state and
presence), the box's health, the outbox backlog and the shed totals into
the body of one ``summary`` upstream message (docs/protocol.md, "Summaries").
Lists of device ids are capped at ``MAX_LISTED`` (sorted; the count is
always complete).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_LISTED = 50

_VERSION_PART = re.compile(r"\d+|[^\d.\-+_]+")


@dataclass(frozen=True)
class SummaryRules:
    """Thresholds from the config (``[tablets]``)."""

    low_battery_pct: int = 20
    low_storage_mb: int = 500
    required_apps: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TabletView:
    """What the summary needs of one shadow row."""

    device_id: str
    online: bool
    last_seen: float
    state: Mapping[str, Any]


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key for dotted versions: numeric parts compare as numbers ("2.10" > "2.9")."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in _VERSION_PART.findall(version)
    )


def is_older(version: str, minimum: str) -> bool:
    return version_key(version) < version_key(minimum)


def _listed(ids: Sequence[str]) -> list[str]:
    return sorted(ids)[:MAX_LISTED]


def build_summary(
    tablets: Sequence[TabletView],
    *,
    now: float,
    rules: SummaryRules,
    health: Mapping[str, Any],
    backlog: Mapping[str, Any],
    shed: Mapping[str, int],
) -> dict[str, Any]:
    """The body of one summary message."""
    reporting = [t for t in tablets if t.state]
    low_battery = [
        t.device_id
        for t in reporting
        if t.state.get("battery_pct", 100) < rules.low_battery_pct
        and not t.state.get("charging", False)
    ]
    storage_low = [
        t.device_id for t in reporting if t.state.get("storage_free_mb", 0) < rules.low_storage_mb
    ]
    os_versions = Counter(str(t.state.get("os_version", "?")) for t in reporting)
    app_versions: dict[str, Counter[str]] = {}
    for t in reporting:
        for package, version in t.state.get("apps", {}).items():
            app_versions.setdefault(package, Counter())[version] += 1
    out_of_date: dict[str, list[str]] = {}
    missing: dict[str, list[str]] = {}
    for package, minimum in sorted(rules.required_apps.items()):
        for t in reporting:
            version = t.state.get("apps", {}).get(package)
            if version is None:
                missing.setdefault(package, []).append(t.device_id)
            elif is_older(version, minimum):
                out_of_date.setdefault(package, []).append(t.device_id)
    return {
        "at": round(now, 3),
        "tablets": {
            "known": len(tablets),
            "online": sum(1 for t in tablets if t.online),
            "reporting": len(reporting),
            "last_report_age_s": (
                round(now - max(t.last_seen for t in reporting), 1) if reporting else None
            ),
        },
        "low_battery": {"count": len(low_battery), "devices": _listed(low_battery)},
        "storage_low": {"count": len(storage_low), "devices": _listed(storage_low)},
        "os_versions": dict(sorted(os_versions.items())),
        "apps": {
            "versions": {p: dict(sorted(v.items())) for p, v in sorted(app_versions.items())},
            "required": dict(sorted(rules.required_apps.items())),
            "out_of_date": {
                p: {"count": len(ids), "devices": _listed(ids)} for p, ids in out_of_date.items()
            },
            "missing": {
                p: {"count": len(ids), "devices": _listed(ids)} for p, ids in missing.items()
            },
        },
        "box": dict(health),
        "backlog": dict(backlog),
        "shed": dict(shed),
    }
