"""Per-tablet message budget at the intake: a pure token-bucket decision per device.

Every message a tablet publishes (state, presence, result) spends one token
of that tablet's bucket; a bucket refills at ``rate_per_s`` up to ``burst``.
A message with no token left is dropped at once, before it is parsed or
queued, acknowledged to the broker, and counted against its device, so one
tablet flooding the broker (even from its own certificate, within its ACL)
costs the gateway little and never holds back other tablets' messages.
Dropping is safe for every kind: a state report is superseded by the next
one, a presence by the next birth, and a result is re-sent by its tablet
until the gateway confirms it (docs/protocol.md).

The map of buckets is bounded (``max_devices``): at the bound the device
seen least recently is forgotten (counted in ``evictions``); if it comes
back it starts with a full bucket. A school has at most about a thousand
tablets, so the default bound only matters if device ids are forged.

No I/O and no clock of its own: the caller passes ``now`` (monotonic).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MAX_DEVICES = 4_096
FLOODING_MEMORY_S = 60.0  # a device dropped within this long is shown as flooding


@dataclass
class _Bucket:
    tokens: float
    updated: float
    dropped: int = 0  # since the gateway started (or this device was evicted)
    last_drop: float | None = None


@dataclass(frozen=True)
class Flooder:
    """A tablet whose messages were dropped recently."""

    device_id: str
    dropped: int
    last_drop_age_s: float


class TabletBudget:
    """Decides, per device, whether one more message may enter."""

    def __init__(
        self, rate_per_s: float, burst: float, *, max_devices: int = DEFAULT_MAX_DEVICES
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or max_devices < 1:
            raise ValueError("rate_per_s > 0, burst >= 1 and max_devices >= 1 are required")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_devices = max_devices
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.dropped = 0
        self.evictions = 0

    def allow(self, device_id: str, now: float) -> bool:
        """Spend one token of ``device_id``'s bucket; False if it has none left."""
        bucket = self._buckets.get(device_id)
        if bucket is None:
            if len(self._buckets) >= self.max_devices:
                self._buckets.popitem(last=False)
                self.evictions += 1
            bucket = self._buckets[device_id] = _Bucket(tokens=self.burst, updated=now)
        else:
            self._buckets.move_to_end(device_id)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate_per_s)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        bucket.dropped += 1
        bucket.last_drop = now
        self.dropped += 1
        return False

    def flooders(self, now: float, limit: int = 20) -> list[Flooder]:
        """Devices dropped within FLOODING_MEMORY_S, most dropped first (at most ``limit``)."""
        found = [
            Flooder(device, bucket.dropped, round(now - bucket.last_drop, 1))
            for device, bucket in self._buckets.items()
            if bucket.last_drop is not None and now - bucket.last_drop <= FLOODING_MEMORY_S
        ]
        found.sort(key=lambda f: (-f.dropped, f.device_id))
        return found[:limit]
