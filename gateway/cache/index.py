"""The cache index: ``cache_items`` in SQLite, mirrored in memory.

Serving a request reads only the in-memory mirror (no SQLite round trip per
request). Changes of meaning (new items, pinning, completion, removal) are
written through at once; access times for LRU are kept in memory and
flushed by ``flush_access`` (one pending value per item, so the buffer is
bounded by the number of items).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from gateway.cache.manifest import ManifestItem
from gateway.errors import StoreUnavailable
from gateway.store.database import Database
from gateway.store.health import retry_while_unavailable


@dataclass(frozen=True)
class Entry:
    """What the cache knows about one item."""

    sha256: str
    size: int
    name: str
    kind: str
    version: str
    urls: tuple[str, ...]
    pinned: bool
    complete: bool
    last_access: float


class CacheIndex:
    """The index of known items. Use :meth:`load`."""

    def __init__(self, db: Database, entries: dict[str, Entry]) -> None:
        self._db = db
        self._entries = entries
        self._accessed: dict[str, float] = {}

    @classmethod
    async def load(cls, db: Database) -> CacheIndex:
        rows = await db.fetch_all(
            "SELECT sha256, size, name, kind, version, urls, pinned, complete, last_access "
            "FROM cache_items"
        )
        entries = {
            row[0]: Entry(
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                tuple(json.loads(row[5])),
                bool(row[6]),
                bool(row[7]),
                row[8],
            )
            for row in rows
        }
        return cls(db, entries)

    def get(self, sha256: str) -> Entry | None:
        return self._entries.get(sha256)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def touch(self, sha256: str, now: float | None = None) -> None:
        entry = self._entries.get(sha256)
        if entry is not None:
            stamp = time.time() if now is None else now
            self._entries[sha256] = replace(entry, last_access=stamp)
            self._accessed[sha256] = stamp

    async def flush_access(self) -> None:
        pending, self._accessed = self._accessed, {}
        if pending:
            try:
                await self._db.executemany(
                    "UPDATE cache_items SET last_access = ? WHERE sha256 = ?",
                    [(stamp, sha) for sha, stamp in pending.items()],
                )
            except StoreUnavailable:  # the disk is full: keep them for the next flush
                self._accessed = {**pending, **self._accessed}

    async def apply_manifest(self, items: Iterable[ManifestItem]) -> tuple[int, int]:
        """Pin exactly ``items``; unpin the rest, forgetting those not on disk.

        Returns (pinned, forgotten).
        """
        wanted = {item.sha256: item for item in items}
        now = time.time()
        forgotten = [
            sha for sha, e in self._entries.items() if sha not in wanted and not e.complete
        ]
        async with self._db.transaction() as conn:
            await conn.execute("UPDATE cache_items SET pinned = 0")
            await conn.executemany(
                "DELETE FROM cache_items WHERE sha256 = ?", [(sha,) for sha in forgotten]
            )
            await conn.executemany(
                "INSERT INTO cache_items (sha256, size, name, kind, version, urls, pinned, added) "
                "VALUES (?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT (sha256) DO UPDATE SET "
                "name = excluded.name, kind = excluded.kind, version = excluded.version, "
                "urls = excluded.urls, pinned = 1",
                [
                    (i.sha256, i.size, i.name, i.kind, i.version, json.dumps(list(i.urls)), now)
                    for i in wanted.values()
                ],
            )
        for sha in forgotten:
            del self._entries[sha]
        for sha, entry in list(self._entries.items()):
            if entry.pinned and sha not in wanted:
                self._entries[sha] = replace(entry, pinned=False)
        for sha, item in wanted.items():
            old = self._entries.get(sha)
            self._entries[sha] = Entry(
                sha,
                item.size if old is None else old.size,
                item.name,
                item.kind,
                item.version,
                item.urls,
                True,
                old.complete if old else False,
                old.last_access if old else 0.0,
            )
        return len(wanted), len(forgotten)

    async def set_complete(self, sha256: str, complete: bool) -> None:
        entry = self._entries.get(sha256)
        if entry is None:
            return
        await retry_while_unavailable(
            lambda: self._db.execute(
                "UPDATE cache_items SET complete = ? WHERE sha256 = ?", (int(complete), sha256)
            )
        )
        self._entries[sha256] = replace(entry, complete=complete)

    def forget_now(self, sha256: str) -> None:
        """Drop from memory at once (serving stops); ``remove`` makes it durable."""
        self._entries.pop(sha256, None)
        self._accessed.pop(sha256, None)

    async def remove(self, sha256s: Iterable[str]) -> None:
        gone = list(sha256s)
        await retry_while_unavailable(
            lambda: self._db.executemany(
                "DELETE FROM cache_items WHERE sha256 = ?", [(s,) for s in gone]
            )
        )
        for sha in gone:
            self.forget_now(sha)


async def tablets_holding(db: Database) -> dict[str, int]:
    """Per sha256: how many tablets list it in the ``content`` of their latest report."""
    rows = await db.fetch_all(
        "SELECT lower(c.value), count(DISTINCT s.device_id) "
        "FROM shadow AS s, json_each(s.state, '$.content') AS c "
        "WHERE json_type(s.state, '$.content') = 'array' GROUP BY lower(c.value)"
    )
    return {row[0]: int(row[1]) for row in rows}
