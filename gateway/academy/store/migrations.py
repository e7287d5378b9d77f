"""The academy's PostgreSQL schema: numbered migrations, applied in order at start-up.

``schema_migrations`` records each number applied. Never edit a shipped
migration: add one, numbered one above the highest. ``apply_migrations``
takes a transaction-scoped advisory lock, so workers and the console
starting together apply each migration once.

Tables (migration 1):

    schools, gateways       who reports; a gateway's presence, last seen, latest summary figures
    upstream_seen           (school, gateway, seq) of every upstream message applied: duplicates
                            are dropped against this key; pruned after ingest.dedup_window_s
    tablets                 the latest state per tablet, with the upstream seq it came with
    summaries               every summary received (history), pruned after retention.summaries_s
    commands, command_schools
                            what the console sent: who, when, to which schools and targets,
                            the signed envelope per school; progress per school (latest seq)
    command_results         each tablet's latest result per command
    rejections              envelopes a gateway refused
    refused_payloads        upstream payloads the ingest refused (malformed), pruned
    ingest_workers          each worker's counters, committed with its batches
    accounts, sessions, audit_log
                            the console's people, their sessions, and what they did

Migration 2: ``tablets`` keeps half of each page free (fillfactor 45, was 80).
A school's tablets sit together on a few pages and are all updated in the
same transaction (one gateway's batch); at 80 only about one row in five found
room for its new version on its own page, so most updates moved the row to a
new page, added an index entry and grew the table. With room for a second
version of every row, each update stays on its page (a HOT update: no index
entry, the old version pruned in place), which measured about a quarter less
PostgreSQL CPU per state (docs/academy.md). Pages written before it keep
their old fill until rewritten (``VACUUM FULL tablets`` at a quiet time).
"""

from __future__ import annotations

