"""Commands from the console: the order, who it will reach, signing and publishing.

``parse_order`` (no I/O) turns a submitted form into a :class:`CommandOrder`
or RejectedInput naming the field: an action from the allowed set with its
parameters (checked by gateway.commands.actions, exactly as each gateway
will check them), several schools, one target (a group, devices, or every
tablet) and a time to live.

``reach`` says, per school, how many tablets the order targets, from the
latest states the ingest holds (the gateway resolves groups again from what
its tablets last reported when it accepts the command).

``send`` signs one envelope per school (gateway.academy.signing and
gateway.signed, the code ``academy send`` uses, with the academy key read
from ``console.key_file``, which must be mode 0600), commits the command,
its envelopes and an audit entry in ONE transaction, and only then
publishes each envelope, QoS 1, to the school's command topic
(gateway.academy.cli.publish_envelopes, as ``academy send`` does). A
publish that fails is recorded on that school's row and shown; the same
envelope can be published again (a gateway that already accepted it
refuses the repeat as ``replayed`` and executes nothing twice).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.academy.cli import publish_envelopes
from gateway.academy.config import AcademyConfig, broker_tls
from gateway.academy.signing import build_payload, load_private_key, new_command_id, parse_ttl
from gateway.academy.store.database import Conn
from gateway.commands.actions import ACTIONS, check_action
from gateway.errors import BrokerError, RejectedInput
from gateway.security.keyfiles import check_private_file
from gateway.signed import sign_envelope

log = logging.getLogger(__name__)

ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
SPLIT = re.compile(r"[\s,;]+")
MAX_SCHOOLS = 5_000
MAX_DEVICES = 5_000
TARGET_KINDS = ("group", "devices", "all")
# The form fields of each action's parameters (name in the form -> name in params).
ACTION_FIELDS: dict[str, tuple[str, ...]] = {
    action: tuple(schema) for action, schema in ACTIONS.items() if action != "set_policy"
}


@dataclass(frozen=True)
class CommandOrder:
    """A command as the operator asked for it."""

    action: str
    params: dict[str, Any]
    schools: tuple[str, ...]
    targets: dict[str, Any]  # {"group": g} | {"devices": [...]} | {"all": True}
    ttl_s: float


def _values(form: Mapping[str, Any], name: str) -> list[str]:
    getall = getattr(form, "getall", None)
    raw = getall(name, []) if getall is not None else form.get(name, [])
    if isinstance(raw, str):
        raw = [raw]
    return [v for v in raw if isinstance(v, str)]


def _one(form: Mapping[str, Any], name: str) -> str:
    values = _values(form, name)
    return values[0].strip() if values else ""


def _ids(text_values: list[str], field: str, limit: int) -> tuple[str, ...]:
    found: list[str] = []
    for text in text_values:
        found.extend(part for part in SPLIT.split(text) if part)
    unique = tuple(dict.fromkeys(found))
    if not unique:
        raise RejectedInput("missing_field", f"{field}: name at least one")
    if len(unique) > limit:
        raise RejectedInput("bad_field", f"{field}: at most {limit}")
    for value in unique:
        if not ID.fullmatch(value):
            raise RejectedInput("bad_field", f"{field}: {value[:70]!r} is not an identifier")
    return unique


def parse_order(form: Mapping[str, Any], *, max_ttl_s: float) -> CommandOrder:
    """The command a submitted form describes, or RejectedInput naming the field."""
    action = _one(form, "action")
    if action not in ACTIONS:
        raise RejectedInput("unknown_action", f"action: {action[:40]!r} is not allowed")
    params: dict[str, Any] = {}
    if action == "set_policy":
        try:
            params = json.loads(_one(form, "policy") or "{}")
        except json.JSONDecodeError as exc:
            raise RejectedInput("bad_field", f"policy: not JSON: {exc}") from exc
    else:
        for name in ACTION_FIELDS[action]:
            value = _one(form, name)
            if value:
                params[name] = value
    check_action(action, params)
    schools = _ids(_values(form, "schools"), "schools", MAX_SCHOOLS)
    kind = _one(form, "target")
    if kind == "group":
        group = _one(form, "group")
        if not ID.fullmatch(group):
            raise RejectedInput("bad_field", "group: name one group (an identifier)")
        targets: dict[str, Any] = {"group": group}
    elif kind == "devices":
        targets = {"devices": list(_ids(_values(form, "devices"), "devices", MAX_DEVICES))}
    elif kind == "all":
        targets = {"all": True}
    else:
        raise RejectedInput("bad_field", "target: choose a group, devices, or all tablets")
    ttl_text = _one(form, "ttl") or "1d"
    ttl_s = parse_ttl(ttl_text)
    if ttl_s < 60 or ttl_s > max_ttl_s:
        raise RejectedInput("bad_field", f"ttl: between 60 s and {int(max_ttl_s)} s")
    return CommandOrder(action, params, schools, targets, ttl_s)


async def reach(conn: Conn, order: CommandOrder) -> dict[str, Any]:
    """Per school, the tablets the order targets today; schools the store does not know."""
    known = {
        r["school_id"]
        for r in await conn.fetch(
            "SELECT school_id FROM schools WHERE school_id = ANY($1::text[])", list(order.schools)
        )
    }
    if "group" in order.targets:
        rows = await conn.fetch(
            "SELECT school_id, count(*) AS n FROM tablets WHERE school_id = ANY($1::text[])"
            " AND group_name = $2 GROUP BY school_id",
            list(order.schools),
            order.targets["group"],
        )
    elif "devices" in order.targets:
        rows = await conn.fetch(
            "SELECT school_id, count(*) AS n FROM tablets WHERE school_id = ANY($1::text[])"
            " AND device_id = ANY($2::text[]) GROUP BY school_id",
            list(order.schools),
            order.targets["devices"],
        )
    else:
        rows = await conn.fetch(
            "SELECT school_id, count(*) AS n FROM tablets WHERE school_id = ANY($1::text[])"
            " GROUP BY school_id",
            list(order.schools),
        )
    counts = {r["school_id"]: int(r["n"]) for r in rows}
    per_school = [
        {"school_id": s, "known": s in known, "tablets": counts.get(s, 0)} for s in order.schools
    ]
    return {
        "schools": per_school,
        "unknown": [s for s in order.schools if s not in known],
        "tablets": sum(counts.values()),
    }


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The academy key, refused unless only its owner may read it (mode 0600)."""
    check_private_file(path)
    return load_private_key(path)


