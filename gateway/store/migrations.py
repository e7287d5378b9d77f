"""Numbered schema migrations, applied in order at start-up.

``PRAGMA user_version`` records the last applied number, so a database from
an older version upgrades in place. Never edit a shipped migration: add one.
Numbers are reserved by flow: 1 shadow/meta, 2-9 relay, 10-19 commands,
20-29 cache, 30-39 security.
"""

from __future__ import annotations

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE shadow (
        device_id   TEXT PRIMARY KEY,
        state       TEXT NOT NULL,          -- the latest valid report, canonical JSON
        report_seq  INTEGER NOT NULL,       -- the tablet's own sequence number
        group_name  TEXT NOT NULL DEFAULT '',
        first_seen  REAL NOT NULL,
        last_seen   REAL NOT NULL,
        online      INTEGER NOT NULL DEFAULT 0,
        presence_at REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX shadow_group ON shadow (group_name);
    """,
    2: """
    CREATE TABLE outbox (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- per-gateway upstream sequence
        kind       TEXT NOT NULL,                      -- result | rejection | summary | state
        priority   INTEGER NOT NULL,                   -- drain order: lower first
        dedup_key  TEXT,                               -- state: device id (latest wins)
        body       TEXT NOT NULL,                      -- JSON
        created    REAL NOT NULL
    );
    CREATE INDEX outbox_drain ON outbox (priority, seq);
    CREATE UNIQUE INDEX outbox_latest ON outbox (kind, dedup_key) WHERE dedup_key IS NOT NULL;
    """,
    3: """
    -- Pending tablet state lives on the shadow row itself: latest wins by
    -- construction, and a report costs no outbox row (SD-card write economy).
    ALTER TABLE shadow ADD COLUMN upstream_seq INTEGER;   -- seq of the pending state, NULL = sent
    ALTER TABLE shadow ADD COLUMN upstream_since REAL;    -- when this tablet's state became pending
    CREATE INDEX shadow_pending ON shadow (upstream_seq) WHERE upstream_seq IS NOT NULL;
    -- One per-gateway sequence for the outbox table and the shadow marks.
    INSERT INTO meta (key, value)
    SELECT 'upstream_seq', CAST(coalesce(max(seq), 0) AS TEXT) FROM sqlite_sequence
    WHERE name = 'outbox'
    ON CONFLICT (key) DO NOTHING;
    -- Pending state rows of migration 2 become shadow marks.
    UPDATE shadow SET
        upstream_seq = (SELECT o.seq FROM outbox o
                        WHERE o.kind = 'state' AND o.dedup_key = shadow.device_id),
        upstream_since = (SELECT o.created FROM outbox o
                          WHERE o.kind = 'state' AND o.dedup_key = shadow.device_id)
    WHERE device_id IN (SELECT dedup_key FROM outbox WHERE kind = 'state');
    DELETE FROM outbox WHERE kind = 'state'
        AND dedup_key IN (SELECT device_id FROM shadow WHERE upstream_seq IS NOT NULL);
    """,
}
