"""Deliveries, tablet results and per-command progress (no I/O).

A delivery is one command for one tablet. Its state moves through this table:

    pending   accepted; not yet published to the tablet
    sent      published (QoS 1, the school broker acknowledged it)
    received  the tablet said it has the command (it may still be working)
    done      the tablet applied it                         (final)
    failed    the tablet could not apply it (+ detail)      (final)
    expired   not_after passed before the tablet confirmed   (final unless the tablet answers)

pending and sent deliveries are (re)published when the tablet comes online.
The tablet's word wins: a late answer to an expired delivery is recorded as
what the tablet says happened. A repeated answer changes nothing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.commands.envelope import COMMAND_ID
from gateway.errors import RejectedInput
from gateway.state.report import check_device_id

TO_PUBLISH = ("pending", "sent")
UNFINISHED = ("pending", "sent", "received")
STATES = ("pending", "sent", "received", "done", "failed", "expired")
TABLET_STATUSES = ("received", "done", "failed")
MAX_RESULT_BYTES = 4_096
MAX_DETAIL = 500


def state_after_result(current: str, reported: str) -> str | None:
    """The delivery's new state after the tablet reported ``reported`` (None: no change)."""
    if current in ("done", "failed"):
        return None  # final: a redelivered command answered again
    if reported == "received" and current == "received":
        return None
    return reported


@dataclass(frozen=True)
class TabletResult:
    """One answer from a tablet on ``tablets/<device>/results``."""

    device_id: str
    command_id: str
    status: str
    detail: str


def parse_result(device_id: str, payload: bytes) -> TabletResult:
    """Validate ``{"command_id": ..., "status": received|done|failed, "detail": ...}``."""
    check_device_id(device_id)
    if len(payload) > MAX_RESULT_BYTES:
        raise RejectedInput(
            "too_large", f"result is {len(payload)} bytes, limit {MAX_RESULT_BYTES}"
        )
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RejectedInput("not_json", f"result is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise RejectedInput("not_json", "result must be a JSON object")
    for name in ("command_id", "status"):
        if name not in obj:
            raise RejectedInput("missing_field", f"field {name!r} is missing")
    command_id = obj["command_id"]
    if not isinstance(command_id, str) or not COMMAND_ID.fullmatch(command_id):
        raise RejectedInput("bad_field", "field 'command_id' is not a command id")
    if obj["status"] not in TABLET_STATUSES:
        raise RejectedInput("bad_field", f"field 'status' must be one of {list(TABLET_STATUSES)}")
    detail = obj.get("detail", "")
    if not isinstance(detail, str):
        raise RejectedInput("bad_field", "field 'detail' must be a string")
    return TabletResult(device_id, command_id, obj["status"], detail[:MAX_DETAIL])


def delivery_message(key_id: str, payload: bytes, signature: bytes) -> bytes:
    """What a tablet receives on ``tablets/<device>/commands``.

    The command's fields for convenience, plus the academy's envelope
    unchanged so a tablet holding the academy key can verify it itself.
    """
    fields = json.loads(payload)
    message = {
        "command_id": fields["command_id"],
        "issued_at": fields["issued_at"],
        "not_after": fields["not_after"],
        "action": fields["action"],
        "params": fields.get("params", {}),
        "envelope": {
            "key_id": key_id,
            "payload": base64.b64encode(payload).decode(),
            "signature": base64.b64encode(signature).decode(),
        },
    }
    return json.dumps(message, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Progress:
    """Where one command stands across its target tablets."""

    command_id: str
    action: str
    targets: int
    sent: int
    delivered: int
    done: int
    failed: int
    expired: int
    waiting: int

    @classmethod
    def from_counts(cls, command_id: str, action: str, counts: Mapping[str, int]) -> Progress:
        """Build from the number of deliveries in each state."""
        n = {state: counts.get(state, 0) for state in STATES}
        delivered = n["received"] + n["done"] + n["failed"]
        return cls(
            command_id=command_id,
            action=action,
            targets=sum(n.values()),
            sent=n["sent"] + delivered,
            delivered=delivered,
            done=n["done"],
            failed=n["failed"],
            expired=n["expired"],
            waiting=n["pending"] + n["sent"],
        )

    @property
    def complete(self) -> bool:
        """Every target answered done/failed, or expired."""
        return self.done + self.failed + self.expired == self.targets

    def as_body(self) -> dict[str, Any]:
        """The upstream ``result`` body (docs/protocol.md)."""
        return {
            "type": "progress",
            "command_id": self.command_id,
            "action": self.action,
            "targets": self.targets,
            "sent": self.sent,
            "delivered": self.delivered,
            "done": self.done,
            "failed": self.failed,
            "expired": self.expired,
            "waiting": self.waiting,
            "complete": self.complete,
        }


def delivery_body(
    command_id: str, device_id: str, status: str, detail: str, at: float
) -> dict[str, Any]:
    """The upstream ``result`` body for one tablet's answer (or its expiry)."""
    return {
        "type": "delivery",
        "command_id": command_id,
        "device_id": device_id,
        "status": status,
        "detail": detail,
        "at": round(at, 3),
    }


def rejection_body(
    reason: str, detail: str, *, envelope_sha256: str, command_id: str | None, at: float
) -> dict[str, Any]:
    """The upstream ``rejection`` body for an envelope the gateway refused."""
    return {
        "reason": reason,
        "detail": detail,
        "command_id": command_id,
        "envelope_sha256": envelope_sha256,
        "at": round(at, 3),
    }
