"""A full disk, for real: a small tmpfs mounted by the test under the cache.

Issue 15 item 1: when the cache's filesystem fills mid-download, a write is
short; the item must never be promoted (or served) as complete with bytes
that are not the item's, and the download must be counted and logged as
failed. When space returns, the item is fetched and served correctly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from gateway.app import DATABASE_FILE
from gateway.errors import StoreError
from gateway.lab.full_disk import CANNOT_MOUNT, can_mount, fill, free_bytes, small_tmpfs
from gateway.lab.gateway_process import GatewayProcess
from gateway.lab.mosquitto import MosquittoProcess, free_port
from gateway.lab.origin import Origin
from gateway.lab.waiting import wait_until
from gateway.sim.model import TabletModel
from gateway.store.database import Database
from tests.cache_lab import MB, CacheLab, blob, digest

pytestmark = [
    pytest.mark.skipif(not can_mount(), reason=CANNOT_MOUNT),
    pytest.mark.slow,  # filling real filesystems
]


@pytest.fixture
def cache_on_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "state" / "cache", 2 * MB) as mounted:
        yield mounted


@pytest.fixture
async def slow_origin() -> AsyncIterator[Origin]:
    async with Origin(rate_bytes_per_s=100_000) as running:
        yield running


class TestCacheOnFullDisk:
    """A short write is a failed download, never a verified item with a hole in it."""

    async def test_short_write_is_never_promoted_or_served(
        self, tmp_path, cache_on_tmpfs, slow_origin
    ):
        lab = CacheLab(tmp_path, slow_origin)
        await lab.start(min_free_bytes=0, quota_bytes=10 * MB)
        try:
            data = blob(MB, 11)
            item = lab.item("full.apk", data)
            await lab.publish([item])
            sha = item["sha256"]
            part = lab.service.paths.part(sha)

            async def client() -> bytes:
                async with lab.session.get(f"{lab.base}/content/{sha}") as resp:
                    assert resp.status == 200
                    return await resp.read()

            reader = asyncio.create_task(client())
            assert await wait_until(lambda: part.exists() and part.stat().st_size > 0, 10)
            # Leave less than one origin chunk free: the next write is short.
            filler = fill(cache_on_tmpfs, leave_bytes=40_000)
            assert await wait_until(
                lambda: free_bytes(cache_on_tmpfs) == 0 or lab.service.active(sha) is None, 20
            )
            filler.unlink()  # space returns before the next chunk lands

            try:
                got = await reader
            except aiohttp.ClientPayloadError:
                got = None
            # What a tablet took as the whole item is the item.
            assert got is None or len(got) < len(data) or digest(got) == sha
            assert await wait_until(lambda: lab.service.active(sha) is None, 30)
            entry = lab.service.lookup(sha)
            if entry.complete:
                on_disk = lab.service.paths.object(sha).read_bytes()
                assert hashlib.sha256(on_disk).hexdigest() == sha, "index says complete"
            assert lab.counters.get("cache_write_errors") >= 1

            # Space is back: the next request gets the real item, from a sound file.
            status, _, body = await lab.get(sha)
            assert status == 200 and digest(body) == sha
            assert await wait_until(lambda: lab.service.lookup(sha).complete, 10)
            assert lab.service.paths.object(sha).read_bytes() == data
        finally:
            await lab.stop()


class TestStoreOnFullDisk:
    """A write that does not fit says the disk is full (item 11: not a ROLLBACK error)."""

    async def test_full_disk_error_is_reported_not_the_rollback(self, tmp_path):
        with small_tmpfs(tmp_path / "state", 1 * MB) as state:
            db = await Database.open(state / "gateway.db")
            try:
                fill(state)
                with pytest.raises(StoreError) as caught:
                    async with db.transaction() as conn:
                        for n in range(64):
                            await conn.execute(
                                "INSERT INTO meta (key, value) VALUES (?, ?)",
                                (f"k{n}", "x" * 60_000),
                            )
                assert "full" in str(caught.value), caught.value
                assert "rollback" not in str(caught.value)
                # The store is usable again once there is room.
                (state / "filler").unlink()
                await db.execute("INSERT INTO meta (key, value) VALUES ('after', '1')")
                assert await db.fetch_one("SELECT value FROM meta WHERE key = 'after'")
            finally:
                await db.close()


def gateway_table(
    state_dir: Path, school: MosquittoProcess, academy: MosquittoProcess
) -> dict[str, dict[str, Any]]:
    return {
        "gateway": {
            "school_id": "school-test",
            "gateway_id": "gw-full",
            "state_dir": str(state_dir),
        },
        "school_broker": {"host": "127.0.0.1", "port": school.port, "lab_plain_listener": True},
        "academy_broker": {"host": "127.0.0.1", "port": academy.port},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "cache": {"min_free_bytes": 0},
    }


async def publish_reports(broker: MosquittoProcess, tablets: int, seq: int) -> None:
    """One QoS 1 report from each tablet; returns once the broker took them all."""
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"pub-{seq}") as client:
        for n in range(tablets):
            model = TabletModel.create(f"tab-{n:04d}", "class-01", seed=n)
            model.seq = seq - 1
            report = model.report(1_764_000_000.0 + seq)
            report["pad"] = "x" * 1_500  # grow the WAL past what start-up left room for
            await client.publish(f"tablets/tab-{n:04d}/state", json.dumps(report), qos=1)


async def scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return await response.text()


class TestStateDiskFull:
    """A full state disk: the gateway stays up, says so once, and catches up by itself."""

    async def test_gateway_survives_and_stores_what_the_broker_kept(
        self, tmp_path, school_broker, academy_broker, academy_listener
    ):
        with small_tmpfs(tmp_path / "state", 24 * MB) as state:
            gateway = GatewayProcess(
                gateway_table(state, school_broker, academy_broker), tmp_path / "gw"
            )
            async with gateway:
                await gateway.wait_connected(30)
                filler = fill(state)
                await publish_reports(school_broker, 300, seq=1)

                assert await gateway.wait_for_line("state store cannot write", 30), (
                    "no log line saying the store is full"
                )
                status = await gateway.status()
                assert status is not None, "the admin API stopped answering"
                assert status["store"]["writable"] is False
                assert "full" in status["store"]["error"]
                assert "school_gateway_store_writable 0.0" in await scrape(gateway.http_port)

                def store_news() -> list[dict[str, Any]]:
                    return [
                        json.loads(m.payload)
                        for m in academy_listener.messages
                        if m.topic.endswith("/status") and b'"store"' in m.payload
                    ]

                assert await academy_listener.wait_for(
                    lambda: any(not n["store"]["writable"] for n in store_news()), 20
                )
                await publish_reports(school_broker, 300, seq=2)  # more arrive meanwhile
                status = await gateway.status()
                assert status is not None and status["store"]["writable"] is False
                assert gateway.running, "the gateway died on a full disk"

                filler.unlink()  # space returns: everything the broker kept is stored

                def stored_seqs() -> list[int]:
                    db = sqlite3.connect(state / DATABASE_FILE)
                    try:
                        return [row[0] for row in db.execute("SELECT report_seq FROM shadow")]
                    finally:
                        db.close()

                assert await wait_until(lambda: stored_seqs() == [2] * 300, 60), stored_seqs()
                status = await gateway.status()
                assert status is not None and status["store"]["writable"] is True
                assert gateway.count("state store cannot write") == 1
                assert gateway.saw("state store writes again")
                assert await academy_listener.wait_for(
                    lambda: bool(store_news()) and store_news()[-1]["store"]["writable"], 20
                )
                assert gateway.starts == 1 and gateway.running
