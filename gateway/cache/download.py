"""One upstream download of one item, shared by every client that wants it.

The bytes land in ``partial/<sha256>`` as they arrive; clients stream from
that file while it grows (:meth:`Download.wait_past` wakes them every
``NOTIFY_STEP`` bytes). The hash is computed as the bytes land. Until it
verifies, clients see at most ``size - 1`` bytes: the item's last byte only
ever leaves the box after the whole item verified, so no client can end up
with a complete-looking corrupt file. On a mismatch the partial file is
deleted, ``cache_hash_mismatches`` counted, and streaming clients are cut.

A dropped connection is resumed with ``Range: bytes=<received>-`` (the
next URL of the item, after a capped jittered backoff); an origin that
answers 200 instead of 206 has the bytes we already hold skipped. A partial
file left by a previous run is re-hashed and resumed the same way. After
``give_up_s`` without progress the download fails with UplinkError; the
partial file stays for the next attempt.

A write is never trusted for its length: a short write or an error (ENOSPC
on a full disk, EIO on a dying card) truncates the partial file back to the
bytes already hashed and fails the download with :class:`WriteFailed`
(``cache_write_errors``); the next attempt resumes from there. Before the
item is promoted, the file is synced and hashed again *from the disk*, so
what the index calls complete is what the disk holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gateway.backoff import backoff_delay
from gateway.cache.index import Entry
from gateway.cache.uplink_budget import UplinkBudget
from gateway.errors import CacheError, UplinkError
from gateway.metrics import Counters

log = logging.getLogger(__name__)

NOTIFY_STEP = 256 * 1024
READ_CHUNK = 256 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class CorruptItem(CacheError):
    """The downloaded bytes do not hash to the item's SHA-256 (or overran its size)."""


class WriteFailed(CacheError):
    """The cache's disk did not take a chunk (full, or failing): a failed download."""


@dataclass(frozen=True)
class OriginSettings:
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    give_up_s: float = 120.0


