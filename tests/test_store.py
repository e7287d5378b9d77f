"""The SQLite store: WAL, migrations, in-place upgrade of an older database."""

from __future__ import annotations

import sqlite3

import pytest

from gateway.errors import StoreError
from gateway.store.database import Database, next_sequence
from gateway.store.migrations import MIGRATIONS


class TestMigrations:
    """A database from an older version upgrades in place, keeping its data."""

    async def test_new_database_is_wal_and_current(self, tmp_path):
        db = await Database.open(tmp_path / "g.db")
        try:
            assert await db.schema_version() == max(MIGRATIONS)
            row = await db.fetch_one("PRAGMA journal_mode")
            assert row is not None and row[0] == "wal"
        finally:
            await db.close()

    async def test_older_database_upgrades_in_place(self, tmp_path):
        path = tmp_path / "g.db"
        old = await Database.open(path, migrations={1: MIGRATIONS[1]})
        await old.execute(
            "INSERT INTO shadow (device_id, state, report_seq, first_seen, last_seen) "
            "VALUES ('tab-0001', '{}', 3, 1, 2)"
        )
        await old.close()

        db = await Database.open(path)
        try:
            assert await db.schema_version() == max(MIGRATIONS)
            row = await db.fetch_one("SELECT report_seq FROM shadow WHERE device_id = 'tab-0001'")
            assert row is not None and row[0] == 3
        finally:
            await db.close()

    async def test_failed_migration_leaves_the_old_version(self, tmp_path):
        path = tmp_path / "g.db"
        broken = {1: MIGRATIONS[1], 2: "CREATE TABLE shadow (x);"}
        try:
            await Database.open(path, migrations=broken)
        except Exception as exc:
            assert "schema migration 2 failed" in str(exc)
        else:
            raise AssertionError("a broken migration must fail")
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        conn.close()


class TestTransactions:
    """Writes commit as a unit or not at all; sequences are durable."""

    async def test_rollback_on_error(self, tmp_path):
        db = await Database.open(tmp_path / "g.db")
        try:
            try:
                async with db.transaction() as conn:
                    await next_sequence(conn, "s", 5)
                    raise RuntimeError("boom")
            except RuntimeError:
                pass
            async with db.transaction() as conn:
                assert await next_sequence(conn, "s") == 1
                assert await next_sequence(conn, "s", 3) == 2
                assert await next_sequence(conn, "s") == 5
        finally:
            await db.close()

    async def test_a_failing_statement_is_a_store_error_and_rolls_back(self, tmp_path):
        db = await Database.open(tmp_path / "g.db")
        try:
            with pytest.raises(StoreError, match="write failed") as caught:
                async with db.transaction() as conn:
                    await next_sequence(conn, "s", 5)
                    await conn.execute("INSERT INTO no_such_table VALUES (1)")
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            with pytest.raises(StoreError) as caught:
                await db.execute("INSERT INTO meta (key, value) VALUES (NULL, NULL)")
            assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
            async with db.transaction() as conn:  # nothing of the failed ones stayed
                assert await next_sequence(conn, "s") == 1
        finally:
            await db.close()
