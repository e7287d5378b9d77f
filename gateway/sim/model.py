"""A simulated tablet's state and how it evolves (no I/O).

Battery drains while in use and charges on the cart below a threshold;
storage fills slowly; OS and app versions come from a small catalogue.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from gateway.state.report import StateReport

OS_VERSIONS = ("13.1.2", "13.1.3", "14.0.1")
APP_CATALOGUE = {
    "org.ent.classroom": ("2.4.0", "2.5.1"),
    "org.mozilla.firefox": ("128.0", "129.0"),
    "fr.education.lumni": ("1.9.3", "2.0.0"),
}


def device_id_for(prefix: str, index: int) -> str:
    return f"{prefix}-{index:04d}"


def group_for(index: int, per_group: int = 30) -> str:
    return f"class-{index // per_group + 1:02d}"


@dataclass
class TabletModel:
    """Mutable state of one simulated tablet."""

    device_id: str
    group: str
    rng: random.Random
    seq: int = 0
    battery_pct: int = 100
    charging: bool = False
    storage_total_mb: int = 32_000
    storage_free_mb: int = 12_000
    os_version: str = OS_VERSIONS[0]
    apps: dict[str, str] = field(default_factory=dict)
    locked: bool = False
    content: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, device_id: str, group: str, seed: int) -> TabletModel:
        rng = random.Random(seed)
        return cls(
            device_id=device_id,
            group=group,
            rng=rng,
            battery_pct=rng.randint(30, 100),
            storage_free_mb=rng.randint(300, 20_000),
            os_version=rng.choice(OS_VERSIONS),
            apps={name: rng.choice(versions) for name, versions in APP_CATALOGUE.items()},
        )

    def advance(self) -> None:
        """One reporting period passes."""
        if self.charging:
            self.battery_pct = min(100, self.battery_pct + self.rng.randint(2, 6))
            if self.battery_pct >= 95:
                self.charging = False
        else:
            self.battery_pct = max(0, self.battery_pct - self.rng.randint(0, 2))
            if self.battery_pct <= 15:
                self.charging = True
        self.storage_free_mb = max(0, self.storage_free_mb - self.rng.randint(0, 5))

    def report(self, ts: float) -> dict[str, Any]:
        """The next state report (docs/protocol.md, "State report"), as the gateway reads it."""
        self.seq += 1
        return StateReport(
            device_id=self.device_id,
            seq=self.seq,
            ts=round(ts, 3),
            battery_pct=self.battery_pct,
            charging=self.charging,
            storage_free_mb=self.storage_free_mb,
            storage_total_mb=self.storage_total_mb,
            os_version=self.os_version,
            apps=tuple(self.apps.items()),
            locked=self.locked,
            group=self.group,
            content=tuple(self.content),
        ).as_dict()
