"""The outbox: what must go upstream, durable in SQLite until the academy acks it.

Two places hold pending upstream messages, both in the one SQLite file:

* the ``outbox`` table: command results, rejections, summaries (and any
  message given to ``enqueue``);
* the ``shadow`` table: a tablet whose latest state has not reached the
  academy yet carries ``upstream_seq``. Latest wins by construction: a newer
  report overwrites the row and takes a new, higher sequence number, so a
  tablet never has more than one pending state and its order is kept. A
  state report therefore costs no extra row (few pages written per batch).

``enqueue`` runs inside the caller's transaction, so a message is in the
outbox exactly when the change that produced it is committed. Every message
gets the next number of the durable per-gateway sequence ``upstream_seq``
(in ``meta``), which the academy deduplicates on. Kinds and drain priority:

    result, rejection   0   command results and rejected envelopes; never shed
    summary             1   per-school summaries
    state               2   per-tablet state; a newer one replaces the pending one

A row leaves the outbox only in ``acknowledge``, after the academy broker's
PUBACK. The byte budget and shedding: gateway.relay.budget.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from gateway.metrics import Counters
from gateway.relay.budget import Pending, ShedPlan, plan_shedding
from gateway.store.database import Database, next_sequence

log = logging.getLogger(__name__)

PRIORITY = {"result": 0, "rejection": 0, "summary": 1, "state": 2}
SEQUENCE = "upstream_seq"
SHED_TOTAL_KEY = "shed_{kind}_total"


@dataclass(frozen=True)
class OutboxRow:
    """One pending upstream message. ``device_id`` is set for a shadow state mark."""

    seq: int
    kind: str
    body_json: str
    created: float
    device_id: str | None = None

    @property
    def priority(self) -> int:
        return PRIORITY[self.kind]

    @property
    def body(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body_json)
        return value


async def enqueue(
    conn: aiosqlite.Connection,
    kind: str,
    body: dict[str, Any],
    *,
    dedup_key: str | None = None,
    now: float | None = None,
) -> None:
    """Add one message inside the caller's transaction.

    With ``dedup_key``, a pending message of the same kind and key is
    replaced: the new body gets a new, higher sequence number, so order is
    kept and only the latest travels.
    """
    if kind not in PRIORITY:
        raise ValueError(f"unknown outbox kind {kind!r}")
    if dedup_key is not None:
        await conn.execute("DELETE FROM outbox WHERE kind = ? AND dedup_key = ?", (kind, dedup_key))
    seq = await next_sequence(conn, SEQUENCE)
    await conn.execute(
        "INSERT INTO outbox (seq, kind, priority, dedup_key, body, created) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            seq,
            kind,
            PRIORITY[kind],
            dedup_key,
            json.dumps(body, separators=(",", ":"), sort_keys=True),
            time.time() if now is None else now,
        ),
    )


async def reserve_sequence(conn: aiosqlite.Connection, count: int) -> int:
    """Reserve ``count`` upstream sequence numbers (for shadow state marks); the first."""
    return await next_sequence(conn, SEQUENCE, count)


async def next_batch(db: Database, limit: int) -> list[OutboxRow]:
    """The next rows to send: highest priority first, in sequence order within it."""
    table = await db.fetch_all(
        "SELECT seq, kind, body, created, dedup_key FROM outbox ORDER BY priority, seq LIMIT ?",
        (limit,),
    )
    rows = [OutboxRow(r[0], r[1], r[2], r[3]) for r in table]
    if len(rows) < limit:
        marks = await db.fetch_all(
            "SELECT upstream_seq, state, upstream_since, device_id FROM shadow "
            "WHERE upstream_seq IS NOT NULL ORDER BY upstream_seq LIMIT ?",
            (limit,),
        )
        rows.extend(OutboxRow(r[0], "state", r[1], r[2], device_id=r[3]) for r in marks)
        rows.sort(key=lambda row: (row.priority, row.seq))
    return rows[:limit]


async def acknowledge(db: Database, rows: Sequence[OutboxRow]) -> None:
    """Remove rows the academy broker acknowledged, in one transaction.

    A shadow mark is cleared only if it still carries the acknowledged
    sequence number: a newer report that arrived meanwhile stays pending.
    """
    async with db.transaction() as conn:
        await conn.executemany(
            "DELETE FROM outbox WHERE seq = ?", [(r.seq,) for r in rows if r.device_id is None]
        )
        await conn.executemany(
            "UPDATE shadow SET upstream_seq = NULL, upstream_since = NULL "
            "WHERE device_id = ? AND upstream_seq = ?",
            [(r.device_id, r.seq) for r in rows if r.device_id is not None],
        )


_BACKLOG_SQL = """
SELECT count(*), coalesce(sum(length(CAST(body AS BLOB))), 0), min(created) FROM outbox
UNION ALL
SELECT count(*), coalesce(sum(length(CAST(state AS BLOB))), 0), min(upstream_since)
FROM shadow WHERE upstream_seq IS NOT NULL
"""


async def _backlog_totals(conn: aiosqlite.Connection) -> tuple[int, int, float | None]:
    async with conn.execute(_BACKLOG_SQL) as cursor:
        parts = list(await cursor.fetchall())
    oldest = [p[2] for p in parts if p[2] is not None]
    return (
        sum(int(p[0]) for p in parts),
        sum(int(p[1]) for p in parts),
        min(oldest) if oldest else None,
    )


async def backlog(db: Database, now: float | None = None) -> dict[str, Any]:
    """Rows and bytes pending, and the age of the oldest pending row."""
    rows = await db.fetch_all(_BACKLOG_SQL)
    oldest = [r[2] for r in rows if r[2] is not None]
    now = time.time() if now is None else now
    return {
        "rows": sum(int(r[0]) for r in rows),
        "bytes": sum(int(r[1]) for r in rows),
        "oldest_age_s": round(now - min(oldest), 1) if oldest else 0.0,
    }


async def shed_totals(db: Database) -> dict[str, int]:
    """How many messages of each kind were ever shed (durable, for summaries)."""
    rows = await db.fetch_all(
        "SELECT key, value FROM meta WHERE key IN (?, ?)",
        (SHED_TOTAL_KEY.format(kind="state"), SHED_TOTAL_KEY.format(kind="summary")),
    )
    found = {key: int(value) for key, value in rows}
    return {kind: found.get(SHED_TOTAL_KEY.format(kind=kind), 0) for kind in ("state", "summary")}


def track_peak(db: Database) -> None:
    """Record the outbox's largest committed size, at every write transaction.

    The size itself is kept by triggers (migration 7) at every insert and
    delete, so a result added between two budget checks counts too.
    """
    db.run_before_commit("UPDATE outbox_size SET peak = bytes WHERE bytes > peak")


async def peak_bytes(db: Database) -> int:
    """The largest backlog (bytes) any transaction ever committed."""
    row = await db.fetch_one("SELECT peak FROM outbox_size")
    return int(row[0]) if row else 0


class OutboxBudget:
    """Keeps the outbox under its byte budget (its peak: :func:`track_peak`)."""

    def __init__(self, budget_bytes: int, counters: Counters) -> None:
        self.budget_bytes = budget_bytes
        self._counters = counters

    async def enforce(self, conn: aiosqlite.Connection) -> ShedPlan:
        """Inside the caller's transaction: measure, and shed what the plan says."""
        _, total, _ = await _backlog_totals(conn)
        if total <= self.budget_bytes:
            return ShedPlan(drop=(), bytes_after=total, over_budget_by=0)
        plan = plan_shedding(await _pending_items(conn), self.budget_bytes)
        await conn.executemany(
            "DELETE FROM outbox WHERE seq = ?", [(p.seq,) for p in plan.drop if p.device_id is None]
        )
        await conn.executemany(
            "UPDATE shadow SET upstream_seq = NULL, upstream_since = NULL "
            "WHERE device_id = ? AND upstream_seq = ?",
            [(p.device_id, p.seq) for p in plan.drop if p.device_id is not None],
        )
        for kind in ("state", "summary"):
            shed = plan.count(kind)
            if shed:
                await _add_to_meta(conn, SHED_TOTAL_KEY.format(kind=kind), shed)
                self._counters.inc("outbox_shed", shed, kind=kind)
        if plan.drop:
            log.warning(
                "outbox over its budget of %d bytes: shed %d summaries and %d tablet states",
                self.budget_bytes,
                plan.count("summary"),
                plan.count("state"),
            )
        if plan.over_budget_by:
            self._counters.inc("outbox_over_budget")
            log.warning(
                "outbox stays %d bytes over budget: command results and rejections are never shed",
                plan.over_budget_by,
            )
        return plan


async def _pending_items(conn: aiosqlite.Connection) -> list[Pending]:
    async with conn.execute(
        "SELECT kind, seq, length(CAST(body AS BLOB)), NULL FROM outbox "
        "UNION ALL "
        "SELECT 'state', upstream_seq, length(CAST(state AS BLOB)), device_id FROM shadow "
        "WHERE upstream_seq IS NOT NULL"
    ) as cursor:
        return [Pending(r[0], int(r[1]), int(r[2]), r[3]) for r in await cursor.fetchall()]


async def _add_to_meta(conn: aiosqlite.Connection, key: str, amount: int) -> None:
    await conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
        "value = CAST(CAST(meta.value AS INTEGER) + CAST(excluded.value AS INTEGER) AS TEXT)",
        (key, str(amount)),
    )