import asyncpg

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE schools (
        school_id   text PRIMARY KEY,
        name        text NOT NULL DEFAULT '',
        first_seen  timestamptz NOT NULL DEFAULT now(),
        last_seen   timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE gateways (
        school_id        text NOT NULL REFERENCES schools,
        gateway_id       text NOT NULL,
        online           boolean NOT NULL DEFAULT false,   -- retained status topic
        status_at        timestamptz,
        first_seen       timestamptz NOT NULL DEFAULT now(),
        last_seen        timestamptz NOT NULL DEFAULT now(),
        version          text NOT NULL DEFAULT '',
        summary_seq      bigint NOT NULL DEFAULT -1,       -- seq of the summary below
        summary_made_at  double precision,                 -- the gateway's clock
        tablets_known    integer NOT NULL DEFAULT 0,
        tablets_online   integer NOT NULL DEFAULT 0,
        low_battery      integer NOT NULL DEFAULT 0,
        storage_low      integer NOT NULL DEFAULT 0,
        apps_out_of_date integer NOT NULL DEFAULT 0,
        backlog_rows     bigint NOT NULL DEFAULT 0,
        backlog_bytes    bigint NOT NULL DEFAULT 0,
        backlog_oldest_s double precision NOT NULL DEFAULT 0,
        cache_bytes_saved bigint NOT NULL DEFAULT 0,
        summary          jsonb,
        PRIMARY KEY (school_id, gateway_id)
    );
    CREATE TABLE upstream_seen (
        school_id   text NOT NULL,
        gateway_id  text NOT NULL,
        seq         bigint NOT NULL,
        kind        text NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (school_id, gateway_id, seq)
    );
    CREATE INDEX upstream_seen_age ON upstream_seen USING brin (received_at);
    CREATE TABLE tablets (
        school_id        text NOT NULL,
        device_id        text NOT NULL,
        gateway_id       text NOT NULL,
        seq              bigint NOT NULL,          -- upstream seq of the state held
        received_at      timestamptz NOT NULL,
        reported_at      double precision NOT NULL, -- the tablet's clock (ts)
        battery_pct      smallint NOT NULL,
        charging         boolean NOT NULL,
        storage_free_mb  integer NOT NULL,
        storage_total_mb integer NOT NULL,
        os_version       text NOT NULL,
        group_name       text NOT NULL,
        locked           boolean NOT NULL,
        report           jsonb NOT NULL,
        applied          integer NOT NULL DEFAULT 1, -- states applied to this row
        PRIMARY KEY (school_id, device_id)
    ) WITH (fillfactor = 80);
    CREATE TABLE summaries (
        school_id   text NOT NULL,
        gateway_id  text NOT NULL,
        seq         bigint NOT NULL,
        made_at     double precision NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        body        jsonb NOT NULL,
        PRIMARY KEY (school_id, gateway_id, seq)
    );
    CREATE INDEX summaries_age ON summaries USING brin (received_at);
    CREATE TABLE commands (
        command_id  text PRIMARY KEY,
        action      text NOT NULL,
        params      jsonb NOT NULL,
        targets     jsonb NOT NULL,   -- {"group": ...} | {"devices": [...]} | {"all": true}
        schools     text[] NOT NULL,
        sent_by     text NOT NULL,
        sent_at     timestamptz NOT NULL DEFAULT now(),
        issued_at   double precision NOT NULL,
        not_after   double precision NOT NULL
    );
    CREATE TABLE command_schools (
        command_id    text NOT NULL REFERENCES commands,
        school_id     text NOT NULL,
        envelope      bytea NOT NULL,   -- the signed envelope exactly as published
        published_at  timestamptz,
        publish_error text NOT NULL DEFAULT '',
        progress_seq  bigint NOT NULL DEFAULT -1,
        gateway_id    text NOT NULL DEFAULT '',
        targets       integer NOT NULL DEFAULT 0,
        sent          integer NOT NULL DEFAULT 0,
        delivered     integer NOT NULL DEFAULT 0,
        done          integer NOT NULL DEFAULT 0,
        failed        integer NOT NULL DEFAULT 0,
        expired       integer NOT NULL DEFAULT 0,
        waiting       integer NOT NULL DEFAULT 0,
        complete      boolean NOT NULL DEFAULT false,
        progress_at   timestamptz,
        PRIMARY KEY (command_id, school_id)
    );
    CREATE INDEX command_schools_school ON command_schools (school_id);
    CREATE TABLE command_results (
        command_id  text NOT NULL,
        school_id   text NOT NULL,
        device_id   text NOT NULL,
        gateway_id  text NOT NULL,
        seq         bigint NOT NULL,
        status      text NOT NULL,
        detail      text NOT NULL,
        at          double precision NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (command_id, school_id, device_id)
    );
    CREATE TABLE rejections (
        id              bigserial PRIMARY KEY,
        school_id       text NOT NULL,
        gateway_id      text NOT NULL,
        seq             bigint NOT NULL,
        reason          text NOT NULL,
        detail          text NOT NULL,
        command_id      text,
        envelope_sha256 text NOT NULL,
        at              double precision NOT NULL,
        received_at     timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX rejections_command ON rejections (command_id);
    CREATE INDEX rejections_school ON rejections (school_id, id);
    CREATE TABLE refused_payloads (
        id          bigserial PRIMARY KEY,
        worker      text NOT NULL,
        topic       text NOT NULL,
        reason      text NOT NULL,
        detail      text NOT NULL,
        size        integer NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE ingest_workers (
        worker      text PRIMARY KEY,
        pid         integer NOT NULL,
        started_at  timestamptz NOT NULL,
        updated_at  timestamptz NOT NULL,
        counters    jsonb NOT NULL
    );
    CREATE TABLE accounts (
        username      text PRIMARY KEY,
        password_hash text NOT NULL,
        role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
        disabled      boolean NOT NULL DEFAULT false,
        created_at    timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE sessions (
        token_sha256 text PRIMARY KEY,
        username     text NOT NULL REFERENCES accounts ON DELETE CASCADE,
        csrf_token   text NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now(),
        expires_at   timestamptz NOT NULL
    );
    CREATE TABLE audit_log (
        id      bigserial PRIMARY KEY,
        at      timestamptz NOT NULL DEFAULT now(),
        actor   text NOT NULL,
        address text NOT NULL DEFAULT '',
        action  text NOT NULL,
        detail  jsonb NOT NULL DEFAULT '{}'
    );
    """,
    2: """
    ALTER TABLE tablets SET (fillfactor = 45);
    """,
}

MIGRATION_LOCK = 0x5C4001  # advisory lock key: one migrator at a time


async def apply_migrations(conn: asyncpg.Connection) -> list[int]:
    """Apply every migration not yet applied, in order; return the numbers applied."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for number in sorted(MIGRATIONS):
            if number in done:
                continue
            await conn.execute(MIGRATIONS[number])
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", number)
            applied.append(number)
    return applied
