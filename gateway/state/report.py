"""Tablet state reports and presence messages: parsing and validation (no I/O).

A report is JSON (see docs/protocol.md). Anything else is RejectedInput with
a reason code (used in counters) and a detail naming the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from gateway.errors import RejectedInput
from gateway.topics import DEVICE_ID_PATTERN

MAX_APPS = 500
MAX_CONTENT_ITEMS = 500
MAX_TEXT = 64
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
EPOCH_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class StateReport:
    """One validated state report from one tablet."""

    device_id: str
    seq: int
    ts: float
    battery_pct: int
    charging: bool
    storage_free_mb: int
    storage_total_mb: int
    os_version: str
    apps: tuple[tuple[str, str], ...]
    locked: bool
    group: str
    content: tuple[str, ...] | None  # None: the tablet did not say (not relayed as [])
    epoch: str = ""  # see gateway.state.order

    def as_dict(self) -> dict[str, Any]:
        """The canonical JSON form stored in the shadow and relayed upstream."""
        extra: dict[str, Any] = {"epoch": self.epoch} if self.epoch else {}
        if self.content is not None:
            extra["content"] = list(self.content)
        return {
            **extra,
            "device_id": self.device_id,
            "seq": self.seq,
            "ts": self.ts,
            "battery_pct": self.battery_pct,
            "charging": self.charging,
            "storage_free_mb": self.storage_free_mb,
            "storage_total_mb": self.storage_total_mb,
            "os_version": self.os_version,
            "apps": dict(self.apps),
            "locked": self.locked,
            "group": self.group,
        }


@dataclass(frozen=True)
class Presence:
    """A tablet's birth or last-will message."""

    device_id: str
    online: bool


def check_device_id(device_id: str) -> None:
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise RejectedInput(
            "bad_device_id",
            f"device id {device_id[:80]!r} must be 2-63 of a-z, 0-9, '-'",
        )


def _decode_object(payload: bytes, max_bytes: int) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise RejectedInput("too_large", f"payload is {len(payload)} bytes, limit {max_bytes}")
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RejectedInput("not_json", f"payload is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise RejectedInput("bad_field", "payload must be a JSON object")
    return value


def _reject(obj: dict[str, Any], name: str, what: str) -> NoReturn:
    if name not in obj:
        raise RejectedInput("missing_field", f"field {name!r} is missing")
    raise RejectedInput("bad_field", f"field {name!r} must be {what}, got {obj[name]!r:.80}")


# The checks below test ``type(x) is int`` (JSON gives exactly int, float, bool,
# str; a bool is not an int here): every report goes through them, thousands a
# second on a Pi.


def _int_in(obj: dict[str, Any], name: str, low: int, high: int) -> int:
    value = obj.get(name)
    if type(value) is not int:
        _reject(obj, name, f"an integer {low}..{high}")
    if not low <= value <= high:
        raise RejectedInput("bad_field", f"field {name!r} must be {low}..{high}, got {value}")
    return value


def _flag(obj: dict[str, Any], name: str) -> bool:
    value = obj.get(name)
    if type(value) is not bool:
        _reject(obj, name, "true or false")
    return value


def _text(value: Any, name: str) -> str:
    if type(value) is not str or not 0 < len(value) <= MAX_TEXT:
        raise RejectedInput("bad_field", f"{name} must be a string of 1-{MAX_TEXT} characters")
    return value


def _apps(obj: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    apps_raw = obj.get("apps", {})
    if type(apps_raw) is not dict or len(apps_raw) > MAX_APPS:
        raise RejectedInput("bad_field", f"field 'apps' must be an object of <= {MAX_APPS}")
    for package, version in apps_raw.items():
        _text(package, "app package")
        _text(version, f"version of {package}")
    return tuple(sorted(apps_raw.items()))


def _content(obj: dict[str, Any]) -> tuple[str, ...] | None:
    if "content" not in obj:
        return None
    content_raw = obj["content"]
    if type(content_raw) is not list or len(content_raw) > MAX_CONTENT_ITEMS:
        raise RejectedInput("bad_field", f"'content' must be a list of <= {MAX_CONTENT_ITEMS}")
    for item in content_raw:
        if not (type(item) is str and SHA256_HEX.fullmatch(item)):
            raise RejectedInput("bad_field", "field 'content' must hold lowercase sha256 hex")
    return tuple(content_raw)


def parse_state_report(device_id: str, payload: bytes, *, max_bytes: int) -> StateReport:
    """Validate a report published on ``tablets/<device_id>/state``."""
    check_device_id(device_id)
    obj = _decode_object(payload, max_bytes)
    claimed = obj.get("device_id")
    if claimed != device_id:
        if type(claimed) is not str:
            _reject(obj, "device_id", "a string")
        raise RejectedInput(
            "device_mismatch", f"report says device_id {claimed[:80]!r} on {device_id}'s topic"
        )
    ts = obj.get("ts")
    if type(ts) is not float and type(ts) is not int:
        _reject(obj, "ts", "a number (unix seconds)")
    if not 0 <= ts < 2**40:
        raise RejectedInput("bad_field", f"field 'ts' is out of range: {ts}")
    apps = _apps(obj)
    content = _content(obj)
    group = obj.get("group", "")
    if group != "" and not (type(group) is str and DEVICE_ID_PATTERN.fullmatch(group)):
        raise RejectedInput("bad_field", "field 'group' must be 2-63 of a-z, 0-9, '-'")
    storage_total = _int_in(obj, "storage_total_mb", 0, 2**31)
    storage_free = _int_in(obj, "storage_free_mb", 0, 2**31)
    if storage_free > storage_total:
        raise RejectedInput("bad_field", "storage_free_mb is larger than storage_total_mb")
    return StateReport(
        device_id=device_id,
        seq=_int_in(obj, "seq", 0, 2**53),
        ts=float(ts),
        battery_pct=_int_in(obj, "battery_pct", 0, 100),
        charging=_flag(obj, "charging"),
        storage_free_mb=storage_free,
        storage_total_mb=storage_total,
        os_version=_text(obj.get("os_version"), "field 'os_version'"),
        apps=apps,
        locked=_flag(obj, "locked"),
        group=group,
        content=content,
        epoch=_epoch(obj),
    )


def _epoch(obj: dict[str, Any]) -> str:
    epoch = obj.get("epoch", "")
    if epoch != "" and not (type(epoch) is str and EPOCH_PATTERN.fullmatch(epoch)):
        raise RejectedInput(
            "bad_field", "field 'epoch' must be 1-64 of A-Z, a-z, 0-9, '.', '_', '-'"
        )
    return str(epoch)


def parse_presence(device_id: str, payload: bytes) -> Presence:
    """Validate a birth/will message on ``tablets/<device_id>/status``."""
    check_device_id(device_id)
    obj = _decode_object(payload, 1024)
    online = _flag(obj, "online")
    return Presence(device_id=device_id, online=online)
