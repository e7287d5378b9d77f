"""The durable command queue: SQL over the store (tables in migration 4).

``commands`` holds each accepted command with its exact signed bytes;
``deliveries`` one row per target tablet. Functions taking a connection run
inside the caller's transaction; those taking the Database only read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from gateway.commands.envelope import Command, Targets
from gateway.commands.progress import TO_PUBLISH, UNFINISHED, Progress, TabletResult
from gateway.commands.progress import state_after_result as _next_state
from gateway.store.database import Database

_IN_CHUNK = 500
_TO_PUBLISH_SQL = ", ".join(f"'{s}'" for s in TO_PUBLISH)
_UNFINISHED_SQL = ", ".join(f"'{s}'" for s in UNFINISHED)


@dataclass(frozen=True)
class PendingDelivery:
    """A delivery to (re)publish, with what the tablet must receive."""

    device_id: str
    command_seq: int
    command_id: str
    key_id: str
    payload: bytes
    signature: bytes


@dataclass(frozen=True)
class Transition:
    """A delivery whose state changed (to report upstream)."""

    command_seq: int
    command_id: str
    device_id: str
    state: str
    detail: str


async def _rows(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    async with conn.execute(sql, tuple(params)) as cursor:
        return list(await cursor.fetchall())


async def seen_command_ids(db: Database) -> dict[str, str]:
    """Every command id still on record -> sha256 of its payload (replay protection)."""
    rows = await db.fetch_all("SELECT command_id, payload_sha256 FROM commands")
    return {row[0]: row[1] for row in rows}


async def unfinished_commands(conn: aiosqlite.Connection) -> int:
    rows = await _rows(
        conn,
        f"SELECT count(DISTINCT command_seq) FROM deliveries WHERE state IN ({_UNFINISHED_SQL})",
    )
    return int(rows[0][0])


async def resolve_targets(conn: aiosqlite.Connection, targets: Targets) -> list[str]:
    """Tablets a command is for, decided now (groups and "all" from the shadow)."""
    if targets.everyone:
        rows = await _rows(conn, "SELECT device_id FROM shadow ORDER BY device_id")
    elif targets.group is not None:
        rows = await _rows(
            conn,
            "SELECT device_id FROM shadow WHERE group_name = ? ORDER BY device_id",
            (targets.group,),
        )
    else:
        return list(targets.devices)
    return [row[0] for row in rows]


async def insert_command(
    conn: aiosqlite.Connection,
    command: Command,
    devices: Sequence[str],
    now: float,
    elapsed_deadline: float,
) -> int:
    """Store the command and one pending delivery per device; return its sequence.

    ``elapsed_deadline``: its not_after on the box's elapsed time (gateway.commands.clock).
    """
    cursor = await conn.execute(
        "INSERT INTO commands (command_id, key_id, action, issued_at, not_after, targets, "
        "payload, signature, payload_sha256, accepted_at, elapsed_deadline) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            command.command_id,
            command.key_id,
            command.action,
            command.issued_at,
            command.not_after,
            json.dumps(command.targets.as_dict(), separators=(",", ":")),
            command.payload,
            command.signature,
            command.payload_sha256,
            now,
            elapsed_deadline,
        ),
    )
    seq = cursor.lastrowid
    await cursor.close()
    assert seq is not None
    await conn.executemany(
        "INSERT INTO deliveries (device_id, command_seq, updated) VALUES (?, ?, ?)",
        [(device, seq, now) for device in devices],
    )
    return seq


_PENDING_SELECT = (
    "SELECT d.device_id, c.seq, c.command_id, c.key_id, c.payload, c.signature "
    "FROM deliveries d JOIN commands c ON c.seq = d.command_seq "
    "WHERE d.state IN ({states}) AND (c.not_after > ? OR c.elapsed_deadline > ?)"
)


async def pending_deliveries(
    db: Database,
    devices: Collection[str] | None,
    now: float,
    elapsed: float,
    *,
    include_sent: bool,
) -> list[PendingDelivery]:
    """Unexpired deliveries waiting for ``devices`` (None: every device), in order.

    Unexpired: the wall clock (``now``) or the elapsed clock (``elapsed``)
    says the command still lives. Without ``include_sent`` only deliveries
    never published are returned.
    """
    select = _PENDING_SELECT.format(states=_TO_PUBLISH_SQL if include_sent else "'pending'")
    rows: list[Any] = []
    if devices is None:
        rows = await db.fetch_all(f"{select} ORDER BY d.device_id, c.seq", (now, elapsed))
    else:
        wanted = sorted(devices)
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows += await db.fetch_all(
                f"{select} AND d.device_id IN ({marks}) ORDER BY d.device_id, c.seq",
                (now, elapsed, *chunk),
            )
    return [PendingDelivery(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5])) for r in rows]


async def stale_sent_devices(db: Database, sent_before: float) -> list[str]:
    """Devices with a delivery published before ``sent_before`` and still unanswered."""
    rows = await db.fetch_all(
        "SELECT DISTINCT device_id FROM deliveries WHERE state = 'sent' AND last_sent < ?",
        (sent_before,),
    )
    return [row[0] for row in rows]


async def mark_sent(db: Database, sent: Iterable[tuple[str, int]], now: float) -> None:
    """Record that these (device, command_seq) deliveries were published."""
    async with db.transaction() as conn:
        await conn.executemany(
            "UPDATE deliveries SET state = CASE WHEN state = 'pending' THEN 'sent' ELSE state END,"
            " attempts = attempts + 1, last_sent = ?, updated = ? "
            "WHERE device_id = ? AND command_seq = ?",
            [(now, now, device, seq) for device, seq in sent],
        )


async def apply_results(
    conn: aiosqlite.Connection, results: Iterable[TabletResult], now: float
) -> tuple[list[Transition], list[TabletResult]]:
    """Record tablets' answers; return (changed deliveries, answers matching no delivery)."""
    changed: list[Transition] = []
    unknown: list[TabletResult] = []
    for result in results:
        rows = await _rows(
            conn,
            "SELECT c.seq, d.state FROM deliveries d JOIN commands c ON c.seq = d.command_seq "
            "WHERE c.command_id = ? AND d.device_id = ?",
            (result.command_id, result.device_id),
        )
        if not rows:
            unknown.append(result)
            continue
        seq, current = rows[0]
        new_state = _next_state(current, result.status)
        if new_state is None:
            continue
        await conn.execute(
            "UPDATE deliveries SET state = ?, detail = ?, updated = ? "
            "WHERE device_id = ? AND command_seq = ?",
            (new_state, result.detail, now, result.device_id, seq),
        )
        changed.append(
            Transition(seq, result.command_id, result.device_id, new_state, result.detail)
        )
    return changed, unknown


