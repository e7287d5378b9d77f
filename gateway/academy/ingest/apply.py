"""Applying a batch of decoded upstream messages to PostgreSQL, in ONE transaction.

The worker calls ``apply_batch`` inside a transaction and acknowledges the
batch's MQTT messages to the broker only after COMMIT. Within it:

1. ``upstream_seen``: every message's (school, gateway, seq) is inserted with
   ON CONFLICT DO NOTHING; those already there are duplicates (a broker
   redelivery after a worker died, or a gateway resending what the broker
   had received before its PUBACK was lost) and are dropped here. Only the
   fresh ones go on.
2. States (nearly all the volume; three statements per batch whatever its
   size): binary COPY into a temporary staging table; their keys go into
   ``upstream_seen`` from there with a plain INSERT under a savepoint (the
   usual case: every key is new, nothing comes back to Python, and a plain
   INSERT costs about half of ON CONFLICT's speculative insertion). A key seen
   before fails it with a unique violation (PostgreSQL logs it, expected after
   a redelivery): the savepoint is rolled back, the keys inserted again with
   ON CONFLICT DO NOTHING, returning the new ones, and only those stay
   staged. Then one ``INSERT ...
   SELECT DISTINCT ON (tablet) ... ON CONFLICT DO UPDATE ... WHERE`` the
   incoming seq is newer than the one held (for the same gateway; across
   gateways the tablet's own clock decides). A state older than the one held
   changes nothing.
3. Summaries go into the history; the gateway row takes the newest one's
   figures (again: only a higher seq).
4. Results: a tablet's delivery result and a school's progress snapshot are
   kept when their seq is newer; rejections are appended.
5. Schools and gateways are inserted when new, and their last seen moved
   only when it is LAST_SEEN_STEP_S old (so two workers rarely wait on the
   same row), in sorted order, so two workers lock rows in the same order (no
   deadlock between them; if the server reports one anyway the worker retries
   the whole transaction).

Returns what it did, for the worker's counters.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg

from gateway.academy.ingest.upstream import (
    DeliveryRow,
    GatewayStatus,
    ProgressRow,
    RejectionRow,
    Row,
    StateRow,
    SummaryRow,
)

STAGING_TABLE = "staged_states"
# A StateRow is the COPY record as it stands: its fields, in order, except that
# the staging table calls ``report_json`` ``report``.
STAGING_COLUMNS = (*StateRow._fields[:-1], "report")

CREATE_STAGING = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING_TABLE} (
    school_id text, gateway_id text, seq bigint, device_id text, reported_at double precision,
    battery_pct smallint, charging boolean, storage_free_mb integer, storage_total_mb integer,
    os_version text, group_name text, locked boolean, report jsonb
) ON COMMIT DELETE ROWS
"""

MARK_SEEN = """
INSERT INTO upstream_seen (school_id, gateway_id, seq, kind, received_at)
SELECT s, g, q, k, $5 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) AS t(s, g, q, k)
ORDER BY s, g, q
ON CONFLICT DO NOTHING
RETURNING school_id, gateway_id, seq
"""

# The staged states' keys, in key order (two workers inserting the same key wait
# for each other in the same order: no deadlock between them). No ON CONFLICT:
# one key seen before makes it fail (see the docstring).
MARK_STAGED_SEEN = f"""
INSERT INTO upstream_seen (school_id, gateway_id, seq, kind, received_at)
SELECT school_id, gateway_id, seq, 'state', $1 FROM {STAGING_TABLE}
ORDER BY school_id, gateway_id, seq
"""

