"""Signed command envelopes from the academy: verification first (no I/O).

An envelope is JSON ``{"key_id": ..., "payload": <base64>, "signature": <base64>}``;
the signature is Ed25519 over the exact payload bytes, made with the academy
key named by ``key_id`` (docs/protocol.md, "Commands"). :func:`open_envelope`
checks, in this order, and stops at the first failure with RejectedInput:

    too_large        the envelope is larger than commands.max_envelope_bytes
    not_json         the envelope or the payload is not a JSON object
    missing_field    a required field is absent
    bad_field        a field has the wrong type or shape (names the field)
    unknown_key      key_id is not one of commands.academy_keys
    bad_signature    the signature does not verify over the payload bytes
    wrong_school     the payload names another school (no cross-school replay)
    unknown_action   the action is not one the gateway knows
    not_yet_valid    issued_at is further ahead than commands.clock_skew_s
    expired          not_after has passed
    ttl_too_long     not_after - issued_at exceeds commands.max_ttl_s
    replayed         the command id was accepted before

Nothing in the payload is looked at before the signature verified.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.commands.actions import check_action
from gateway.errors import RejectedInput
from gateway.signed import json_object, open_signed
from gateway.topics import DEVICE_ID_PATTERN

COMMAND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
MAX_DEVICE_TARGETS = 5_000
PAYLOAD_FIELDS = frozenset(
    {"command_id", "school_id", "issued_at", "not_after", "targets", "action", "params"}
)
REQUIRED_FIELDS = ("command_id", "school_id", "issued_at", "not_after", "targets", "action")


@dataclass(frozen=True)
class Targets:
    """Who a command is for: listed devices, one group, or every tablet of the school."""

    devices: tuple[str, ...] = ()
    group: str | None = None
    everyone: bool = False

    def as_dict(self) -> dict[str, Any]:
        if self.everyone:
            return {"all": True}
        if self.group is not None:
            return {"group": self.group}
        return {"devices": list(self.devices)}


@dataclass(frozen=True)
class Command:
    """A verified command, ready to be queued."""

    command_id: str
    school_id: str
    key_id: str
    issued_at: float
    not_after: float
    targets: Targets
    action: str
    params_json: str  # canonical JSON of the parameters
    payload: bytes  # the exact signed bytes
    signature: bytes

    @property
    def params(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.params_json)
        return value

    @property
    def payload_sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


@dataclass(frozen=True)
class VerifyPolicy:
    """What this gateway accepts (from the config)."""

    school_id: str
    max_envelope_bytes: int = 16_384
    clock_skew_s: float = 300.0
    max_ttl_s: float = 30 * 86_400.0


def _timestamp(payload: dict[str, Any], name: str) -> float:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 2**40:
        raise RejectedInput("bad_field", f"field {name!r} must be unix seconds, got {value!r:.40}")
    return float(value)


def _targets(value: Any) -> Targets:
    if not isinstance(value, dict) or len(value) != 1:
        raise RejectedInput(
            "bad_field",
            "field 'targets' must be one of {devices: [...]}, {group: ...}, {all: true}",
        )
    [(kind, spec)] = value.items()
    if kind == "all" and spec is True:
        return Targets(everyone=True)
    if kind == "group" and isinstance(spec, str) and DEVICE_ID_PATTERN.fullmatch(spec):
        return Targets(group=spec)
    if (
        kind == "devices"
        and isinstance(spec, list)
        and 0 < len(spec) <= MAX_DEVICE_TARGETS
        and all(isinstance(d, str) and DEVICE_ID_PATTERN.fullmatch(d) for d in spec)
    ):
        return Targets(devices=tuple(dict.fromkeys(spec)))
    raise RejectedInput(
        "bad_field",
        f"field 'targets' must be {{devices: [1-{MAX_DEVICE_TARGETS} device ids]}}, "
        "{group: <id>} or {all: true}",
    )


def open_envelope(
    data: bytes,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    policy: VerifyPolicy,
    now: float,
    seen: Callable[[str], bool],
) -> Command:
    """Verify ``data`` and return the Command, or raise RejectedInput (see module doc)."""
    signed = open_signed(data, keys, max_bytes=policy.max_envelope_bytes)
    key_id, payload, signature = signed.key_id, signed.payload, signed.signature
    fields = json_object(payload, "payload")
    for name in REQUIRED_FIELDS:
        if name not in fields:
            raise RejectedInput("missing_field", f"field {name!r} is missing")
    unknown = sorted(set(fields) - PAYLOAD_FIELDS)
    if unknown:
        raise RejectedInput("bad_field", f"unknown field {unknown[0][:40]!r}")
    command_id = fields["command_id"]
    if not isinstance(command_id, str) or not COMMAND_ID.fullmatch(command_id):
        raise RejectedInput("bad_field", f"field 'command_id' must match {COMMAND_ID.pattern}")
    if fields["school_id"] != policy.school_id:
        raise RejectedInput(
            "wrong_school", f"command is for school {str(fields['school_id'])[:64]!r}"
        )
    issued_at = _timestamp(fields, "issued_at")
    not_after = _timestamp(fields, "not_after")
    targets = _targets(fields["targets"])
    params = fields.get("params", {})
    check_action(fields["action"], params)
    if issued_at > now + policy.clock_skew_s:
        raise RejectedInput(
            "not_yet_valid",
            f"issued_at is {issued_at - now:.0f} s ahead "
            f"(clock skew allowed: {policy.clock_skew_s:.0f} s)",
        )
    if not_after <= now:
        raise RejectedInput("expired", f"not_after passed {now - not_after:.0f} s ago")
    if not_after - issued_at > policy.max_ttl_s:
        raise RejectedInput(
            "ttl_too_long",
            f"not_after - issued_at is {not_after - issued_at:.0f} s, limit {policy.max_ttl_s:.0f}",
        )
    if not_after <= issued_at:
        raise RejectedInput("bad_field", "not_after must be later than issued_at")
    if seen(command_id):
        raise RejectedInput("replayed", f"command id {command_id!r} was accepted before")
    return Command(
        command_id=command_id,
        school_id=policy.school_id,
        key_id=key_id,
        issued_at=issued_at,
        not_after=not_after,
        targets=targets,
        action=fields["action"],
        params_json=json.dumps(params, separators=(",", ":"), sort_keys=True),
        payload=payload,
        signature=signature,
    )
