"""What the console needs from the running gateway, and the link watcher.

The gateway (gateway/app.py) builds one :class:`BoxServices` from its parts;
the pages only read through it, and act through its three doors: queue a
classroom action (gateway.commands.local), revoke a tablet
(gateway.security.revocation.revoke_tablet), import from a USB folder
(the cache service).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.cache.seeding import ImportReport
from gateway.commands.local import LocalActions
from gateway.config import Config
from gateway.store.database import Database

if TYPE_CHECKING:
    from gateway.cache.service import CacheService
    from gateway.security.revocation import Revocation

WATCH_INTERVAL_S = 1.0


class LinkView(Protocol):
    @property
    def is_connected(self) -> bool: ...


@dataclass
class LinkWatch:
    """When each link last went up or down, as sampled every second (no I/O)."""

    up: dict[str, bool] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)

    def observe(self, name: str, up: bool, now: float) -> None:
        if self.up.get(name) != up:
            self.up[name] = up
            self.since[name] = now

    def since_of(self, name: str, default: float) -> float:
        return self.since.get(name, default)


@dataclass
class ImportJob:
    """One USB import: running, then its report (the hash check's verdict)."""

    folder: str
    started: float
    report: ImportReport
    finished: float | None = None
    error: str | None = None


@dataclass
class BoxServices:
    """The gateway's parts the console reads and the three actions it may take."""

    config: Config
    db: Database
    academy_link: LinkView
    school_link: LinkView
    outbox_budget_bytes: int
    last_summary_acked: Callable[[], float | None]
    local_actions: LocalActions
    cache: CacheService | None = None
    # The box's own system: version, slot, last update (gateway.sysupdate.updater).
    system: Callable[[], dict[str, Any]] | None = None
    revoke: Callable[[str], Awaitable[Revocation]] | None = None
    ca_fingerprint: str | None = None
    started_at: float = field(default_factory=time.time)
    links: LinkWatch = field(default_factory=LinkWatch)
    import_job: ImportJob | None = None
    _import_task: asyncio.Task[None] | None = None

    def sample_links(self, now: float) -> None:
        self.links.observe("academy", self.academy_link.is_connected, now)
        self.links.observe("school", self.school_link.is_connected, now)

    async def watch_links(self) -> None:
        while True:
            self.sample_links(time.time())
            await asyncio.sleep(WATCH_INTERVAL_S)

    def start_import(self, folder: Path) -> ImportJob:
        """Start importing ``folder`` into the cache (one import at a time)."""
        if self.cache is None:
            raise RuntimeError("no cache")
        if self._import_task is not None and not self._import_task.done():
            assert self.import_job is not None
            return self.import_job
        job = ImportJob(str(folder), time.time(), ImportReport())
        self.import_job = job
        cache = self.cache

        async def run() -> None:
            try:
                await cache.import_directory(folder, report=job.report)
            except Exception as exc:  # shown on the page; the gateway keeps running
                job.error = str(exc)
            finally:
                job.finished = time.time()

        self._import_task = asyncio.create_task(run(), name="usb-import")
        return job

    async def background(self, _app: Any) -> AsyncIterator[None]:
        """aiohttp cleanup_ctx: the link watcher, and no import left running at exit."""
        self.sample_links(time.time())
        watcher = asyncio.create_task(self.watch_links(), name="console-link-watch")
        yield
        for task in (watcher, self._import_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