UPSERT_TABLETS = f"""
INSERT INTO tablets AS t (school_id, device_id, gateway_id, seq, received_at, reported_at,
    battery_pct, charging, storage_free_mb, storage_total_mb, os_version, group_name, locked,
    report)
SELECT DISTINCT ON (school_id, device_id) school_id, device_id, gateway_id, seq, $1,
    reported_at, battery_pct, charging, storage_free_mb, storage_total_mb, os_version,
    group_name, locked, report
FROM {STAGING_TABLE}
ORDER BY school_id, device_id, seq DESC
ON CONFLICT (school_id, device_id) DO UPDATE SET
    gateway_id = excluded.gateway_id, seq = excluded.seq, received_at = excluded.received_at,
    reported_at = excluded.reported_at, battery_pct = excluded.battery_pct,
    charging = excluded.charging, storage_free_mb = excluded.storage_free_mb,
    storage_total_mb = excluded.storage_total_mb, os_version = excluded.os_version,
    group_name = excluded.group_name, locked = excluded.locked, report = excluded.report,
    applied = t.applied + 1
WHERE (excluded.gateway_id = t.gateway_id AND excluded.seq > t.seq)
   OR (excluded.gateway_id <> t.gateway_id AND excluded.reported_at > t.reported_at)
"""

# New schools and gateways are inserted; "last seen" of known ones moves only
# when it is LAST_SEEN_STEP_S old. Two workers get payloads of the same gateway
# (the broker spreads them): an upsert on every batch made each wait for the
# other's row lock (measured: 2 workers slower than 1). A plain UPDATE locks only
# the rows its WHERE keeps, and ON CONFLICT DO NOTHING locks none.
LAST_SEEN_STEP_S = 10.0

INSERT_SCHOOLS = """
INSERT INTO schools (school_id, first_seen, last_seen)
SELECT x, $2, $2 FROM unnest($1::text[]) AS t(x) ORDER BY x
ON CONFLICT (school_id) DO NOTHING
"""

TOUCH_SCHOOLS = """
UPDATE schools SET last_seen = $2
WHERE school_id = ANY($1::text[])
    AND last_seen < $2::timestamptz - make_interval(secs => $3::float8)
"""

INSERT_GATEWAYS = """
INSERT INTO gateways (school_id, gateway_id, first_seen, last_seen)
SELECT s, w, $3, $3 FROM unnest($1::text[], $2::text[]) AS t(s, w) ORDER BY s, w
ON CONFLICT (school_id, gateway_id) DO NOTHING
"""

TOUCH_GATEWAYS = """
UPDATE gateways AS g SET last_seen = $3
FROM unnest($1::text[], $2::text[]) AS t(s, w)
WHERE g.school_id = t.s AND g.gateway_id = t.w
    AND g.last_seen < $3::timestamptz - make_interval(secs => $4::float8)
"""

SET_GATEWAY_STATUS = """
UPDATE gateways SET online = $3, status_at = $4 WHERE school_id = $1 AND gateway_id = $2
"""

INSERT_SUMMARIES = """
INSERT INTO summaries (school_id, gateway_id, seq, made_at, received_at, body)
SELECT s, g, q, m, $6, b::jsonb
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::float8[], $5::text[]) AS t(s, g, q, m, b)
ON CONFLICT DO NOTHING
"""

LATEST_SUMMARY = """
UPDATE gateways SET summary_seq = $3, summary_made_at = $4, tablets_known = $5,
    tablets_online = $6, low_battery = $7, storage_low = $8, apps_out_of_date = $9,
    backlog_rows = $10, backlog_bytes = $11, backlog_oldest_s = $12, cache_bytes_saved = $13,
    version = CASE WHEN $14 = '' THEN version ELSE $14 END, summary = $15::jsonb
WHERE school_id = $1 AND gateway_id = $2 AND summary_seq < $3
"""

UPSERT_RESULT = """
INSERT INTO command_results AS r (command_id, school_id, device_id, gateway_id, seq, status,
    detail, at, received_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (command_id, school_id, device_id) DO UPDATE SET
    gateway_id = excluded.gateway_id, seq = excluded.seq, status = excluded.status,
    detail = excluded.detail, at = excluded.at, received_at = excluded.received_at
WHERE excluded.gateway_id <> r.gateway_id OR excluded.seq > r.seq
"""

