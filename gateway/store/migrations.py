"""Numbered schema migrations, applied in order at start-up.

``PRAGMA user_version`` records the last applied number, so a database from
an older version upgrades in place. Never edit a shipped migration: add one,
numbered one above the highest, so every database walks the same sequence:
1 shadow and meta, 2 outbox, 3 pending state on the shadow, 4 commands and
deliveries, 5 cache index, 6 enrollment and tablet identities, ...,
9 revocations confirmed by the broker, 10 school console accounts and sessions.
"""

from __future__ import annotations

# Migrations whose result an older gateway can still run on (gateway/store/schema_rollback.py):
# a box rolled back to the older system then keeps its store as it is. Declare a migration
# here only when older code is unaffected (a new table, a column with a default it never
# reads); any other migration makes an older gateway restore its snapshot, losing what was
# written since. 1-11 predate the rule.
BACKWARD_COMPATIBLE: frozenset[int] = frozenset()

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
    4: """
    CREATE TABLE commands (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT, -- acceptance order = delivery order
        command_id  TEXT NOT NULL UNIQUE,              -- the academy's id; replay protection
        key_id      TEXT NOT NULL,
        action      TEXT NOT NULL,
        issued_at   REAL NOT NULL,
        not_after   REAL NOT NULL,
        targets     TEXT NOT NULL,                     -- the signed target spec, JSON
        payload     BLOB NOT NULL,                     -- the exact signed payload bytes
        signature   BLOB NOT NULL,
        payload_sha256 TEXT NOT NULL,
        accepted_at REAL NOT NULL
    );
    CREATE TABLE deliveries (
        device_id   TEXT NOT NULL,
        command_seq INTEGER NOT NULL REFERENCES commands (seq) ON DELETE CASCADE,
        state       TEXT NOT NULL DEFAULT 'pending',   -- see gateway/commands/progress.py
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_sent   REAL,
        updated     REAL NOT NULL,
        detail      TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (device_id, command_seq)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_by_command ON deliveries (command_seq, state);
    CREATE INDEX deliveries_to_publish ON deliveries (device_id, command_seq)
        WHERE state IN ('pending', 'sent');
    """,
    5: """
    CREATE TABLE cache_items (
        sha256      TEXT PRIMARY KEY,              -- lowercase hex; the file name on disk
        size        INTEGER NOT NULL,
        name        TEXT NOT NULL DEFAULT '',
        kind        TEXT NOT NULL DEFAULT '',
        version     TEXT NOT NULL DEFAULT '',
        urls        TEXT NOT NULL DEFAULT '[]',    -- JSON list of origin URLs
        pinned      INTEGER NOT NULL DEFAULT 0,    -- in the current manifest
        complete    INTEGER NOT NULL DEFAULT 0,    -- on disk and its hash verified
        last_access REAL NOT NULL DEFAULT 0,       -- for LRU eviction
        added       REAL NOT NULL
    );
    """,
    6: """
    CREATE TABLE enrollment_token (
        token_hash TEXT PRIMARY KEY,        -- SHA-256 of the secret; the secret is never stored
        group_name TEXT NOT NULL DEFAULT '',
        device_id  TEXT,                    -- chosen at creation, else at redemption
        created    REAL NOT NULL,
        expires    REAL NOT NULL,
        redeemed   REAL                     -- NULL until used (single use)
    );
    CREATE TABLE tablet_identity (
        device_id  TEXT PRIMARY KEY,        -- the certificate's CN, the broker user name
        serial     TEXT NOT NULL UNIQUE,    -- certificate serial, hex
        group_name TEXT NOT NULL DEFAULT '',
        enrolled   REAL NOT NULL,
        not_after  REAL NOT NULL,
        revoked    REAL                     -- NULL while the tablet may connect
    );
    CREATE TABLE revoked_serial (
        serial     TEXT PRIMARY KEY,        -- hex; every serial the CRL lists
        revoked    REAL NOT NULL,
        device_id  TEXT                     -- NULL for the gateway's reload probes
    );
    """,
    7: """
    -- The outbox's size, kept by triggers at every insert and delete (O(1) per
    -- row), and the largest size any transaction committed (``peak``, updated
    -- before each COMMIT by gateway.relay.outbox.track_peak).
    CREATE TABLE outbox_size (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        bytes INTEGER NOT NULL,
        peak  INTEGER NOT NULL
    );
    INSERT INTO outbox_size (id, bytes, peak) SELECT 1, a + b, a + b FROM
        (SELECT coalesce(sum(length(CAST(body AS BLOB))), 0) AS a FROM outbox),
        (SELECT coalesce(sum(length(CAST(state AS BLOB))), 0) AS b FROM shadow
         WHERE upstream_seq IS NOT NULL);
    CREATE TRIGGER outbox_size_insert AFTER INSERT ON outbox BEGIN
        UPDATE outbox_size SET bytes = bytes + length(CAST(new.body AS BLOB));
    END;
    CREATE TRIGGER outbox_size_delete AFTER DELETE ON outbox BEGIN
        UPDATE outbox_size SET bytes = bytes - length(CAST(old.body AS BLOB));
    END;
    CREATE TRIGGER outbox_size_shadow_insert AFTER INSERT ON shadow
    WHEN new.upstream_seq IS NOT NULL BEGIN
        UPDATE outbox_size SET bytes = bytes + length(CAST(new.state AS BLOB));
    END;
    CREATE TRIGGER outbox_size_shadow_update AFTER UPDATE OF state, upstream_seq ON shadow
    WHEN old.upstream_seq IS NOT NULL OR new.upstream_seq IS NOT NULL BEGIN
        UPDATE outbox_size SET bytes = bytes
            - CASE WHEN old.upstream_seq IS NULL THEN 0 ELSE length(CAST(old.state AS BLOB)) END
            + CASE WHEN new.upstream_seq IS NULL THEN 0 ELSE length(CAST(new.state AS BLOB)) END;
    END;
    CREATE TRIGGER outbox_size_shadow_delete AFTER DELETE ON shadow
    WHEN old.upstream_seq IS NOT NULL BEGIN
        UPDATE outbox_size SET bytes = bytes - length(CAST(old.state AS BLOB));
    END;
    """,
    8: """
    -- The report order (gateway.state.order): seq within an epoch, retired epochs.
    ALTER TABLE shadow ADD COLUMN report_epoch TEXT NOT NULL DEFAULT '';
    ALTER TABLE shadow ADD COLUMN retired_epochs TEXT NOT NULL DEFAULT '[]';
    """,
    9: """
    -- A revocation takes effect when the broker re-reads the CRL and ACL: when that
    -- was confirmed (NULL while pending). Earlier revocations: a broker restart
    -- since (every upgrade restarts it) has read them.
    ALTER TABLE tablet_identity ADD COLUMN revoke_confirmed REAL;
    UPDATE tablet_identity SET revoke_confirmed = revoked WHERE revoked IS NOT NULL;
    """,
    10: """
    -- Command lifetimes on the box's elapsed time too (gateway.commands.clock):
    -- commands already stored count as accepted at elapsed time 0.
    ALTER TABLE commands ADD COLUMN elapsed_deadline REAL NOT NULL DEFAULT 0;
    UPDATE commands SET elapsed_deadline = max(0, not_after - accepted_at);
    """,
    11: """
    CREATE TABLE console_account (
        name          TEXT PRIMARY KEY,
        role          TEXT NOT NULL,                -- teacher | it
        password_hash TEXT NOT NULL,                -- scrypt (gateway/web/passwords.py)
        groups        TEXT NOT NULL DEFAULT '[]',   -- JSON list: the groups a teacher teaches
        disabled      INTEGER NOT NULL DEFAULT 0,
        created       REAL NOT NULL,
        created_by    TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE console_session (
        token_hash TEXT PRIMARY KEY,               -- SHA-256 of the cookie's token
        account    TEXT NOT NULL,
        csrf_token TEXT NOT NULL,
        created    REAL NOT NULL,
        expires    REAL NOT NULL
    );
    CREATE INDEX console_session_account ON console_session (account, created);
    """,
}
