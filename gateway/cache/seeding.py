"""Seeding from a folder (a USB drive): files that hash to a wanted item are imported.

Only files whose size equals a wanted item's size are read. Each is copied
into the cache's partial folder while being hashed in the same pass; the
copy is kept only if the hash names a wanted item, so what lands in the
cache is exactly the bytes that were verified. Runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.cache.index import Entry
from gateway.errors import CacheError

log = logging.getLogger(__name__)

COPY_BLOCK = 1 << 20


@dataclass
class ImportReport:
    """What an import did: verified files (sha -> path in the cache) and the rest."""

    verified: dict[str, Path] = field(default_factory=dict)
    examined: int = 0
    skipped: int = 0
    mismatched: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    wanted: int = 0  # items the cache knows and does not hold yet
    reasons: list[str] = field(default_factory=list)  # "path: why it was skipped"
    note: str = ""  # why the import as a whole could do nothing

    @property
    def failed(self) -> bool:
        """Exit status 1: a file was refused or did not verify, or nothing could be
        imported although items are wanted, or the cache knows no item at all."""
        nothing = not self.verified and (self.wanted > 0 or self.note.startswith(NO_MANIFEST))
        return bool(self.mismatched or self.refused or nothing)

    def skip(self, path: Path, reason: str) -> None:
        self.skipped += 1
        self.reasons.append(f"{path}: {reason}")

    def as_dict(self) -> dict[str, object]:
        return {
            "imported": sorted(self.verified),
            "examined": self.examined,
            "wanted": self.wanted,
            "skipped": self.skipped,
            "skip_reasons": self.reasons,
            "mismatched": self.mismatched,
            "refused": self.refused,
            "note": self.note,
            "failed": self.failed,
        }


NO_MANIFEST = "the box knows no item"


async def import_files(
    folder: Path,
    wanted: Mapping[str, Entry],
    staging: Path,
    admit: Callable[[Entry], str | None],
    *,
    report: ImportReport | None = None,
) -> ImportReport:
    """Copy-and-verify every candidate file under ``folder`` into ``staging``.

    ``report`` (a new one by default) is filled as files are examined.
    """
    if not await asyncio.to_thread(folder.is_dir):
        raise CacheError(f"{folder} is not a directory")
    sizes = {e.size for e in wanted.values()}
    report = report if report is not None else ImportReport()
    report.wanted = len(wanted)
    for root, _dirs, files in os.walk(folder):
        for name in sorted(files):
            path = Path(root) / name
            report.examined += 1
            try:
                if path.is_symlink():
                    report.skip(path, "a symbolic link (only regular files are imported)")
                    continue
                if not path.is_file():
                    report.skip(path, "not a regular file")
                    continue
                size = path.stat().st_size
            except OSError as exc:
                report.skip(path, f"unreadable: {exc.strerror}")
                continue
            if size not in sizes:
                why = "no wanted item" if wanted else "nothing is wanted"
                report.skip(path, f"its size, {size} bytes, is the size of {why}")
                continue
            tmp = staging / f".import-{os.getpid()}"
            digest = await asyncio.to_thread(_copy_hashing, path, tmp)
            entry = wanted.get(digest)
            if entry is None or digest in report.verified:
                tmp.unlink(missing_ok=True)
                report.mismatched.append(str(path))
                log.info("import: %s matches no wanted item", path)
                continue
            reason = admit(entry)
            if reason is not None:
                tmp.unlink(missing_ok=True)
                report.refused.append(f"{path}: {reason}")
                continue
            final = staging / f".import-{digest}"  # not partial/<sha>: a download may hold it
            os.replace(tmp, final)
            report.verified[digest] = final
            log.info("import: %s verified as %s (%s)", path, digest, entry.name)
    return report


def _copy_hashing(source: Path, target: Path) -> str:
    hasher = hashlib.sha256()
    with source.open("rb") as src, target.open("wb") as dst:
        while block := src.read(COPY_BLOCK):
            hasher.update(block)
            dst.write(block)
        dst.flush()
        os.fsync(dst.fileno())
    return hasher.hexdigest()