# A command the console did not send (e.g. `academy send` from the CLI) still
# gets its progress recorded; its row in ``commands`` is then absent.
UPSERT_PROGRESS = """
INSERT INTO command_schools AS c (command_id, school_id, envelope, progress_seq, gateway_id,
    targets, sent, delivered, done, failed, expired, waiting, complete, progress_at)
SELECT $1, $2, ''::bytea, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13
WHERE EXISTS (SELECT 1 FROM commands WHERE command_id = $1)
ON CONFLICT (command_id, school_id) DO UPDATE SET
    progress_seq = excluded.progress_seq, gateway_id = excluded.gateway_id,
    targets = excluded.targets, sent = excluded.sent, delivered = excluded.delivered,
    done = excluded.done, failed = excluded.failed, expired = excluded.expired,
    waiting = excluded.waiting, complete = excluded.complete, progress_at = excluded.progress_at
WHERE excluded.gateway_id <> c.gateway_id OR excluded.progress_seq > c.progress_seq
"""

INSERT_REJECTION = """
INSERT INTO rejections (school_id, gateway_id, seq, reason, detail, command_id,
    envelope_sha256, at, received_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""


_R = TypeVar("_R", bound=Row)


@dataclass
class Applied:
    """What one batch changed."""

    messages: int = 0
    duplicates: int = 0
    states: int = 0  # state messages that were fresh
    states_applied: int = 0  # tablet rows written (a newer seq)
    summaries: int = 0
    results: int = 0
    rejections: int = 0
    statuses: int = 0
    gateways: set[tuple[str, str]] = field(default_factory=set)


# This session's memory for the staging table and for sorting it (PostgreSQL's
# defaults, 8 MB and 4 MB, are far below a full batch: 400 payloads of 300
# states are ~60 MB staged). Below it they spill to temporary files: measured
# ~10% more PostgreSQL CPU per state at full batches. Taken only as used.
SESSION_SETTINGS = "SET temp_buffers = '128MB'; SET work_mem = '64MB'"


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Per connection: its memory settings, then the staging table (temporary: this
    session only, emptied at commit). temp_buffers must be set before the session
    first touches a temporary table."""
    await conn.execute(SESSION_SETTINGS)
    await conn.execute(CREATE_STAGING)


