"""The outbox: what must go upstream, durable in SQLite until the academy acks it.

``enqueue`` runs inside the caller's transaction, so a message is in the
outbox exactly when the change that produced it is committed. The row's
``seq`` (AUTOINCREMENT, never reused) is the per-gateway sequence number the
academy deduplicates on. Kinds and their drain priority:

    result, rejection   0   command results and rejected envelopes; never shed
    summary             1   per-school summaries
    state               2   per-tablet state; a newer one replaces the pending one
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite

from gateway.store.database import Database

PRIORITY = {"result": 0, "rejection": 0, "summary": 1, "state": 2}


@dataclass(frozen=True)
class OutboxRow:
    """One pending upstream message."""

    seq: int
    kind: str
    body: dict[str, Any]
    created: float


async def enqueue(
    conn: aiosqlite.Connection,
    kind: str,
    body: dict[str, Any],
    *,
    dedup_key: str | None = None,
    now: float | None = None,
) -> None:
    """Add one message inside the caller's transaction.

    With ``dedup_key`` (per-tablet state), a pending message of the same kind
    and key is replaced: it gets the new body and a new, higher sequence
    number, so per-tablet order is kept and only the latest state travels.
    """
    if kind not in PRIORITY:
        raise ValueError(f"unknown outbox kind {kind!r}")
    if dedup_key is not None:
        await conn.execute("DELETE FROM outbox WHERE kind = ? AND dedup_key = ?", (kind, dedup_key))
    await conn.execute(
        "INSERT INTO outbox (kind, priority, dedup_key, body, created) VALUES (?, ?, ?, ?, ?)",
        (
            kind,
            PRIORITY[kind],
            dedup_key,
            json.dumps(body, separators=(",", ":"), sort_keys=True),
            time.time() if now is None else now,
        ),
    )


async def next_batch(db: Database, limit: int) -> list[OutboxRow]:
    """The next rows to send: highest priority first, oldest first within it."""
    rows = await db.fetch_all(
        "SELECT seq, kind, body, created FROM outbox ORDER BY priority, seq LIMIT ?", (limit,)
    )
    return [OutboxRow(row[0], row[1], json.loads(row[2]), row[3]) for row in rows]


async def remove(db: Database, seqs: list[int]) -> None:
    """Delete rows the academy broker acknowledged."""
    async with db.transaction() as conn:
        await conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])


async def backlog(db: Database) -> dict[str, Any]:
    """Rows and bytes pending, and the age of the oldest row."""
    row = await db.fetch_one(
        "SELECT count(*), coalesce(sum(length(body)), 0), min(created) FROM outbox"
    )
    count, size, oldest = (row[0], row[1], row[2]) if row else (0, 0, None)
    return {
        "rows": int(count),
        "bytes": int(size),
        "oldest_age_s": round(time.time() - oldest, 1) if oldest is not None else 0.0,
    }
