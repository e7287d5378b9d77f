"""What the demo's academy and tablets do besides reporting state."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import aiohttp
import aiomqtt

from gateway import topics
from gateway.app import Gateway
from gateway.cache.manifest import sign_manifest
from gateway.lab.commands import AcademySigner
from gateway.lab.origin import Origin
from gateway.lab.proxy import LinkProxy
from gateway.lab.waiting import wait_until

log = logging.getLogger(__name__)

CACHE_ITEM_BYTES = 8 * 1024 * 1024
CACHE_FETCHERS = 5


def demo_commands(app_sha256: str) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(label, action, targets, params) of the commands the demo's academy sends."""
    return [
        ("lock class-01", "lock", {"group": "class-01"}, {}),
        (
            "install classroom 2.5.1",
            "install_app",
            {"all": True},
            {"package": "org.ent.classroom", "version": "2.5.1", "sha256": app_sha256},
        ),
    ]


class CacheScene:
    """An origin with one app and a few tablets fetching it through the gateway."""

    def __init__(self, signer: AcademySigner) -> None:
        self.private = signer.key
        self.key_id = signer.key_id
        self.data = b"".join(
            hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(CACHE_ITEM_BYTES // 32)
        )
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.origin = Origin(rate_bytes_per_s=4 * 1024 * 1024)
        self.fetched_ok = 0
        self.fetch_failed = 0

    async def run(self, gateway: Gateway) -> None:
        item = {
            "sha256": self.sha256,
            "size": len(self.data),
            "urls": [self.origin.add("app.apk", self.data)],
            "name": "classroom-2.5.1.apk",
            "kind": "apk",
            "version": "2.5.1",
        }
        body = {"type": "cache_manifest", "serial": 1, "issued_at": time.time(), "items": [item]}
        assert gateway.cache is not None
        await gateway.cache.apply_manifest(sign_manifest(body, self.private, self.key_id))
        http = gateway.config.http
        url = f"http://{http.host}:{http.port}/content/{self.sha256}"
        async with aiohttp.ClientSession() as session:

            async def tablet() -> None:
                try:
                    async with session.get(url) as response:
                        got = hashlib.sha256(await response.read()).hexdigest()
                    if got == self.sha256:
                        self.fetched_ok += 1
                    else:
                        self.fetch_failed += 1
                except aiohttp.ClientError:
                    self.fetch_failed += 1

            await asyncio.gather(*(tablet() for _ in range(CACHE_FETCHERS)))


class CommandScene:
    """The academy sends the demo's signed commands once every tablet is known."""

    def __init__(self, signer: AcademySigner, school_id: str, app_sha256: str) -> None:
        self.signer = signer
        self.school_id = school_id
        self.app_sha256 = app_sha256
        self.sent: list[tuple[str, str]] = []  # (label, command id)

    async def run(self, gateway: Gateway, academy_port: int, tablets: int) -> None:
        counters = gateway.counters
        try:
            await wait_until(lambda: counters.get("state_reports_stored") >= tablets, within_s=60)
        except TimeoutError:
            log.warning("not every tablet reported within 60 s: sending the commands anyway")
        async with aiomqtt.Client("127.0.0.1", academy_port, identifier="demo-academy") as academy:
            for label, action, targets, params in demo_commands(self.app_sha256):
                command_id, envelope = self.signer.envelope(action, targets=targets, params=params)
                await academy.publish(topics.academy_commands(self.school_id), envelope, qos=1)
                self.sent.append((label, command_id))
                log.info("academy sent %s (%s)", command_id, label)


async def cut_uplink(proxy: LinkProxy, at_s: float, for_s: float) -> None:
    """The demo's scripted outage: cut the academy link, then give it back."""
    await asyncio.sleep(at_s)
    log.info("demo: cutting the uplink for %.0f s", for_s)
    proxy.cut()
    await asyncio.sleep(for_s)
    log.info("demo: uplink back")
    await proxy.restore()
