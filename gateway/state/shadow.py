"""The device shadow: the latest valid state of every tablet, and its presence.

SQL over the store's connection; every write happens inside a transaction the
caller holds, so reports are stored in batches (few commits, little SD wear).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from gateway.state.order import NO_REPORT, Standing, after, supersedes
from gateway.state.report import Presence, StateReport
from gateway.store.database import Database

# Only reports that won by gateway.state.order reach this statement.
_UPSERT_REPORT = """
INSERT INTO shadow (
    device_id, state, report_seq, group_name, first_seen, last_seen, upstream_seq, upstream_since,
    report_epoch, retired_epochs
)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (device_id) DO UPDATE SET
    state = excluded.state,
    report_seq = excluded.report_seq,
    group_name = excluded.group_name,
    last_seen = excluded.last_seen,
    upstream_seq = excluded.upstream_seq,
    upstream_since = coalesce(shadow.upstream_since, excluded.upstream_since),
    report_epoch = excluded.report_epoch,
    retired_epochs = excluded.retired_epochs
"""
_IN_CHUNK = 500

_UPSERT_PRESENCE = """
INSERT INTO shadow (device_id, state, report_seq, first_seen, last_seen, online, presence_at)
VALUES (?, '{}', -1, ?, ?, ?, ?)
ON CONFLICT (device_id) DO UPDATE SET
    online = excluded.online,
    presence_at = excluded.presence_at,
    last_seen = CASE WHEN excluded.online THEN excluded.last_seen ELSE shadow.last_seen END
"""


@dataclass(frozen=True)
class TabletRow:
    """One tablet as the shadow knows it."""

    device_id: str
    group: str
    online: bool
    first_seen: float
    last_seen: float
    state: dict[str, Any]


_CANONICAL = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


@dataclass(frozen=True)
class Winner:
    """A report that supersedes its tablet's stored one, and the standing it leaves."""

    report: StateReport
    standing: Standing


async def standings(conn: aiosqlite.Connection, devices: Iterable[str]) -> dict[str, Standing]:
    """The stored order of these tablets' latest reports (inside the caller's transaction)."""
    wanted = sorted(set(devices))
    found: dict[str, Standing] = {}
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        async with conn.execute(
            "SELECT device_id, report_epoch, report_seq, retired_epochs FROM shadow "
            f"WHERE device_id IN ({', '.join('?' * len(chunk))})",
            chunk,
        ) as cursor:
            for device_id, epoch, seq, retired in await cursor.fetchall():
                found[device_id] = Standing(epoch, int(seq), tuple(json.loads(retired)))
    return found


def winners(reports: Iterable[StateReport], stored: Mapping[str, Standing]) -> list[Winner]:
    """The report that wins for each tablet over ``stored`` and the batch, in arrival order.

    The rule is gateway.state.order: seq within an epoch, a new epoch
    retires the old one; ``ts`` never decides.
    """
    latest: dict[str, Winner] = {}
    for report in reports:
        kept = latest.get(report.device_id)
        standing = kept.standing if kept else stored.get(report.device_id, NO_REPORT)
        if supersedes(standing, report.epoch, report.seq):
            latest[report.device_id] = Winner(report, after(standing, report.epoch, report.seq))
    return list(latest.values())


async def store_reports(
    conn: aiosqlite.Connection, won: Sequence[Winner], now: float, first_upstream_seq: int
) -> None:
    """Upsert winning reports and mark each pending upstream (relay outbox).

    Report i gets upstream sequence number ``first_upstream_seq + i``.
    """
    await conn.executemany(
        _UPSERT_REPORT,
        [
            (
                w.report.device_id,
                canonical_json(w.report.as_dict()),
                w.report.seq,
                w.report.group,
                now,
                now,
                seq,
                now,
                w.standing.epoch,
                json.dumps(list(w.standing.retired)),
            )
            for seq, w in enumerate(won, first_upstream_seq)
        ],
    )


async def store_presence(
    conn: aiosqlite.Connection, presences: Iterable[Presence], now: float
) -> None:
    await conn.executemany(
        _UPSERT_PRESENCE,
        [(p.device_id, now, now, int(p.online), now) for p in presences],
    )


async def load_tablets(db: Database) -> list[TabletRow]:
    rows = await db.fetch_all(
        "SELECT device_id, group_name, online, first_seen, last_seen, state "
        "FROM shadow ORDER BY device_id"
    )
    return [
        TabletRow(
            device_id=row[0],
            group=row[1],
            online=bool(row[2]),
            first_seen=row[3],
            last_seen=row[4],
            state=json.loads(row[5]),
        )
        for row in rows
    ]


async def tablet_counts(db: Database) -> tuple[int, int]:
    """(known, online) tablets."""
    row = await db.fetch_one("SELECT count(*), coalesce(sum(online), 0) FROM shadow")
    return (int(row[0]), int(row[1])) if row else (0, 0)
