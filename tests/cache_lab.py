"""The update cache in-process with its lab origin, for the cache tests.

Shared by tests/test_cache_flow.py and tests/test_full_disk.py (test modules do
not import each other).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.cache.manifest import sign_manifest
from gateway.cache.service import CacheService
from gateway.lab.mosquitto import free_port
from gateway.lab.origin import Origin
from gateway.metrics import Counters
from gateway.serving import serve_until_cancelled
from gateway.signed import load_public_keys
from gateway.store.database import Database
from gateway.web.server import build_app
from tests.helpers import lab_config

MB = 1024 * 1024


def blob(size: int, seed: int) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


class CacheLab:
    """A running cache with its origin, signing key and an HTTP client."""

    def __init__(self, tmp_path: Path, origin: Origin) -> None:
        self.tmp_path = tmp_path
        self.origin = origin
        self.private = Ed25519PrivateKey.generate()
        raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = base64.b64encode(raw).decode()
        self.counters = Counters()
        self.serial = 0
        self.service: CacheService
        self.db: Database
        self.base = ""
        self.session: aiohttp.ClientSession
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, **cache: Any) -> None:
        settings = {"offpeak_windows": [], "origin_wait_s": 3.0, "origin_give_up_s": 10.0}
        settings.update(cache)
        config = lab_config(
            self.tmp_path / "state",
            school_port=1,
            academy_port=1,
            overrides={"cache": settings, "commands": {"academy_keys": {self.key_id: self.key_id}}},
        )
        self.db = await Database.open(self.tmp_path / "state" / "gateway.db")
        self.service = CacheService(
            config,
            self.db,
            self.counters,
            academy_keys=load_public_keys(config.commands.academy_keys),
        )
        await self.service.open()
        port = free_port()
        started = asyncio.Event()
        app = build_app(self._status, "token", self.service)
        self._tasks = [
            asyncio.create_task(self.service.run(), name="cache"),
            asyncio.create_task(serve_until_cancelled(app, "127.0.0.1", port, started)),
        ]
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.wait_for(self.service.running.wait(), 5)
        self.base = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession()

    async def _status(self) -> dict[str, Any]:
        return {"cache": await self.service.stats()}

    async def stop(self) -> None:
        await self.session.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.db.close()

    def item(self, name: str, data: bytes, **extra: Any) -> dict[str, Any]:
        url = self.origin.add(name, data)
        return {
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "urls": [url],
            "name": name,
            **extra,
        }

    def envelope(self, items: list[dict[str, Any]], serial: int | None = None) -> bytes:
        if serial is None:
            self.serial += 1
            serial = self.serial
        body = {
            "type": "cache_manifest",
            "serial": serial,
            "issued_at": time.time(),
            "items": items,
        }
        return sign_manifest(body, self.private, self.key_id)

    async def publish(self, items: list[dict[str, Any]]) -> None:
        await self.service.apply_manifest(self.envelope(items))

    async def get(self, sha: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
        async with self.session.get(f"{self.base}/content/{sha}", headers=headers or {}) as resp:
            return resp.status, resp.headers.copy(), await resp.read()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
