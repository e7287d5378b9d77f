"""What one MQTT payload from a gateway means for the academy's store (no I/O).

Topics (docs/protocol.md, "Academy broker"):

    schools/<school>/gateways/<gw>/up/<kind>   upstream messages (single, or a zlib batch)
    schools/<school>/gateways/<gw>/status      the gateway's retained presence

The payload is decoded with the relay's own decoder
(``gateway.relay.wire.decode_payload``), then every message is checked
against the topic it came on. Refusals, in the order they are checked:

    too_large      the payload is larger than ingest.max_payload_bytes      (whole payload)
    bad_topic      the topic is not one of the two above                     (whole payload)
    empty, not_batch, not_json, bad_field
                   the decoder refused the payload                           (whole payload)
    unknown_kind   the kind (topic or message) is not result/rejection/summary/state
    wrong_school   the message's school_id is not the topic's                (that message)
    wrong_gateway  the message's gateway_id is not the topic's               (that message)
    wrong_kind     the message's kind is not the topic's                     (that message)
    bad_seq        seq is not an integer 0..2^63-1                           (that message)
    bad_body       the body does not have the fields its kind needs          (that message)

The topic's school and gateway are what the broker's ACL let that gateway
publish on, so a message claiming another school is never applied.

State payloads (nearly all the volume) go first through a fast path
(``_fast_states``, msgspec); whatever it does not take goes through the
reference checks below, which alone decide a refusal's reason and detail.
A refused message is counted and logged by the worker and acknowledged
(sending it again would not make it valid); the others of its payload are
applied.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, NamedTuple

import msgspec

from gateway.errors import RejectedInput
from gateway.relay.wire import decode_payload, payload_text

KINDS = ("result", "rejection", "summary", "state")
MAX_SEQ = 2**63 - 1
_ID = r"[a-z0-9][a-z0-9-]{1,62}"
_ID_RE = re.compile(_ID)
_UP_TOPIC = re.compile(rf"schools/({_ID})/gateways/({_ID})/(?:up/([a-z_]{{1,32}})|(status))")
_TEXT_MAX = 500


@dataclass(frozen=True)
class Origin:
    """Whose topic a payload came on."""

    school_id: str
    gateway_id: str
    kind: str  # one of KINDS, or "status"


class StateRow(NamedTuple):
    """One tablet state, ready for the store.

    A NamedTuple rather than the house's frozen dataclass: as immutable and
    typed, and it is the staging table's COPY record as it stands (its fields
    are ``gateway.academy.ingest.apply.STAGING_COLUMNS``, in order), built in
    a fraction of a microsecond where a frozen dataclass of 13 fields takes
    several (each field set through ``object.__setattr__``); one is built per
    tablet state, tens of thousands a second.
    """

    school_id: str
    gateway_id: str
    seq: int
    device_id: str
    reported_at: float
    battery_pct: int
    charging: bool
    storage_free_mb: int
    storage_total_mb: int
    os_version: str
    group_name: str
    locked: bool
    report_json: str


@dataclass(frozen=True)
class SummaryRow:
    school_id: str
    gateway_id: str
    seq: int
    made_at: float
    tablets_known: int
    tablets_online: int
    low_battery: int
    storage_low: int
    apps_out_of_date: int
    backlog_rows: int
    backlog_bytes: int
    backlog_oldest_s: float
    cache_bytes_saved: int
    version: str
    body_json: str


@dataclass(frozen=True)
class DeliveryRow:
    school_id: str
    gateway_id: str
    seq: int
    command_id: str
    device_id: str
    status: str
    detail: str
    at: float


@dataclass(frozen=True)
class ProgressRow:
    school_id: str
    gateway_id: str
    seq: int
    command_id: str
    targets: int
    sent: int
    delivered: int
    done: int
    failed: int
    expired: int
    waiting: int
    complete: bool


@dataclass(frozen=True)
class RejectionRow:
    school_id: str
    gateway_id: str
    seq: int
    reason: str
    detail: str
    command_id: str | None
    envelope_sha256: str
    at: float


@dataclass(frozen=True)
class GatewayStatus:
    school_id: str
    gateway_id: str
    online: bool


Row = StateRow | SummaryRow | DeliveryRow | ProgressRow | RejectionRow


@dataclass
class Refusal:
    """One refused payload or message: the reason code, and a detail naming the field."""

    reason: str
    detail: str


@dataclass
class DecodedPayload:
    """The rows one payload holds, and what in it was refused."""

    origin: Origin | None
    rows: list[Row] = field(default_factory=list)
    status: GatewayStatus | None = None
    refusals: list[Refusal] = field(default_factory=list)


def parse_origin(topic: str) -> Origin:
    """The school, gateway and kind of an academy topic, or RejectedInput."""
    match = _UP_TOPIC.fullmatch(topic)
    if match is None:
        raise RejectedInput("bad_topic", f"not an upstream or status topic: {topic[:120]!r}")
    school_id, gateway_id, kind, status = match.groups()
    if status:
        return Origin(school_id, gateway_id, "status")
    if kind not in KINDS:
        raise RejectedInput("unknown_kind", f"unknown upstream kind {kind!r} in the topic")
    return Origin(school_id, gateway_id, kind)


def decode_upstream(topic: str, payload: bytes, *, max_payload_bytes: int) -> DecodedPayload:
    """Every row in ``payload`` that may be applied, and every refusal (never raises)."""
    try:
        if len(payload) > max_payload_bytes:
            raise RejectedInput(
                "too_large", f"payload is {len(payload)} bytes, limit {max_payload_bytes}"
            )
        origin = parse_origin(topic)
    except RejectedInput as exc:
        return DecodedPayload(None, refusals=[Refusal(exc.reason, exc.detail)])
    if origin.kind == "state":
        fast = _fast_states(origin, payload)
        if fast is not None:
            return DecodedPayload(origin, rows=fast)
    return _checked_payload(origin, payload)


def _checked_payload(origin: Origin, payload: bytes) -> DecodedPayload:
    """The reference checks: the rows, and each refusal with its reason and detail."""
    decoded = DecodedPayload(origin)
    if origin.kind == "status":
        if not payload:  # a cleared retained status
            return decoded
        try:
            decoded.status = _status(origin, payload)
        except RejectedInput as exc:
            decoded.refusals.append(Refusal(exc.reason, exc.detail))
        return decoded
    try:
        messages = decode_payload(payload)
    except RejectedInput as exc:
        decoded.refusals.append(Refusal(exc.reason, exc.detail))
        return decoded
    for message in messages:
        try:
            decoded.rows.append(_row(origin, message))
        except RejectedInput as exc:
            decoded.refusals.append(Refusal(exc.reason, exc.detail))
    return decoded


# The fast path for state payloads. msgspec (PyPI; already the box's report
# decoder, gateway.state.report) decodes each line straight into typed structs
# and checks types and bounds as it goes, several times cheaper than json.loads
# plus the checks below, which matters at tens of thousands of states a second.
# The body is kept as the JSON text it came as (msgspec.Raw) for the ``report``
# column, where the reference re-encodes it; PostgreSQL's jsonb holds the same
# value either way. It is strictly narrower than the reference checks (UTF-8
# only, no bool for a number, no float for an integer, no null for a field, the
# same bounds): a payload it takes, the reference takes with the same rows
# (tests/academy/test_academy_ingest.py::TestFastPath); if any line of a payload
# is not taken, the whole payload goes through the reference.
class _Envelope(msgspec.Struct, gc=False):  # transient, holds no cycles
    school_id: str
    gateway_id: str
    seq: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
    kind: str
    body: msgspec.Raw


class _StateBody(msgspec.Struct, gc=False):
    device_id: str
    ts: Annotated[float, msgspec.Meta(ge=0, lt=2**40)]  # a JSON integer is taken too
    battery_pct: Annotated[int, msgspec.Meta(ge=0, le=100)]
    charging: bool
    storage_free_mb: Annotated[int, msgspec.Meta(ge=0, le=2**31)]
    storage_total_mb: Annotated[int, msgspec.Meta(ge=0, le=2**31)]
    os_version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    locked: bool
    group: str = ""


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_STATE_BODY = msgspec.json.Decoder(_StateBody)


def _fast_states(origin: Origin, payload: bytes) -> list[Row] | None:
    """Every state of an up/state payload if the fast path takes them all, else None."""
    try:
        text = payload_text(payload)
        text.decode()  # not UTF-8: the reference refuses the payload (not_json)
        rows: list[Row] = []
        for line in text.splitlines():
            message = _ENVELOPE.decode(line)
            body = _STATE_BODY.decode(message.body)
            if (
                message.school_id != origin.school_id
                or message.gateway_id != origin.gateway_id
                or message.kind != "state"
                or body.storage_free_mb > body.storage_total_mb
                or not _ID_RE.fullmatch(body.device_id)
                or (body.group and not _ID_RE.fullmatch(body.group))
            ):
                return None
            rows.append(
                StateRow(
                    origin.school_id,
                    origin.gateway_id,
                    message.seq,
                    body.device_id,
                    body.ts,
                    body.battery_pct,
                    body.charging,
                    body.storage_free_mb,
                    body.storage_total_mb,
                    body.os_version,
                    body.group,
                    body.locked,
                    str(message.body, "utf-8"),
                )
            )
    except (RejectedInput, UnicodeDecodeError, msgspec.DecodeError):  # ValidationError too
        return None
    return rows


def _status(origin: Origin, payload: bytes) -> GatewayStatus:
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RejectedInput("not_json", f"status is not JSON: {exc}") from exc
    if not isinstance(value, dict) or type(value.get("online")) is not bool:
        raise RejectedInput("bad_body", "status must be an object with a boolean 'online'")
    return GatewayStatus(origin.school_id, origin.gateway_id, value["online"])


def _row(origin: Origin, message: dict[str, Any]) -> Row:
    if message.get("school_id") != origin.school_id:
        raise RejectedInput(
            "wrong_school",
            f"message says school {str(message.get('school_id'))[:70]!r} "
            f"on school {origin.school_id}'s topic",
        )
    if message.get("gateway_id") != origin.gateway_id:
        raise RejectedInput(
            "wrong_gateway",
            f"message says gateway {str(message.get('gateway_id'))[:70]!r} "
            f"on gateway {origin.gateway_id}'s topic",
        )
    kind = message.get("kind")
    if kind not in KINDS:
        raise RejectedInput("unknown_kind", f"unknown upstream kind {str(kind)[:40]!r}")
    if kind != origin.kind:
        raise RejectedInput("wrong_kind", f"a {kind} message on an up/{origin.kind} topic")
    seq = message.get("seq")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise RejectedInput("bad_seq", f"seq must be an integer 0..2^63-1, got {seq!r:.40}")
    body = message.get("body")
    if not isinstance(body, dict):
        raise RejectedInput("bad_body", "body must be an object")
    if kind == "state":
        return _state(origin, seq, body)
    if kind == "summary":
        return _summary(origin, seq, body)
    if kind == "result":
        return _result(origin, seq, body)
    return _rejection(origin, seq, body)


def _bad(name: str, what: str) -> RejectedInput:
    return RejectedInput("bad_body", f"field {name!r} must be {what}")


def _int(body: dict[str, Any], name: str, low: int = 0, high: int = 2**62) -> int:
    value = body.get(name)
    if type(value) is not int or not low <= value <= high:
        raise _bad(name, f"an integer {low}..{high}")
    return value


def _number(body: dict[str, Any], name: str) -> float:
    value = body.get(name)
    if type(value) is not int and type(value) is not float:
        raise _bad(name, "a number")
    number = float(value)
    if not math.isfinite(number) or not 0 <= number < 2**40:
        raise _bad(name, "a number of unix seconds")
    return number


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if type(value) is not bool:
        raise _bad(name, "true or false")
    return value


def _text(body: dict[str, Any], name: str, limit: int = 64, *, empty: bool = False) -> str:
    value = body.get(name, "" if empty else None)
    if type(value) is not str or len(value) > limit or (not value and not empty):
        raise _bad(name, f"a string of {0 if empty else 1}-{limit} characters")
    return value


def _identifier(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if type(value) is not str or not _ID_RE.fullmatch(value):
        raise _bad(name, "an identifier (2-63 of a-z, 0-9, '-')")
    return value


def _json(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def _state(origin: Origin, seq: int, body: dict[str, Any]) -> StateRow:
    group = body.get("group", "")
    if group != "" and not (type(group) is str and _ID_RE.fullmatch(group)):
        raise _bad("group", "an identifier")
    total = _int(body, "storage_total_mb", 0, 2**31)
    free = _int(body, "storage_free_mb", 0, total)
    return StateRow(
        school_id=origin.school_id,
        gateway_id=origin.gateway_id,
        seq=seq,
        device_id=_identifier(body, "device_id"),
        reported_at=_number(body, "ts"),
        battery_pct=_int(body, "battery_pct", 0, 100),
        charging=_flag(body, "charging"),
        storage_free_mb=free,
        storage_total_mb=total,
        os_version=_text(body, "os_version"),
        group_name=group,
        locked=_flag(body, "locked"),
        report_json=_json(body),
    )


def _section(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name, {})
    if not isinstance(value, dict):
        raise _bad(name, "an object")
    return value


def _count(section: dict[str, Any], name: str, where: str) -> int:
    value = section.get("count", 0)
    if type(value) is not int or value < 0:
        raise _bad(f"{where}.{name}", "a count")
    return value


def _summary(origin: Origin, seq: int, body: dict[str, Any]) -> SummaryRow:
    tablets = _section(body, "tablets")
    backlog = _section(body, "backlog")
    cache = _section(body, "cache")
    apps = _section(body, "apps")
    out_of_date = _section(apps, "out_of_date")
    missing = _section(apps, "missing")
    stale: set[str] = set()
    count = 0
    for table in (out_of_date, missing):
        for entry in table.values():
            if not isinstance(entry, dict):
                raise _bad("apps.out_of_date", "an object of {count, devices}")
            devices = entry.get("devices", [])
            if isinstance(devices, list):
                stale.update(d for d in devices if isinstance(d, str))
            count = max(count, _count(entry, "count", "apps"))
    version = body.get("version", "")
    return SummaryRow(
        school_id=origin.school_id,
        gateway_id=origin.gateway_id,
        seq=seq,
        made_at=_number(body, "at"),
        tablets_known=_int(tablets, "known"),
        tablets_online=_int(tablets, "online"),
        low_battery=_count(_section(body, "low_battery"), "count", "low_battery"),
        storage_low=_count(_section(body, "storage_low"), "count", "storage_low"),
        # At least the largest per-package count; the listed devices when more.
        apps_out_of_date=max(count, len(stale)),
        backlog_rows=_int(backlog, "rows") if "rows" in backlog else 0,
        backlog_bytes=_int(backlog, "bytes") if "bytes" in backlog else 0,
        backlog_oldest_s=_number(backlog, "oldest_age_s") if "oldest_age_s" in backlog else 0.0,
        cache_bytes_saved=(
            _int(cache, "uplink_bytes_saved") if "uplink_bytes_saved" in cache else 0
        ),
        version=version[:64] if isinstance(version, str) else "",
        body_json=_json(body),
    )


def _result(origin: Origin, seq: int, body: dict[str, Any]) -> DeliveryRow | ProgressRow:
    kind = body.get("type")
    command_id = _text(body, "command_id")
    if kind == "delivery":
        status = body.get("status")
        if status not in ("received", "done", "failed", "expired"):
            raise _bad("status", "received, done, failed or expired")
        return DeliveryRow(
            school_id=origin.school_id,
            gateway_id=origin.gateway_id,
            seq=seq,
            command_id=command_id,
            device_id=_identifier(body, "device_id"),
            status=status,
            detail=_text(body, "detail", _TEXT_MAX, empty=True),
            at=_number(body, "at"),
        )
    if kind == "progress":
        return ProgressRow(
            school_id=origin.school_id,
            gateway_id=origin.gateway_id,
            seq=seq,
            command_id=command_id,
            targets=_int(body, "targets"),
            sent=_int(body, "sent"),
            delivered=_int(body, "delivered"),
            done=_int(body, "done"),
            failed=_int(body, "failed"),
            expired=_int(body, "expired"),
            waiting=_int(body, "waiting"),
            complete=_flag(body, "complete"),
        )
    raise _bad("type", "delivery or progress")


def _rejection(origin: Origin, seq: int, body: dict[str, Any]) -> RejectionRow:
    command_id = body.get("command_id")
    if command_id is not None and (type(command_id) is not str or len(command_id) > 64):
        raise _bad("command_id", "a string of at most 64 characters, or null")
    return RejectionRow(
        school_id=origin.school_id,
        gateway_id=origin.gateway_id,
        seq=seq,
        reason=_text(body, "reason"),
        detail=_text(body, "detail", _TEXT_MAX * 4, empty=True),
        command_id=command_id,
        envelope_sha256=_text(body, "envelope_sha256", 64, empty=True),
        at=_number(body, "at"),
    )