class Download:
    """Fetches ``entry`` into ``path``; see the module docstring."""

    def __init__(
        self,
        entry: Entry,
        path: Path,
        *,
        session: aiohttp.ClientSession,
        budget: UplinkBudget,
        counters: Counters,
        settings: OriginSettings,
        on_demand: bool,
    ) -> None:
        self.entry = entry
        self.path = path
        self.size = entry.size
        self._session = session
        self._budget = budget
        self._counters = counters
        self._settings = settings
        self.on_demand = on_demand
        self.received = 0
        self.verified = False
        self.error: GatewayErrorLike | None = None
        self.reachable = False
        self.answered = asyncio.Event()
        self.finished = asyncio.Event()
        self._progress = asyncio.Event()
        self._last_progress = time.monotonic()

    @property
    def sha256(self) -> str:
        return self.entry.sha256

    def promote(self) -> None:
        """A tablet now waits for this prefetch: it goes first from here on."""
        if not self.on_demand:
            self.on_demand = True
            self._budget.demand_started()

    def visible(self) -> int:
        """How many bytes clients may be sent (the last byte only once verified)."""
        return self.received if self.verified else min(self.received, self.size - 1)

    async def wait_past(self, offset: int) -> None:
        """Return when more than ``offset`` bytes are visible, or the download ended."""
        while self.visible() <= offset and not self.finished.is_set():
            await self._progress.wait()

    def _notify(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    async def run(self) -> None:
        if self.on_demand:
            self._budget.demand_started()
        try:
            await self._fetch()
        except (CacheError, UplinkError) as exc:
            self.error = exc
        except OSError as exc:
            self.error = CacheError(f"cannot write {self.path}: {exc.strerror}")
        finally:
            if self.on_demand:
                self._budget.demand_ended()
            self.answered.set()
            self.finished.set()
            self._notify()
        if self.error is not None:
            log.warning("download of %s failed: %s", self.sha256, self.error)

    async def _fetch(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            hasher = hashlib.sha256()
            held = os.fstat(fd).st_size
            if held > self.size:
                os.ftruncate(fd, 0)
                held = 0
            if held:
                await asyncio.to_thread(_hash_prefix, fd, held, hasher)
                log.info("resuming %s from byte %d of %d", self.sha256, held, self.size)
                self._counters.inc("cache_downloads_resumed")
            self.received = held
            self._last_progress = time.monotonic()
            await self._fetch_rest(fd, hasher)
            if hasher.hexdigest() != self.sha256:
                self._counters.inc("cache_hash_mismatches")
                os.close(fd)
                fd = -1
                self.path.unlink(missing_ok=True)
                raise CorruptItem(
                    f"item {self.sha256} hashed to {hasher.hexdigest()}: discarded, never served"
                )
            await asyncio.to_thread(os.fsync, fd)
            on_disk = hashlib.sha256()
            await asyncio.to_thread(_hash_prefix, fd, self.size, on_disk)
            if on_disk.hexdigest() != self.sha256:
                self._counters.inc("cache_hash_mismatches")
                os.close(fd)
                fd = -1
                self.path.unlink(missing_ok=True)
                raise CorruptItem(
                    f"item {self.sha256} verified in memory but the disk holds other bytes "
                    f"({on_disk.hexdigest()}): discarded, never served"
                )
            self.verified = True
            self._notify()
        finally:
            if fd >= 0:
                os.close(fd)

    async def _fetch_rest(self, fd: int, hasher: hashlib._Hash) -> None:
        urls = self.entry.urls
        attempt = 0
        tried = 0
        while self.received < self.size:
            url = urls[tried % len(urls)]
            tried += 1
            before = self.received
            try:
                await self._fetch_from(url, fd, hasher)
                if self.received < self.size:
                    raise UplinkError(f"origin closed after byte {self.received} of {self.size}")
            except (aiohttp.ClientError, TimeoutError, UplinkError) as exc:
                self._counters.inc("cache_origin_errors")
                if not self.reachable and tried >= len(urls):
                    self.answered.set()
                stalled = time.monotonic() - self._last_progress
                if stalled > self._settings.give_up_s:
                    raise UplinkError(
                        f"no progress from the origin for {stalled:.0f} s: {exc}"
                    ) from exc
                attempt = 0 if self.received > before else attempt + 1
                delay = backoff_delay(attempt, base_s=0.2, cap_s=5.0)
                log.info("origin %s: %s; retrying in %.1f s", url, exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)

    async def _fetch_from(self, url: str, fd: int, hasher: hashlib._Hash) -> None:
        s = self._settings
        headers = {"Accept-Encoding": "identity"}
        if self.received:
            headers["Range"] = f"bytes={self.received}-"
        timeout = aiohttp.ClientTimeout(
            sock_connect=s.connect_timeout_s, sock_read=s.read_timeout_s
        )
        async with self._session.get(url, headers=headers, timeout=timeout) as response:
            skip = 0
            if response.status == 206:
                match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
                if match is None or int(match.group(1)) != self.received:
                    raise UplinkError(f"origin answered the wrong range from {url}")
            elif response.status == 200:
                skip = self.received
            else:
                raise UplinkError(f"origin answered HTTP {response.status} for {url}")
            self.reachable = True
            self.answered.set()
            async for received_chunk in response.content.iter_chunked(READ_CHUNK):
                chunk = received_chunk
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                    if not chunk:
                        continue
                n = len(chunk)
                if self.received + n > self.size:
                    self._counters.inc("cache_hash_mismatches")
                    os.ftruncate(fd, 0)
                    self.path.unlink(missing_ok=True)
                    raise CorruptItem(
                        f"origin sent more than the {self.size} bytes of {self.sha256}"
                    )
                await self._budget.take(n, on_demand=self.on_demand)
                self._write(fd, chunk)
                hasher.update(chunk)
                self.received += n
                self._counters.inc("cache_origin_bytes", n)
                self._last_progress = time.monotonic()
                first = self.received == n
                crossed = self.received // NOTIFY_STEP != (self.received - n) // NOTIFY_STEP
                if first or crossed or self.received >= self.size - 1:
                    self._notify()

    def _write(self, fd: int, chunk: bytes) -> None:
        """Write ``chunk`` at ``received`` entirely, or cut the file back and fail."""
        try:
            written = os.pwrite(fd, chunk, self.received)
            reason = f"disk took {written} of {len(chunk)} bytes (full?)"
        except OSError as exc:
            written, reason = -1, exc.strerror or str(exc)
        if written == len(chunk):
            return
        self._counters.inc("cache_write_errors")
        try:
            os.ftruncate(fd, self.received)  # keep only bytes already hashed
        except OSError:
            self.path.unlink(missing_ok=True)
        raise WriteFailed(
            f"cannot write {self.sha256} at byte {self.received}: {reason}; "
            f"download failed, {self.received} bytes kept for the next attempt"
        )


GatewayErrorLike = CacheError | UplinkError


def _hash_prefix(fd: int, length: int, hasher: hashlib._Hash) -> None:
    offset = 0
    while offset < length:
        block = os.pread(fd, min(1 << 20, length - offset), offset)
        if not block:
            break
        hasher.update(block)
        offset += len(block)
