"""A system rollback must not strand the older gateway on a store a newer one migrated.

Real SQLite files in tmp_path: an "old" gateway knows migrations 1-2, a "new"
one adds 3. gateway/store/schema_rollback.py says what happens.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import StoreError
from gateway.store.database import Database
from gateway.store.schema_rollback import min_reader, rolled_back_path, snapshot_path

OLD = {
    1: "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    2: "CREATE TABLE commands (id TEXT PRIMARY KEY, action TEXT NOT NULL);",
}
# Not readable by the old code: a column it would have to fill.
NEW = {**OLD, 3: "ALTER TABLE commands ADD COLUMN targets TEXT NOT NULL DEFAULT '[]';"}


def snapshots(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.snapshot"))


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.tmp-*"))


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def write(db: Database, sql: str, *params: object) -> None:
    await db.execute(sql, params)


async def old_store_then_upgraded(path: Path, *, compatible: frozenset[int]) -> None:
    old = await Database.open(path, OLD)
    await write(old, "INSERT INTO commands (id, action) VALUES (?, ?)", "cmd-1", "lock")
    await old.close()
    new = await Database.open(path, NEW, compatible=compatible)
    await write(
        new, "INSERT INTO commands (id, action, targets) VALUES (?, ?, ?)", "cmd-2", "wipe", "[]"
    )
    await new.close()


class TestSnapshotBeforeMigrating:
    """The first start of a newer schema copies the store first; only the latest copy stays."""

    async def test_snapshot_holds_the_old_store(self, tmp_path: Path) -> None:
        path = tmp_path / "gateway.db"
        await old_store_then_upgraded(path, compatible=frozenset())
        snapshot = snapshot_path(path, 2)
        assert rows(snapshot, "PRAGMA user_version") == [(2,)]
        assert rows(snapshot, "SELECT id FROM commands") == [("cmd-1",)]
        assert rows(path, "SELECT value FROM meta WHERE key = 'schema_min_reader'") == [("3",)]
        # The next upgrade replaces it.
        newer = {**NEW, 4: "CREATE TABLE extra (x);"}
        db = await Database.open(path, newer)
        await db.close()
        assert snapshots(tmp_path) == ["gateway.db.schema-3.snapshot"]

    async def test_a_new_store_needs_no_snapshot(self, tmp_path: Path) -> None:
        db = await Database.open(tmp_path / "gateway.db", NEW)
        await db.close()
        assert snapshots(tmp_path) == []

    async def test_openers_at_once_each_succeed_and_one_snapshot_stays(
        self, tmp_path: Path
    ) -> None:
        """The daemon's first start on a new schema and a ``status`` open the store together."""
        path = tmp_path / "gateway.db"
        old = await Database.open(path, OLD)
        await write(old, "INSERT INTO commands (id, action) VALUES (?, ?)", "cmd-1", "lock")
        await old.close()
        for _ in range(5):  # the race needs a few tries to show
            opened = await asyncio.gather(*(Database.open(path, NEW) for _ in range(4)))
            for db in opened:
                assert await db.schema_version() == 3
                await db.close()
            assert snapshots(tmp_path) == ["gateway.db.schema-2.snapshot"]
            assert rows(snapshot_path(path, 2), "PRAGMA user_version") == [(2,)]
            assert rows(snapshot_path(path, 2), "SELECT id FROM commands") == [("cmd-1",)]
            assert temporaries(tmp_path) == []
            with sqlite3.connect(path) as conn:  # back to schema 2 for the next try
                conn.execute("ALTER TABLE commands DROP COLUMN targets")
                conn.execute("PRAGMA user_version = 2")
            snapshot_path(path, 2).unlink()


class TestOlderGatewayOnNewerStore:
    """After a rollback the older gateway runs on, restores, or refuses: never guesses."""

    async def test_backward_compatible_migration_runs_as_is(self, tmp_path: Path) -> None:
        path = tmp_path / "gateway.db"
        await old_store_then_upgraded(path, compatible=frozenset({3}))
        old = await Database.open(path, OLD, restore_newer=True)
        try:
            assert await old.schema_version() == 3  # left as it is
            found = await old.fetch_all("SELECT id FROM commands ORDER BY id")
            assert [r[0] for r in found] == ["cmd-1", "cmd-2"]  # nothing lost
            await write(old, "INSERT INTO commands (id, action) VALUES (?, ?)", "cmd-3", "unlock")
        finally:
            await old.close()

    async def test_incompatible_migration_restores_the_snapshot(self, tmp_path: Path) -> None:
        path = tmp_path / "gateway.db"
        await old_store_then_upgraded(path, compatible=frozenset())
        old = await Database.open(path, OLD, restore_newer=True)
        try:
            assert await old.schema_version() == 2
            found = await old.fetch_all("SELECT id FROM commands")
            assert [r[0] for r in found] == ["cmd-1"]
            await write(old, "INSERT INTO commands (id, action) VALUES (?, ?)", "cmd-3", "unlock")
        finally:
            await old.close()
        aside = rolled_back_path(path, 3)
        assert rows(aside, "SELECT id FROM commands ORDER BY id") == [("cmd-1",), ("cmd-2",)]
        # A fixed newer system later migrates again from the restored store.
        new = await Database.open(path, NEW)
        try:
            assert await new.schema_version() == 3
        finally:
            await new.close()

    async def test_only_the_daemon_restores(self, tmp_path: Path) -> None:
        path = tmp_path / "gateway.db"
        await old_store_then_upgraded(path, compatible=frozenset())
        with pytest.raises(StoreError, match="has schema 3, newer than this gateway knows"):
            await Database.open(path, OLD)
        assert rows(path, "PRAGMA user_version") == [(3,)]  # untouched

    async def test_no_snapshot_refuses_naming_both_levels(self, tmp_path: Path) -> None:
        path = tmp_path / "gateway.db"
        await old_store_then_upgraded(path, compatible=frozenset())
        snapshot_path(path, 2).unlink()
        with pytest.raises(StoreError, match=r"schema 3, newer .* \(2\).*no snapshot"):
            await Database.open(path, OLD, restore_newer=True)

    def test_min_reader(self) -> None:
        numbers = range(1, 6)
        assert min_reader(numbers, frozenset(), 5) == 5
        assert min_reader(numbers, frozenset({4, 5}), 5) == 3
        assert min_reader(numbers, frozenset({4}), 5) == 5