async def expire_due(conn: aiosqlite.Connection, now: float, elapsed: float) -> list[Transition]:
    """Close every unconfirmed delivery whose command's life is over on BOTH clocks."""
    rows = await _rows(
        conn,
        "SELECT c.seq, c.command_id, d.device_id FROM deliveries d "
        "JOIN commands c ON c.seq = d.command_seq "
        f"WHERE d.state IN ({_TO_PUBLISH_SQL}) AND c.not_after <= ? AND c.elapsed_deadline <= ?",
        (now, elapsed),
    )
    await conn.executemany(
        "UPDATE deliveries SET state = 'expired', detail = 'not_after passed', updated = ? "
        "WHERE device_id = ? AND command_seq = ?",
        [(now, row[2], row[0]) for row in rows],
    )
    return [Transition(row[0], row[1], row[2], "expired", "not_after passed") for row in rows]


async def next_expiry(db: Database, now: float, elapsed: float) -> float | None:
    """Seconds until the next command with deliveries still to publish expires (both clocks)."""
    row = await db.fetch_one(
        "SELECT min(max(c.not_after - ?, c.elapsed_deadline - ?)) FROM commands c "
        "WHERE EXISTS (SELECT 1 FROM deliveries d "
        f"WHERE d.command_seq = c.seq AND d.state IN ({_TO_PUBLISH_SQL}))",
        (now, elapsed),
    )
    return float(row[0]) if row and row[0] is not None else None


async def prune(
    conn: aiosqlite.Connection, expired_before: float, elapsed_before: float
) -> list[str]:
    """Forget finished commands past their life by ``retention`` on BOTH clocks.

    ``expired_before`` is a wall time, ``elapsed_before`` an elapsed time
    (gateway.commands.clock). Safe for replay protection: an envelope with a
    not_after in the past is rejected as expired before its id is looked up,
    and an id is kept until both clocks agree its not_after is long past, so
    a wall clock that jumped ahead and came back cannot open a replay.
    """
    rows = await _rows(
        conn,
        "SELECT seq, command_id FROM commands c WHERE not_after < ? AND elapsed_deadline < ? "
        "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.command_seq = c.seq "
        f"AND d.state IN ({_UNFINISHED_SQL}))",
        (expired_before, elapsed_before),
    )
    await conn.executemany("DELETE FROM commands WHERE seq = ?", [(row[0],) for row in rows])
    return [row[1] for row in rows]


Fetch = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]


async def _progress(fetch: Fetch, seqs: Iterable[int]) -> list[Progress]:
    wanted = sorted(set(seqs))
    found: dict[int, tuple[str, str, dict[str, int]]] = {}
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        rows = await fetch(
            "SELECT c.seq, c.command_id, c.action, d.state, count(d.device_id) FROM commands c "
            "LEFT JOIN deliveries d ON d.command_seq = c.seq "
            f"WHERE c.seq IN ({', '.join('?' * len(chunk))}) GROUP BY c.seq, d.state",
            chunk,
        )
        for seq, command_id, action, state, count in rows:
            counts = found.setdefault(seq, (command_id, action, {}))[2]
            if state is not None:
                counts[state] = count
    return [Progress.from_counts(*found[seq]) for seq in wanted if seq in found]


async def progress_of(conn: aiosqlite.Connection, seqs: Iterable[int]) -> list[Progress]:
    """Progress of the given commands, inside the caller's transaction."""
    return await _progress(lambda sql, params: _rows(conn, sql, params), seqs)


async def recent_progress(db: Database, limit: int = 10) -> list[Progress]:
    """Progress of the latest ``limit`` accepted commands, newest first."""
    rows = await db.fetch_all("SELECT seq FROM commands ORDER BY seq DESC LIMIT ?", (limit,))
    found = await _progress(
        lambda sql, params: db.fetch_all(sql, tuple(params)), [r[0] for r in rows]
    )
    return found[::-1]


async def command_totals(db: Database) -> dict[str, int]:
    """How many commands are on record and how many still wait for tablets."""
    row = await db.fetch_one(
        "SELECT (SELECT count(*) FROM commands), (SELECT count(DISTINCT command_seq) "
        f"FROM deliveries WHERE state IN ({_UNFINISHED_SQL}))"
    )
    return {"on_record": int(row[0]), "unfinished": int(row[1])} if row else {}


async def status_view(db: Database, recent: int = 10) -> dict[str, Any]:
    """What ``status`` shows about commands: totals and the latest commands' progress."""
    view: dict[str, Any] = await command_totals(db)
    view["recent"] = [p.as_body() for p in await recent_progress(db, recent)]
    for item in view["recent"]:
        item.pop("type")
    return view
