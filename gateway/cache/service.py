"""CacheService: the update cache as one service of the gateway.

Owns the index, the files under ``<state_dir>/cache`` (``objects/<sha256>``
complete and verified, ``partial/<sha256>`` downloads in progress), the
active downloads (at most one per item: single flight), the manifest, the
prefetcher and the stats. Its ``run()`` is one task of the gateway's
TaskGroup and holds its own TaskGroup for the downloads, the prefetcher,
the manifest refresher and the access-time flusher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.cache.download import Download, OriginSettings
from gateway.cache.eviction import Resident, free_space_floor, plan_admission
from gateway.cache.index import CacheIndex, Entry, tablets_holding
from gateway.cache.manifest import Manifest, ManifestItem, parse_manifest, verify_envelope
from gateway.cache.offpeak import parse_windows
from gateway.cache.seeding import NO_MANIFEST, ImportReport, import_files
from gateway.cache.uplink_budget import UplinkBudget
from gateway.config import Config
from gateway.errors import CacheError, GatewayError, RejectedInput, UplinkError
from gateway.metrics import Counters
from gateway.store.database import Database

log = logging.getLogger(__name__)

MANIFEST_META_KEY = "cache_manifest_envelope"
ACCESS_FLUSH_S = 30.0
PREFETCH_RECHECK_S = 60.0


class Refused(CacheError):
    """The item cannot be admitted to the cache (quota, free-space floor)."""


@dataclass(frozen=True)
class CachePaths:
    root: Path

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def partial(self) -> Path:
        return self.root / "partial"

    def object(self, sha256: str) -> Path:
        return self.objects / sha256

    def part(self, sha256: str) -> Path:
        return self.partial / sha256


class CacheService:
    """Construct, ``await open()``, then run ``run()`` as a task."""

    def __init__(
        self,
        config: Config,
        db: Database,
        counters: Counters,
        *,
        academy_keys: Mapping[str, Ed25519PublicKey],
        wanted: Callable[[ManifestItem], bool] | None = None,
    ) -> None:
        """``academy_keys``: the parsed ``commands.academy_keys``, which sign manifests too.

        ``wanted``: whether this box prefetches a manifest item (default: all);
        the gateway leaves out system bundles made for other boxes.
        """
        self.config = config
        self._wanted = wanted
        self._academy_keys = academy_keys
        self.settings = config.cache
        self.counters = counters
        self.paths = CachePaths(config.gateway.state_dir / "cache")
        self._db = db
        self._index: CacheIndex | None = None
        self._active: dict[str, Download] = {}
        self._group: asyncio.TaskGroup | None = None
        self._session: aiohttp.ClientSession | None = None
        self._prefetch_wake = asyncio.Event()
        self.manifest: Manifest | None = None
        self.running = asyncio.Event()
        c = config.cache
        self.budget = UplinkBudget(
            c.uplink_bytes_per_s, c.prefetch_bytes_per_s, parse_windows(c.offpeak_windows)
        )
        self.origin = OriginSettings(
            c.origin_connect_timeout_s, c.origin_read_timeout_s, c.origin_give_up_s
        )

    # -- start-up -----------------------------------------------------------------

    async def open(self) -> None:
        """Load the index and the stored manifest; reconcile with the files on disk."""
        self.paths.objects.mkdir(parents=True, exist_ok=True)
        self.paths.partial.mkdir(parents=True, exist_ok=True)
        self._index = index = await CacheIndex.load(self._db)
        for entry in index.entries():
            path = self.paths.object(entry.sha256)
            on_disk = path.exists() and path.stat().st_size == entry.size
            if entry.complete and not on_disk:
                log.warning("cached item %s is missing from disk; forgetting it", entry.sha256)
                await index.set_complete(entry.sha256, False)
                if not entry.pinned:
                    await index.remove([entry.sha256])
        for folder in (self.paths.objects, self.paths.partial):
            for path in folder.iterdir():
                known = index.get(path.name)
                on_disk_complete = folder == self.paths.objects
                keep = known is not None and known.complete == on_disk_complete
                if not keep:
                    log.info("removing stray cache file %s", path)
                    path.unlink(missing_ok=True)
        row = await self._db.fetch_one("SELECT value FROM meta WHERE key = ?", (MANIFEST_META_KEY,))
        if row is not None:
            self.manifest = parse_manifest(verify_envelope(row[0].encode(), self._academy_keys))

    @property
    def index(self) -> CacheIndex:
        if self._index is None:
            raise CacheError("cache service used before open()")
        return self._index

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None)
        async with (
            aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
            asyncio.TaskGroup() as group,
        ):
            self._session, self._group = session, group
            group.create_task(self._prefetch_loop(), name="cache-prefetch")
            group.create_task(self._flush_access_loop(), name="cache-access-flush")
            if self.settings.manifest_url:
                group.create_task(self._manifest_refresh_loop(), name="cache-manifest-refresh")
            self.running.set()
            try:
                await asyncio.Event().wait()
            finally:
                self.running.clear()
                try:
                    await self.index.flush_access()
                except GatewayError as exc:  # the store is failing; the order is only LRU
                    log.warning("last access times not saved at shutdown: %s", exc)

    # -- manifest -----------------------------------------------------------------

    async def apply_manifest(self, envelope: bytes) -> Manifest:
        """Verify and apply a signed manifest (from the URL or the academy broker).

        Raises RejectedInput (counted as ``cache_manifest_rejected_<reason>``).
        """
        try:
            manifest = parse_manifest(verify_envelope(envelope, self._academy_keys))
            if self.manifest is not None and manifest.serial < self.manifest.serial:
                raise RejectedInput(
                    "stale", f"serial {manifest.serial} is older than {self.manifest.serial}"
                )
        except RejectedInput as exc:
            self.counters.inc("cache_manifest_rejected", reason=exc.reason)
            log.warning("rejected cache manifest: %s", exc)
            raise
        if self.manifest is not None and manifest.serial == self.manifest.serial:
            # The retained manifest again (each reconnect), or the URL unchanged.
            self.counters.inc("cache_manifests_unchanged")
            return self.manifest
        pinned, forgotten = await self.index.apply_manifest(manifest.items)
        await self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (MANIFEST_META_KEY, envelope.decode()),
        )
        self.manifest = manifest
        self.counters.inc("cache_manifests_applied")
        log.info(
            "cache manifest %d applied: %d items pinned, %d forgotten",
            manifest.serial,
            pinned,
            forgotten,
        )
        for item in manifest.items:
            if item.size > self.settings.quota_bytes:
                self.counters.inc("cache_items_refused")
                log.warning(
                    "manifest item %s (%s) of %d bytes is larger than the cache quota of %d; "
                    "it will not be cached",
                    item.sha256,
                    item.name,
                    item.size,
                    self.settings.quota_bytes,
                )
        self._prefetch_wake.set()
        return manifest

    async def _manifest_refresh_loop(self) -> None:
        assert self._session is not None
        while True:
            try:
                async with self._session.get(
                    self.settings.manifest_url, timeout=aiohttp.ClientTimeout(total=60)
                ) as response:
                    if response.status != 200:
                        raise UplinkError(f"manifest URL answered HTTP {response.status}")
                    body = await response.content.read(8 * 1024 * 1024)
                await self.apply_manifest(body)
            except (aiohttp.ClientError, TimeoutError, UplinkError, RejectedInput) as exc:
                self.counters.inc("cache_manifest_fetch_errors")
                log.warning("cannot refresh the cache manifest: %s", exc)
            await asyncio.sleep(self.settings.manifest_refresh_s)

    # -- downloads ----------------------------------------------------------------

    def lookup(self, sha256: str) -> Entry | None:
        return self.index.get(sha256)

    def active(self, sha256: str) -> Download | None:
        return self._active.get(sha256)

    def fetch(self, sha256: str, *, on_demand: bool = True) -> Download:
        """Start (or join) the one download of a known item. Raises Refused, CacheError."""
        download = self._active.get(sha256)
        if download is not None:
            if on_demand:
                download.promote()
            return download
        entry = self.index.get(sha256)
        if entry is None:
            raise CacheError(f"unknown item {sha256}")
        if self._group is None or self._session is None:
            raise CacheError("the cache service is not running")
        self._admit(entry)
        download = Download(
            entry,
            self.paths.part(sha256),
            session=self._session,
            budget=self.budget,
            counters=self.counters,
            settings=self.origin,
            on_demand=on_demand,
        )
        self._active[sha256] = download
        self.counters.inc("cache_downloads_started")
        self._group.create_task(self._download(download), name=f"cache-download-{sha256[:12]}")
        return download

    async def _download(self, download: Download) -> None:
        sha = download.sha256
        try:
            await download.run()
            if download.verified:
                final = self.paths.object(sha)
                os.replace(download.path, final)
                download.path = final
                await self.index.set_complete(sha, True)
                self.counters.inc("cache_downloads_completed")
                log.info(
                    "cached %s (%s, %d bytes), hash verified",
                    sha,
                    download.entry.name,
                    download.size,
                )
        finally:
            self._active.pop(sha, None)

    def _admit(self, entry: Entry) -> None:
        """Make room for ``entry`` (LRU eviction of unpinned items) or raise Refused.

        Evicts only while the service runs (the index write needs its task
        group); before that (``cache import`` with the gateway stopped) an item
        that does not fit is refused.
        """
        may_evict = self._group is not None
        residents = []
        used = 0
        for e in self.index.entries():
            if e.complete:
                used += e.size
                if may_evict and e.sha256 not in self._active:
                    residents.append(Resident(e.sha256, e.size, e.pinned, e.last_access))
        used += sum(d.size for d in self._active.values())
        held = self.paths.part(entry.sha256)
        already = held.stat().st_size if held.exists() else 0
        plan = plan_admission(
            entry.size,
            residents,
            used_bytes=used,
            quota_bytes=self.settings.quota_bytes,
            free_bytes=shutil.disk_usage(self.paths.root).free + already,
            min_free_bytes=self._free_space_floor(),
        )
        if plan.refused is not None:
            self.counters.inc("cache_items_refused")
            raise Refused(f"{entry.sha256} ({entry.name or 'unnamed'}): {plan.refused}")
        if plan.evict:
            self._evict(plan.evict)

    def _evict(self, sha256s: tuple[str, ...]) -> None:
        for sha in sha256s:
            self.paths.object(sha).unlink(missing_ok=True)
            self.counters.inc("cache_evictions")
            log.info("evicted %s (least recently used, unpinned)", sha)
        assert self._group is not None
        self._group.create_task(self.index.remove(sha256s), name="cache-evict-index")
        for sha in sha256s:  # gone for serving at once, whatever the index write does
            self.index.forget_now(sha)

    async def _prefetch_loop(self) -> None:
        while True:
            self._prefetch_wake.clear()
            skipped = self._not_wanted()
            for entry in self.index.entries():
                if not entry.pinned or entry.complete or entry.sha256 in self._active:
                    continue
                if entry.sha256 in skipped:
                    continue
                if entry.size > self.settings.quota_bytes:
                    continue
                if not self.budget.prefetch_window_open():
                    break
                try:
                    download = self.fetch(entry.sha256, on_demand=False)
                except CacheError as exc:
                    log.warning("not prefetching: %s", exc)
                    continue
                await download.finished.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._prefetch_wake.wait(), PREFETCH_RECHECK_S)

    def _not_wanted(self) -> set[str]:
        if self._wanted is None or self.manifest is None:
            return set()
        return {item.sha256 for item in self.manifest.items if not self._wanted(item)}

    def manifest_items(self) -> tuple[ManifestItem, ...]:
        """The current manifest's items (none before the first manifest)."""
        return self.manifest.items if self.manifest is not None else ()

    def complete_items(self) -> set[str]:
        """The sha256s held complete and hash-checked."""
        return {e.sha256 for e in self.index.entries() if e.complete}

    async def _flush_access_loop(self) -> None:
        while True:
            await asyncio.sleep(ACCESS_FLUSH_S)
            await self.index.flush_access()

    # -- seeding ------------------------------------------------------------------

    async def import_directory(
        self, folder: Path, *, report: ImportReport | None = None
    ) -> ImportReport:
        """Import files from ``folder`` (a USB drive) that match known, uncached items.

        ``report``, when given, is filled as the import goes (the console shows it).
        """
        wanted = {
            e.sha256: e
            for e in self.index.entries()
            if not e.complete and e.sha256 not in self._active
        }
        report = await import_files(
            folder, wanted, self.paths.partial, self._admit_for_import, report=report
        )
        if not wanted:
            report.note = (
                "every item of the manifest is already cached"
                if self.manifest is not None and self.index.entries()
                else f"{NO_MANIFEST}: no manifest has reached it yet (the academy sends one "
                "with `academy send --manifest`, or set cache.manifest_url)"
            )
        for sha, path in report.verified.items():
            os.replace(path, self.paths.object(sha))
            await self.index.set_complete(sha, True)
        self.counters.inc("cache_items_imported", len(report.verified))
        return report

    def _admit_for_import(self, entry: Entry) -> str | None:
        try:
            self._admit(entry)
        except Refused as exc:
            return str(exc)
        return None

    def _free_space_floor(self) -> int:
        return free_space_floor(
            shutil.disk_usage(self.paths.root).total,
            min_free_bytes=self.settings.min_free_bytes,
            min_free_percent=self.settings.min_free_percent,
        )

    # -- stats --------------------------------------------------------------------

    def record_served(self, nbytes: int) -> None:
        self.counters.inc("cache_lan_bytes_served", nbytes)

    async def stats(self) -> dict[str, Any]:
        """Figures for ``status``, the admin API, the demo and the summaries."""
        c = self.counters
        served = c.get("cache_lan_bytes_served")
        origin = c.get("cache_origin_bytes")
        requests = c.get("cache_requests")
        entries = self.index.entries()
        holding = await tablets_holding(self._db)
        return {
            "items_known": len(entries),
            "items_pinned": sum(e.pinned for e in entries),
            "items_complete": sum(e.complete for e in entries),
            "bytes_used": sum(e.size for e in entries if e.complete),
            "quota_bytes": self.settings.quota_bytes,
            "manifest_serial": self.manifest.serial if self.manifest else None,
            "downloads": [
                {
                    "sha256": d.sha256,
                    "received": d.received,
                    "size": d.size,
                    "on_demand": d.on_demand,
                }
                for d in self._active.values()
            ],
            "lan_bytes_served": served,
            "origin_bytes": origin,
            "requests": requests,
            "hit_ratio": round(c.get("cache_hits") / requests, 3) if requests else None,
            "uplink_bytes_saved": max(0, served - origin),
            "hash_mismatches": c.get("cache_hash_mismatches"),
            "items": [
                {
                    "sha256": e.sha256,
                    "name": e.name,
                    "version": e.version,
                    "size": e.size,
                    "pinned": e.pinned,
                    "complete": e.complete,
                    "tablets_holding": holding.get(e.sha256, 0),
                }
                for e in sorted(entries, key=lambda e: (not e.pinned, e.name, e.sha256))
            ],
        }


def summarize(stats: dict[str, Any], max_items: int = 100) -> dict[str, Any]:
    """The compact cache part of an upstream school summary."""
    keep = (
        "items_pinned",
        "items_complete",
        "bytes_used",
        "lan_bytes_served",
        "origin_bytes",
        "hit_ratio",
        "uplink_bytes_saved",
        "hash_mismatches",
        "manifest_serial",
    )
    summary = {key: stats[key] for key in keep}
    summary["items"] = [
        {"sha256": i["sha256"], "complete": i["complete"], "tablets_holding": i["tablets_holding"]}
        for i in stats["items"]
        if i["pinned"]
    ][:max_items]
    return summary
