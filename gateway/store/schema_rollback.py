"""A schema migration must not strand the older system a rollback boots (no I/O).

Boxes update A/B: after a system update the new gateway migrates the store
on the data partition, and if the new system then fails its health check
the box boots the older gateway again, on that migrated store. Two rules:

1. Before the first migration of an existing store, the store is copied as
   it is (``VACUUM INTO``, a consistent snapshot) to
   ``gateway.db.schema-<old>.snapshot`` next to it (``snapshot_path``). Only
   the latest snapshot is kept (A/B: a rollback goes one system back). If
   the snapshot cannot be written (disk full), the migration does not run
   and the gateway does not start: the health check then fails and the box
   goes back to the older system, which still understands its store.
2. Each migration says whether older code can run on its result
   (``BACKWARD_COMPATIBLE`` in migrations.py: additive changes such as a new
   table, or a column with a default that older code never reads). The store
   records, in ``meta.schema_min_reader``, the lowest schema level whose code
   may run on it (``min_reader``). An older gateway that finds a newer
   ``user_version``:
   - runs on it as it is when its own level is at least ``schema_min_reader``;
   - else (the daemon only) restores the snapshot of its own level: the newer
     store is kept aside as ``gateway.db.schema-<new>.rolled-back`` and what
     was written since the update (commands, reports, results received by the
     new system) is lost: every such migration should be made backward
     compatible instead, which is why they say so;
   - else it refuses to start with a StoreError naming both levels.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path

MIN_READER_KEY = "schema_min_reader"


def min_reader(numbers: Iterable[int], compatible: Collection[int], upto: int) -> int:
    """The lowest code level that may run on a store migrated up to ``upto``."""
    return max((n for n in numbers if n <= upto and n not in compatible), default=0)


def snapshot_path(db_path: Path, level: int) -> Path:
    return db_path.with_name(f"{db_path.name}.schema-{level}.snapshot")


def rolled_back_path(db_path: Path, level: int) -> Path:
    return db_path.with_name(f"{db_path.name}.schema-{level}.rolled-back")


def older_snapshots(db_path: Path, keep: Path) -> list[Path]:
    """Snapshots other than ``keep`` (removed once a new one is written)."""
    return [p for p in db_path.parent.glob(f"{db_path.name}.schema-*.snapshot") if p != keep]