async def send(
    conn: Conn,
    config: AcademyConfig,
    order: CommandOrder,
    *,
    actor: str,
    address: str,
    key: Ed25519PrivateKey | None = None,
) -> str:
    """Sign, commit, then publish; return the command id (see the module docstring)."""
    unknown = (await reach(conn, order))["unknown"]
    if unknown:
        raise RejectedInput("bad_field", f"schools: unknown school(s) {', '.join(unknown[:5])}")
    signing_key = key or load_signing_key(config.console.key_file)
    command_id = new_command_id()
    now = time.time()
    not_after = now + order.ttl_s
    envelopes = [
        (
            school,
            sign_envelope(
                signing_key,
                config.console.key_id,
                build_payload(
                    command_id=command_id,
                    school_id=school,
                    targets=order.targets,
                    action=order.action,
                    params=order.params,
                    issued_at=now,
                    not_after=not_after,
                ),
            ),
        )
        for school in order.schools
    ]
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO commands (command_id, action, params, targets, schools, sent_by,"
            " issued_at, not_after) VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6, $7, $8)",
            command_id,
            order.action,
            json.dumps(order.params),
            json.dumps(order.targets),
            list(order.schools),
            actor,
            now,
            not_after,
        )
        await conn.executemany(
            "INSERT INTO command_schools (command_id, school_id, envelope) VALUES ($1, $2, $3)",
            [(command_id, school, envelope) for school, envelope in envelopes],
        )
        await audit(
            conn,
            actor,
            address,
            "command.send",
            {
                "command_id": command_id,
                "action": order.action,
                "params": order.params,
                "targets": order.targets,
                "schools": list(order.schools),
                "ttl_s": order.ttl_s,
            },
        )
    await publish(conn, config, command_id, envelopes)
    return command_id


async def publish(
    conn: Conn,
    config: AcademyConfig,
    command_id: str,
    envelopes: list[tuple[str, bytes]],
) -> None:
    """Publish the envelopes and record, per school, when it went or why it did not."""
    error = ""
    try:
        await publish_envelopes(
            config.broker.host, config.broker.port, envelopes, tls=broker_tls(config)
        )
    except BrokerError as exc:
        error = str(exc)[:500]
        log.error("command %s not published: %s", command_id, error)
    at = datetime.datetime.now(datetime.UTC)
    await conn.execute(
        "UPDATE command_schools"
        " SET published_at = CASE WHEN $3::text = '' THEN $4::timestamptz END,"
        " publish_error = $3 WHERE command_id = $1 AND school_id = ANY($2::text[])",
        command_id,
        [school for school, _ in envelopes],
        error,
        at,
    )


async def publish_again(conn: Conn, config: AcademyConfig, command_id: str) -> int:
    """Publish again the envelopes of a command that did not go out; how many."""
    rows = await conn.fetch(
        "SELECT school_id, envelope FROM command_schools"
        " WHERE command_id = $1 AND published_at IS NULL ORDER BY school_id",
        command_id,
    )
    envelopes = [(r["school_id"], bytes(r["envelope"])) for r in rows]
    if envelopes:
        await publish(conn, config, command_id, envelopes)
    return len(envelopes)


async def audit(
    conn: Conn, actor: str, address: str, action: str, detail: Mapping[str, Any]
) -> None:
    """One line of the audit log (inside the caller's transaction when there is one)."""
    await conn.execute(
        "INSERT INTO audit_log (actor, address, action, detail) VALUES ($1, $2, $3, $4::jsonb)",
        actor[:200],
        address[:100],
        action,
        json.dumps(dict(detail), sort_keys=True),
    )
