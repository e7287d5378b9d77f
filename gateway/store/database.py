"""The store: one long-lived aiosqlite writer connection in WAL mode.

All writes go through :meth:`Database.transaction`, which takes the write lock
up front (BEGIN IMMEDIATE) and commits or rolls back as a unit. Durability is
``synchronous=FULL``: a commit that returned survives a power cut, which is
what lets the gateway acknowledge a message after commit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.errors import StoreError, StoreUnavailable
from gateway.store.health import StoreHealth
from gateway.store.migrations import BACKWARD_COMPATIBLE, MIGRATIONS
from gateway.store.schema_rollback import (
    MIN_READER_KEY,
    min_reader,
    older_snapshots,
    rolled_back_path,
    snapshot_path,
)

log = logging.getLogger(__name__)

Params = tuple[Any, ...] | Mapping[str, Any]
# SQLITE_FULL, SQLITE_IOERR (any extended code): the disk, not the statement.
_UNAVAILABLE = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR}

# The store's file name in the state directory (the daemon, the CLIs and the lab share it).
DATABASE_FILE = "gateway.db"


def _statements(script: str) -> list[str]:
    """The SQL statements of a migration script, one by one (SQLite says where each ends)."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\n;"):
                statements.append(pending)
            pending = ""
    if pending.strip(" \t\n;"):
        raise StoreError(f"a migration ends with an incomplete statement: {pending.strip()!r}")
    return statements


