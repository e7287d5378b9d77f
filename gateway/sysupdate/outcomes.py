"""Update outcomes: the record root's helpers keep and the gateway reports (no I/O).

``outcome.json`` in ``<state_dir>/system-update/`` holds the last
``MAX_KEPT`` outcomes, oldest first::

    {"outcomes": [{"version": "3", "sha256": "<hex>", "outcome": "installed",
                   "reason": "", "at": 1764000000.0, "slot": "B"}, ...]}

Outcomes, in the order one update goes through them:

    refused              the bundle failed verification (signature, compatible,
                         sha256, size); nothing was written; never retried
    installing           ``rauc install`` started (still the last one after a power
                         cut during the install; the request is tried again,
                         at most ``system_update.max_attempts`` times)
    failed               ``rauc install`` failed (reason: its message)
    installed            written to the inactive slot ``slot``; the box reboots
    booted               the box came up on the new slot (health check running)
    marked-good          the health check passed: ``rauc status mark-good``
    health-check-failed  it did not (reason); ``mark-bad`` and reboot
    rolled-back          the box came up on the other slot than the one installed

A bundle (sha256) that was refused, failed its health check or rolled back is
never installed again (``decision.choose_update``): only a new bundle is.
A malformed file or entry is skipped, never fatal: the record is advisory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gateway.sysupdate.system import SystemInfo

OUTCOMES = (
    "refused",
    "installing",
    "failed",
    "installed",
    "booted",
    "marked-good",
    "health-check-failed",
    "rolled-back",
)
# A bundle with one of these outcomes is never installed again.
NEVER_AGAIN = frozenset({"refused", "health-check-failed", "rolled-back"})
MAX_KEPT = 50
RECENT_IN_SUMMARY = 10
MAX_REASON = 500


@dataclass(frozen=True)
class Outcome:
    version: str
    sha256: str
    outcome: str  # one of OUTCOMES
    reason: str
    at: float
    slot: str | None = None  # the slot installed into (or booted), when known

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def outcome(
    version: str, sha256: str, what: str, *, at: float, reason: str = "", slot: str | None = None
) -> Outcome:
    """An Outcome with ``what`` checked and ``reason`` cut to ``MAX_REASON`` characters."""
    if what not in OUTCOMES:
        raise ValueError(f"unknown update outcome {what!r}")
    return Outcome(version[:64], sha256[:64], what, reason.strip()[:MAX_REASON], at, slot)


def parse_outcomes(data: bytes) -> tuple[Outcome, ...]:
    """The outcomes in ``outcome.json``; malformed entries are left out."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return ()
    raw = body.get("outcomes") if isinstance(body, dict) else None
    if not isinstance(raw, list):
        return ()
    kept = []
    for entry in raw:
        if not isinstance(entry, dict):
            continue
        slot = entry.get("slot")
        at = entry.get("at")
        fields = (entry.get("version"), entry.get("sha256"), entry.get("reason", ""))
        if (
            not all(isinstance(f, str) for f in fields)
            or entry.get("outcome") not in OUTCOMES
            or isinstance(at, bool)
            or not isinstance(at, int | float)
            or not (slot is None or isinstance(slot, str))
        ):
            continue
        kept.append(
            Outcome(
                str(entry["version"])[:64],
                str(entry["sha256"])[:64],
                str(entry["outcome"]),
                str(entry.get("reason", ""))[:MAX_REASON],
                float(at),
                slot,
            )
        )
    return tuple(kept[-MAX_KEPT:])


def render_outcomes(outcomes: Sequence[Outcome]) -> bytes:
    """``outcome.json`` holding the last ``MAX_KEPT`` of ``outcomes``."""
    body = {"outcomes": [o.as_dict() for o in outcomes[-MAX_KEPT:]]}
    return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()


def last_for(outcomes: Sequence[Outcome], sha256: str) -> Outcome | None:
    for entry in reversed(outcomes):
        if entry.sha256 == sha256:
            return entry
    return None


def system_block(info: SystemInfo, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The ``system`` block of every summary and of ``status`` (docs/protocol.md)."""
    return {
        "version": info.version,
        "compatible": info.compatible,
        "booted_slot": info.booted_slot,
        "last_update": outcomes[-1].as_dict() if outcomes else None,
        "recent": [o.as_dict() for o in outcomes[-RECENT_IN_SUMMARY:]],
    }
