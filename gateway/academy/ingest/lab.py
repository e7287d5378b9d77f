"""Upstream messages as a gateway would send them (tests, benchmark, demo), with the
relay's own encoder (gateway.relay.wire)."""

from __future__ import annotations

import json
from typing import Any

from gateway.relay.wire import encode_batch, envelope_line


def state_body(
    device_id: str, *, ts: float, battery: int = 80, group: str = "class-01"
) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "seq": int(ts),
        "ts": ts,
        "battery_pct": battery,
        "charging": False,
        "storage_free_mb": 9000,
        "storage_total_mb": 32000,
        "os_version": "13.1.2",
        "apps": {"org.ent.classroom": "2.5.1"},
        "locked": False,
        "group": group,
        "content": [],
    }


def line(school_id: str, gateway_id: str, seq: int, kind: str, body: dict[str, Any]) -> str:
    return envelope_line(
        school_id=school_id,
        gateway_id=gateway_id,
        seq=seq,
        kind=kind,
        body_json=json.dumps(body, separators=(",", ":"), sort_keys=True),
    )


def payload(lines: list[str]) -> bytes:
    """One message, or a zlib batch of several: what the gateway's drain publishes."""
    return encode_batch(lines)