def _rows_of(status: str) -> int:
    """The row count in a command tag such as ``INSERT 0 12``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


async def apply_batch(
    conn: asyncpg.Connection,
    rows: Sequence[Row],
    statuses: Sequence[GatewayStatus] = (),
    *,
    now: float | None = None,
) -> Applied:
    """Apply ``rows`` and ``statuses``; the caller holds the transaction."""
    at = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC)
    result = Applied(messages=len(rows), statuses=len(statuses))
    gateways = {(r.school_id, r.gateway_id) for r in rows}
    gateways.update((s.school_id, s.gateway_id) for s in statuses)
    result.gateways = gateways
    if gateways:
        ordered = sorted(gateways)
        schools = sorted({s for s, _ in ordered})
        school_ids, gateway_ids = [s for s, _ in ordered], [g for _, g in ordered]
        await conn.execute(INSERT_SCHOOLS, schools, at)
        await conn.execute(TOUCH_SCHOOLS, schools, at, LAST_SEEN_STEP_S)
        await conn.execute(INSERT_GATEWAYS, school_ids, gateway_ids, at)
        await conn.execute(TOUCH_GATEWAYS, school_ids, gateway_ids, at, LAST_SEEN_STEP_S)
    for status in sorted(statuses, key=lambda s: (s.school_id, s.gateway_id)):
        await conn.execute(
            SET_GATEWAY_STATUS, status.school_id, status.gateway_id, status.online, at
        )
    if not rows:
        return result
    states = [r for r in rows if isinstance(r, StateRow)]
    if states:
        result.states = await _stage_fresh_states(conn, states, at)
        result.states_applied = _rows_of(await conn.execute(UPSERT_TABLETS, at))
    others = [r for r in rows if not isinstance(r, StateRow)]
    fresh = await _fresh_only(conn, others, at) if others else []
    result.duplicates = len(rows) - result.states - len(fresh)
    summaries = [r for r in fresh if isinstance(r, SummaryRow)]
    if summaries:
        result.summaries = len(summaries)
        await _apply_summaries(conn, summaries, at)
    for row in fresh:
        if isinstance(row, DeliveryRow):
            result.results += 1
            await conn.execute(
                UPSERT_RESULT,
                row.command_id,
                row.school_id,
                row.device_id,
                row.gateway_id,
                row.seq,
                row.status,
                row.detail,
                row.at,
                at,
            )
        elif isinstance(row, ProgressRow):
            result.results += 1
            await conn.execute(
                UPSERT_PROGRESS,
                row.command_id,
                row.school_id,
                row.seq,
                row.gateway_id,
                row.targets,
                row.sent,
                row.delivered,
                row.done,
                row.failed,
                row.expired,
                row.waiting,
                row.complete,
                at,
            )
        elif isinstance(row, RejectionRow):
            result.rejections += 1
            await conn.execute(
                INSERT_REJECTION,
                row.school_id,
                row.gateway_id,
                row.seq,
                row.reason,
                row.detail,
                row.command_id,
                row.envelope_sha256,
                row.at,
                at,
            )
    return result


async def _stage_fresh_states(
    conn: asyncpg.Connection, states: list[StateRow], at: datetime.datetime
) -> int:
    """Stage the states that are not duplicates, mark them seen; return how many."""
    await conn.copy_records_to_table(STAGING_TABLE, records=states, columns=STAGING_COLUMNS)
    try:
        async with conn.transaction():  # a savepoint
            await conn.execute(MARK_STAGED_SEEN, at)
        return len(states)
    except asyncpg.UniqueViolationError:
        pass  # some were seen before (or twice in this batch): the exact path
    fresh = await _fresh_only(conn, states, at)
    await conn.execute(f"DELETE FROM {STAGING_TABLE}")
    if fresh:
        await conn.copy_records_to_table(STAGING_TABLE, records=fresh, columns=STAGING_COLUMNS)
    return len(fresh)


async def _fresh_only(conn: asyncpg.Connection, rows: list[_R], at: datetime.datetime) -> list[_R]:
    """Mark ``rows`` seen; return those that were not (the first copy of each key)."""
    fresh_keys = {
        (r["school_id"], r["gateway_id"], r["seq"])
        for r in await conn.fetch(
            MARK_SEEN,
            [r.school_id for r in rows],
            [r.gateway_id for r in rows],
            [r.seq for r in rows],
            [_kind(r) for r in rows],
            at,
        )
    }
    fresh: list[_R] = []
    for row in rows:
        key = (row.school_id, row.gateway_id, row.seq)
        if key in fresh_keys:
            fresh_keys.discard(key)  # a second copy in the same batch is a duplicate too
            fresh.append(row)
    return fresh


def _kind(row: Row) -> str:
    if isinstance(row, StateRow):
        return "state"
    if isinstance(row, SummaryRow):
        return "summary"
    if isinstance(row, RejectionRow):
        return "rejection"
    return "result"


async def _apply_summaries(
    conn: asyncpg.Connection, summaries: list[SummaryRow], at: object
) -> None:
    await conn.execute(
        INSERT_SUMMARIES,
        [s.school_id for s in summaries],
        [s.gateway_id for s in summaries],
        [s.seq for s in summaries],
        [s.made_at for s in summaries],
        [s.body_json for s in summaries],
        at,
    )
    newest: dict[tuple[str, str], SummaryRow] = {}
    for s in summaries:
        key = (s.school_id, s.gateway_id)
        if key not in newest or s.seq > newest[key].seq:
            newest[key] = s
    for key in sorted(newest):
        s = newest[key]
        await conn.execute(
            LATEST_SUMMARY,
            s.school_id,
            s.gateway_id,
            s.seq,
            s.made_at,
            s.tablets_known,
            s.tablets_online,
            s.low_battery,
            s.storage_low,
            s.apps_out_of_date,
            s.backlog_rows,
            s.backlog_bytes,
            s.backlog_oldest_s,
            s.cache_bytes_saved,
            s.version,
            s.body_json,
        )
