"""What must leave the disk to admit an item, or why it cannot be admitted.

Rules: the cache (complete items plus reserved downloads) stays within
``quota_bytes``, and the filesystem keeps at least ``min_free_bytes`` free
(:func:`free_space_floor`: an absolute floor or a share of the disk, the
larger, so the same defaults fit a 1 GiB data partition and a 1 TB disk).
Only unpinned, complete items that nobody is downloading may be evicted,
least recently used first. An item larger than the quota is refused outright.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    """An item on disk as eviction sees it."""

    sha256: str
    size: int
    pinned: bool
    last_access: float


@dataclass(frozen=True)
class Admission:
    """The verdict: evict these first, or refuse with a reason."""

    evict: tuple[str, ...] = ()
    refused: str | None = None


def free_space_floor(disk_bytes: int, *, min_free_bytes: int, min_free_percent: float) -> int:
    """The free space the cache leaves on a filesystem of ``disk_bytes``."""
    return max(min_free_bytes, int(disk_bytes * min_free_percent / 100))


def plan_admission(
    size: int,
    residents: Sequence[Resident],
    *,
    used_bytes: int,
    quota_bytes: int,
    free_bytes: int,
    min_free_bytes: int,
) -> Admission:
    """Choose least-recently-used unpinned items to evict so ``size`` more bytes fit."""
    if size > quota_bytes:
        return Admission(
            refused=f"item of {size} bytes is larger than the cache quota of {quota_bytes} bytes"
        )
    over_quota = used_bytes + size - quota_bytes
    under_floor = min_free_bytes - (free_bytes - size)
    need = max(over_quota, under_floor, 0)
    if need == 0:
        return Admission()
    evict: list[str] = []
    freed = 0
    for resident in sorted((r for r in residents if not r.pinned), key=lambda r: r.last_access):
        if freed >= need:
            break
        evict.append(resident.sha256)
        freed += resident.size
    if freed < need:
        what = "the cache quota" if over_quota >= under_floor else "the minimum free space"
        return Admission(
            refused=f"item of {size} bytes does not fit: {need - freed} bytes short of {what} "
            "even after evicting every unpinned item"
        )
    return Admission(evict=tuple(evict))