class Database:
    """The gateway's SQLite file. Use :meth:`open` and :meth:`close`."""

    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self._conn = conn
        self._write_lock = asyncio.Lock()
        self._before_commit: list[str] = []
        self.health = StoreHealth()

    @classmethod
    async def open(
        cls,
        path: Path,
        migrations: Mapping[int, str] = MIGRATIONS,
        *,
        compatible: frozenset[int] = BACKWARD_COMPATIBLE,
        restore_newer: bool = False,
    ) -> Database:
        """Open (creating if needed) and migrate the database at ``path``.

        A store migrated by a newer gateway (a system rollback) is handled as
        gateway/store/schema_rollback.py says; only the daemon passes
        ``restore_newer`` (it may put the snapshot back).
        """
        db = await cls._connect(path)
        try:
            known = max(migrations, default=0)
            current = await db.schema_version()
            if current > known and not await db._runs_on_newer(current, known):
                if not restore_newer:
                    raise StoreError(
                        f"{path} has schema {current}, newer than this gateway knows ({known}) "
                        "and not readable by it; start the gateway daemon to restore its "
                        "snapshot (docs/operations.md, 'System updates')"
                    )
                await db.close()
                await asyncio.to_thread(_restore_snapshot, path, current, known)
                db = await cls._connect(path)
            elif 0 < current < known:
                await db._snapshot(current)
            await db._migrate(migrations, compatible)
        except BaseException:
            await db.close()
            raise
        return db

    @classmethod
    async def _connect(cls, path: Path) -> Database:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        db = cls(path, conn)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            await conn.close()
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        return db

    async def _runs_on_newer(self, current: int, known: int) -> bool:
        """Whether this (older) code may use a store at schema ``current``."""
        row = None
        if await self._has_meta():
            row = await self.fetch_one("SELECT value FROM meta WHERE key = ?", (MIN_READER_KEY,))
        needed = int(row[0]) if row is not None and str(row[0]).isdigit() else current
        if known >= needed:
            log.warning(
                "%s has schema %d, newer than this gateway knows (%d); its migrations since "
                "are backward compatible: running on it as it is",
                self.path,
                current,
                known,
            )
            return True
        return False

    async def _has_meta(self) -> bool:
        found = await self.fetch_one(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        )
        return found is not None

    async def _snapshot(self, level: int) -> None:
        """Copy the store as it is before migrating it (schema_rollback.py, rule 1).

        Two openers may get here at once (the daemon's first start and a
        ``status``): each copies into its own temporary file, and a copy is
        kept only if it still holds schema ``level`` (the other opener may have
        migrated in between; then its copy is the snapshot).
        """
        target = snapshot_path(self.path, level)
        temporary = target.with_name(f"{target.name}.tmp-{os.getpid()}-{id(self):x}")
        try:
            await self._conn.execute("VACUUM INTO ?", (str(temporary),))
            copied = await asyncio.to_thread(_schema_of, temporary)
        except sqlite3.Error as exc:
            temporary.unlink(missing_ok=True)
            raise StoreError(
                f"cannot snapshot {self.path} before migrating it ({exc}); not migrating, "
                "so an older system can still use it"
            ) from exc
        if copied != level:
            temporary.unlink(missing_ok=True)
            log.info("%s was migrated past schema %d by another opener meanwhile", self.path, level)
            return
        os.replace(temporary, target)
        for old in older_snapshots(self.path, target):
            old.unlink(missing_ok=True)
        log.info("snapshot of schema %d written to %s before migrating", level, target)

    def run_before_commit(self, sql: str) -> None:
        """Run ``sql`` (no parameters) at the end of every write transaction, before COMMIT."""
        self._before_commit.append(sql)

    async def close(self) -> None:
        await self._conn.close()

    async def schema_version(self) -> int:
        row = await self.fetch_one("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def _migrate(self, migrations: Mapping[int, str], compatible: frozenset[int]) -> None:
        current = await self.schema_version()
        pending = sorted(n for n in migrations if n > current)
        for number in pending:
            try:
                # The version is read again under the write lock: another process (the
                # daemon starting while `status` or a CLI opens the file) may have
                # applied this migration meanwhile.
                await self._conn.execute("BEGIN IMMEDIATE")
                if await self.schema_version() >= number:
                    await self._conn.execute("ROLLBACK")
                    continue
                log.info("applying schema migration %d to %s", number, self.path)
                for statement in _statements(migrations[number]):
                    await self._conn.execute(statement)
                await self._conn.execute(f"PRAGMA user_version={number}")
                await self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    await self._conn.execute("ROLLBACK")
                raise StoreError(f"schema migration {number} failed on {self.path}: {exc}") from exc
        if pending and await self._has_meta():
            needed = min_reader(migrations, compatible, pending[-1])
            await self.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (MIN_READER_KEY, str(needed)),
            )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; commits on exit, rolls back on error."""
        async with self._write_lock:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._translate("cannot begin transaction", exc) from exc
            try:
                yield self._conn
                for sql in self._before_commit:
                    await self._conn.execute(sql)
            except sqlite3.Error as exc:
                await self._rollback()
                raise self._translate("write failed", exc) from exc
            except BaseException:
                await self._rollback()
                raise
            try:
                await self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                await self._rollback()
                raise self._translate("commit failed", exc) from exc
            self.health.succeeded()

    def _translate(self, what: str, exc: sqlite3.Error) -> StoreError:
        """StoreUnavailable for a disk that refuses writes now (recorded in ``health``)."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in _UNAVAILABLE or "disk is full" in str(exc):
            unavailable = StoreUnavailable(f"{what}: {exc}")
            self.health.failed(unavailable)
            return unavailable
        return StoreError(f"{what}: {exc}")

    async def _rollback(self) -> None:
        """Roll back what is left of a failed transaction, keeping the original error.

        SQLite may already have rolled back by itself (SQLITE_FULL, SQLITE_IOERR):
        then there is nothing to roll back, and a ROLLBACK would raise "no
        transaction is active" over the error that matters.
        """
        if not self._conn.in_transaction:
            return
        try:
            await self._conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("rollback after a failed write also failed: %s", exc)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        try:
            async with self._conn.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"query failed: {exc}") from exc

    async def fetch_one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        try:
            async with self._conn.execute(sql, params) as cursor:
                row = await cursor.fetchone()
                return row
        except sqlite3.Error as exc:
            raise StoreError(f"query failed: {exc}") from exc

    async def execute(self, sql: str, params: Params = ()) -> None:
        """Run one write statement in its own transaction."""
        async with self.transaction() as conn:
            await conn.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        async with self.transaction() as conn:
            await conn.executemany(sql, rows)


def _schema_of(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def _restore_snapshot(path: Path, current: int, known: int) -> None:
    """Put back the snapshot of schema ``known``; keep the newer store aside."""
    snapshot = snapshot_path(path, known)
    if not snapshot.exists():
        raise StoreError(
            f"{path} has schema {current}, newer than this gateway knows ({known}), not readable "
            f"by it, and there is no snapshot {snapshot.name} to go back to"
        )
    aside = rolled_back_path(path, current)
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, aside.with_name(aside.name + suffix))
    shutil.copyfile(snapshot, path)
    log.error(
        "%s had schema %d from a newer system that was rolled back; restored the snapshot of "
        "schema %d (the newer store is kept as %s; what was written since is in it only)",
        path,
        current,
        known,
        aside,
    )


async def next_sequence(conn: aiosqlite.Connection, name: str, count: int = 1) -> int:
    """Reserve ``count`` numbers of the durable counter ``name`` inside a transaction.

    Returns the first reserved number (numbers start at 1).
    """
    async with conn.execute("SELECT value FROM meta WHERE key = ?", (name,)) as cursor:
        row = await cursor.fetchone()
    last = int(row[0]) if row else 0
    await conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (name, str(last + count)),
    )
    return last + 1
