"""The device shadow: the latest valid state of every tablet, and its presence.

SQL over the store's connection; every write happens inside a transaction the
caller holds, so reports are stored in batches (few commits, little SD wear).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from gateway.state.report import Presence, StateReport
from gateway.store.database import Database

_UPSERT_REPORT = """
INSERT INTO shadow (
    device_id, state, report_seq, group_name, first_seen, last_seen, upstream_seq, upstream_since
)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (device_id) DO UPDATE SET
    state = excluded.state,
    report_seq = excluded.report_seq,
    group_name = excluded.group_name,
    last_seen = excluded.last_seen,
    upstream_seq = excluded.upstream_seq,
    upstream_since = coalesce(shadow.upstream_since, excluded.upstream_since)
WHERE excluded.report_seq > shadow.report_seq
   OR json_extract(excluded.state, '$.ts') > json_extract(shadow.state, '$.ts')
"""

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


async def store_reports(
    conn: aiosqlite.Connection, reports: Sequence[StateReport], now: float, first_upstream_seq: int
) -> None:
    """Upsert reports and mark each stored one pending upstream (relay outbox).

    Report i gets upstream sequence number ``first_upstream_seq + i``. An
    older report (redelivered, reordered) never overwrites a newer one and
    leaves the pending mark alone; its number is simply never used.
    """
    await conn.executemany(
        _UPSERT_REPORT,
        [
            (r.device_id, canonical_json(r.as_dict()), r.seq, r.group, now, now, seq, now)
            for seq, r in enumerate(reports, first_upstream_seq)
        ],
    )


def latest_per_tablet(reports: Iterable[StateReport]) -> list[StateReport]:
    """The report that wins for each tablet, by the shadow's rule, in arrival order."""
    latest: dict[str, StateReport] = {}
    for report in reports:
        kept = latest.get(report.device_id)
        if kept is None or report.seq > kept.seq or report.ts > kept.ts:
            latest[report.device_id] = report
    return list(latest.values())


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
