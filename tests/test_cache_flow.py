"""The update cache end to end: tablets -> LAN server -> cache -> real throttled origin.

Each test runs the real CacheService on real SQLite and files in tmp_path,
the real LAN aiohttp app on a loopback port, and gateway.lab.origin.Origin.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.errors import RejectedInput
from gateway.lab.origin import Origin
from gateway.lab.waiting import wait_until
from tests.cache_lab import MB, CacheLab, blob, digest


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    async with Origin() as running:
        yield running


@pytest.fixture
async def lab(tmp_path: Path, origin: Origin) -> AsyncIterator[CacheLab]:
    cache_lab = CacheLab(tmp_path, origin)
    yield cache_lab
    await cache_lab.stop()


class TestServingCachedItems:
    """A cached item is served with its hash as ETag, ranges, HEAD and its file name."""

    async def test_get_head_range_and_conditional(self, lab):
        await lab.start()
        data = blob(300_000, 1)
        item = lab.item("classroom-2.5.1.apk", data, kind="apk", version="2.5.1")
        await lab.publish([item])
        sha = item["sha256"]

        status, headers, body = await lab.get(sha)
        assert status == 200 and digest(body) == sha
        assert headers["ETag"] == f'"{sha}"'
        assert headers["Content-Length"] == str(len(data))
        assert headers["Content-Type"] == "application/vnd.android.package-archive"
        assert 'filename="classroom-2.5.1.apk"' in headers["Content-Disposition"]
        assert await wait_until(lambda: lab.service.lookup(sha).complete, 5)

        status, headers, body = await lab.get(sha)  # now from the disk
        assert status == 200 and body == data
        status, headers, body = await lab.get(sha, {"Range": "bytes=1000-1999"})
        assert status == 206 and body == data[1000:2000]
        assert headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
        status, _, body = await lab.get(sha, {"Range": "bytes=-10"})
        assert status == 206 and body == data[-10:]
        status, _, body = await lab.get(sha, {"If-None-Match": f'"{sha}"'})
        assert status == 304 and body == b""
        async with lab.session.head(f"{lab.base}/content/{sha}") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(data))
            assert await resp.read() == b""
        assert len(lab.origin.requests) == 1
        stats = await lab.service.stats()
        assert stats["origin_bytes"] == len(data)
        assert stats["lan_bytes_served"] == 2 * len(data) + 1000 + 10
        assert stats["uplink_bytes_saved"] == len(data) + 1010
        assert stats["hit_ratio"] == pytest.approx(3 / 4, abs=0.01)


class TestBadRequests:
    """Bad hashes, traversal attempts and bad ranges get a clear 4xx; the server keeps going."""

    async def test_clear_errors_and_no_crash(self, lab):
        await lab.start()
        data = blob(10_000, 2)
        item = lab.item("x.bin", data)
        await lab.publish([item])
        sha = item["sha256"]
        cases = [
            ("/content/" + "0" * 64, {}, 404, "unknown_item"),
            ("/content/not-a-hash", {}, 400, "bad_hash"),
            ("/content/..%2F..%2Fgateway.db", {}, 400, "bad_hash"),
            ("/content/%2e%2e%2f%2e%2e%2fetc%2fpasswd", {}, 400, "bad_hash"),
            (f"/content/{sha}", {"Range": "bytes=abc"}, 400, "bad_range"),
            (f"/content/{sha}", {"Range": "bytes=" + "9" * 50 + "-"}, 416, "range_not_satisfiable"),
            (f"/content/{sha}", {"Range": "bytes=0-1," * 150}, 400, "bad_range"),
            (f"/content/{sha}", {"Range": "bytes=99999999-"}, 416, "range_not_satisfiable"),
        ]
        for path, headers, expected, reason in cases:
            async with lab.session.get(lab.base + path, headers=headers) as resp:
                assert resp.status == expected, path
                assert (await resp.json())["error"] == reason, path
        for path in ("/content/../gateway.db", "/content/a/b", "/content/"):
            async with lab.session.get(lab.base + path) as resp:
                assert resp.status in (400, 404), path
        async with lab.session.get(f"{lab.base}/api/status") as resp:
            assert resp.status == 401  # the admin API still wants its token
        status, _, body = await lab.get(sha)
        assert status == 200 and body == data


class TestSingleFlight:
    """One upstream download serves every client, streaming from the first byte."""

    async def test_many_clients_one_download(self, lab):
        await lab.start()
        data = blob(3 * MB, 3)
        item = lab.item("os.img", data)
        await lab.publish([item])
        lab.origin.rate_bytes_per_s = 3 * MB  # about 1 s for the item
        sha = item["sha256"]
        first_bytes: list[float] = []
        started = time.monotonic()

        async def client() -> str:
            async with lab.session.get(f"{lab.base}/content/{sha}") as resp:
                assert resp.status == 200
                hasher = hashlib.sha256()
                first = True
                async for chunk in resp.content.iter_any():
                    if first:
                        first_bytes.append(time.monotonic() - started)
                        first = False
                    hasher.update(chunk)
                return hasher.hexdigest()

        early = [asyncio.create_task(client()) for _ in range(10)]
        assert await wait_until(
            lambda: lab.service.active(sha) is not None and lab.service.active(sha).received > MB,
            10,
        )
        late = [asyncio.create_task(client()) for _ in range(5)]  # join mid-download
        results = await asyncio.gather(*early, *late)
        assert results == [sha] * 15
        assert len(lab.origin.requests) == 1
        assert lab.origin.bytes_sent == len(data)
        assert lab.counters.get("cache_origin_bytes") == len(data)
        # Streaming: the early clients had bytes long before the item was complete.
        assert min(first_bytes) < max(first_bytes)


class TestOriginFaults:
    """Cut connections resume by Range; corrupt bytes are never served as complete."""

    async def test_cut_mid_download_resumes_with_range(self, lab):
        await lab.start()
        data = blob(2 * MB, 4)
        item = lab.item("app.apk", data)
        await lab.publish([item])
        lab.origin.cut_after(700_000, times=2)
        status, _, body = await lab.get(item["sha256"])
        assert status == 200 and digest(body) == item["sha256"]
        ranges = [r.range for r in lab.origin.requests]
        assert ranges[0] is None
        assert len(ranges) == 3 and all(r and r.startswith("bytes=") for r in ranges[1:])
        assert int(ranges[1].removeprefix("bytes=").rstrip("-")) > 0
        assert lab.origin.bytes_sent <= len(data) + 2 * 64 * 1024
        assert await wait_until(lambda: lab.service.lookup(item["sha256"]).complete, 5)

    async def test_corrupt_origin_is_discarded_counted_and_clients_cut(self, lab):
        await lab.start()
        data = blob(MB, 5)
        item = lab.item("bad.apk", data)
        await lab.publish([item])
        lab.origin.corrupt = True
        sha = item["sha256"]

        async def client() -> bytes:
            async with lab.session.get(f"{lab.base}/content/{sha}") as resp:
                assert resp.status == 200
                return await resp.read()

        outcomes = await asyncio.gather(*(client() for _ in range(3)), return_exceptions=True)
        for outcome in outcomes:
            assert isinstance(outcome, aiohttp.ClientPayloadError), outcome
        assert lab.counters.get("cache_hash_mismatches") == 1
        assert not lab.service.lookup(sha).complete
        assert not lab.service.paths.part(sha).exists()
        assert not lab.service.paths.object(sha).exists()

        lab.origin.corrupt = False  # the origin is fixed: the next request gets the real item
        status, _, body = await lab.get(sha)
        assert status == 200 and digest(body) == sha

    async def test_unreachable_origin_gives_503_with_retry_after(self, lab):
        await lab.start(retry_after_s=42)
        item = lab.item("x.apk", blob(100_000, 6))
        await lab.origin.stop()
        await lab.publish([item])
        status, headers, body = await lab.get(item["sha256"])
        assert status == 503
        assert headers["Retry-After"] == "42"
        assert json.loads(body)["error"] == "origin_unreachable"
        await lab.origin.start()  # back: the cache recovers without a restart
        assert await wait_until(lambda: lab.service.active(item["sha256"]) is None, 15)
        status, _, body = await lab.get(item["sha256"])
        assert status == 200 and digest(body) == item["sha256"]


class TestQuota:
    """At the quota, unpinned items leave least recently used first; pinned ones stay."""

    async def test_lru_eviction_of_unpinned_only(self, lab):
        await lab.start(quota_bytes=2 * MB + MB // 2, min_free_bytes=0)
        a, b, x, y, z = (lab.item(f"{n}.bin", blob(MB, 10 + i)) for i, n in enumerate("abxyz"))
        await lab.publish([a, b])
        for item in (a, b, a):  # b is now the least recently used
            status, _, _ = await lab.get(item["sha256"])
            assert status == 200
            assert await wait_until(lambda i=item: lab.service.lookup(i["sha256"]).complete, 5)
        await lab.publish([x, y])  # a and b stay on disk, unpinned

        status, _, _ = await lab.get(x["sha256"])
        assert status == 200
        assert lab.service.lookup(b["sha256"]) is None  # evicted: LRU
        assert lab.service.lookup(a["sha256"]) is not None
        assert (await lab.get(b["sha256"]))[0] == 404
        assert await wait_until(lambda: lab.service.lookup(x["sha256"]).complete, 5)

        assert (await lab.get(y["sha256"]))[0] == 200
        assert lab.service.lookup(a["sha256"]) is None
        assert await wait_until(lambda: lab.service.lookup(y["sha256"]).complete, 5)

        await lab.publish([x, y, z])  # all pinned: nothing may leave
        status, _, body = await lab.get(z["sha256"])
        assert status == 507
        assert "does not fit" in json.loads(body)["detail"]
        assert (await lab.get(x["sha256"]))[0] == 200
        assert lab.counters.get("cache_evictions") == 2

    async def test_item_larger_than_quota_is_refused_with_reason(self, lab):
        await lab.start(quota_bytes=MB)
        big = lab.item("huge.img", blob(MB + 1, 20))
        await lab.publish([big])
        status, _, body = await lab.get(big["sha256"])
        assert status == 507
        assert "larger than the cache quota" in json.loads(body)["detail"]
        assert lab.origin.requests == type(lab.origin.requests)()


class TestManifestAndPrefetch:
    """Signed manifests pin and prefetch; forged and stale ones are refused."""

    async def test_prefetch_in_window_and_rejections(self, lab):
        await lab.start(offpeak_windows=["00:00-24:00"], prefetch_bytes_per_s=4 * MB)
        items = [lab.item(f"p{i}.bin", blob(300_000, 30 + i)) for i in range(3)]
        await lab.publish(items)
        assert await wait_until(
            lambda: all(lab.service.lookup(i["sha256"]).complete for i in items), 15
        )
        assert len(lab.origin.requests) == 3

        forged = json.loads(lab.envelope(items[:1]))
        forged["signature"] = base64.b64encode(b"\0" * 64).decode()
        with pytest.raises(RejectedInput):
            await lab.service.apply_manifest(json.dumps(forged).encode())
        with pytest.raises(RejectedInput):
            await lab.service.apply_manifest(lab.envelope([], serial=0))
        assert lab.counters.get("cache_manifest_rejected", reason="bad_signature") == 1
        assert lab.counters.get("cache_manifest_rejected", reason="stale") == 1
        assert all(lab.service.lookup(i["sha256"]).pinned for i in items)

    async def test_manifest_fetched_from_url_survives_restart(self, lab, tmp_path):
        item_data = blob(50_000, 40)
        placeholder = lab.item("m.bin", item_data)
        lab.origin.add("manifest.json", lab.envelope([placeholder]))
        await lab.start(manifest_url=lab.origin.url("manifest.json"))
        # Applied means stored too: the service sets its manifest after the write.
        assert await wait_until(lambda: lab.service.manifest is not None, 10)
        assert lab.service.lookup(placeholder["sha256"]) is not None
        await lab.stop()
        lab.origin.blobs.pop("manifest.json")
        await lab.start()
        assert lab.service.manifest is not None and lab.service.manifest.serial == 1
        status, _, body = await lab.get(placeholder["sha256"])
        assert status == 200 and body == item_data


class TestSeedingAndStats:
    """A USB folder seeds verified items; stats count tablets holding each item."""

    async def test_import_then_serve_without_origin(self, lab, tmp_path):
        await lab.start()
        good, other = blob(200_000, 50), blob(200_000, 51)
        item = lab.item("seeded.apk", good)
        await lab.publish([item])
        usb = tmp_path / "usb"
        (usb / "apps").mkdir(parents=True)
        (usb / "apps" / "seeded.apk").write_bytes(good)
        (usb / "same-size-wrong.bin").write_bytes(other)
        (usb / "small.txt").write_bytes(b"hello")
        report = await lab.service.import_directory(usb)
        assert sorted(report.verified) == [item["sha256"]]
        assert report.mismatched == [str(usb / "same-size-wrong.bin")]
        assert report.skipped == 1
        await lab.origin.stop()
        status, _, body = await lab.get(item["sha256"])
        assert status == 200 and body == good
        assert lab.counters.get("cache_hits") == 1

        now = time.time()
        for n, content in enumerate([[item["sha256"]], [item["sha256"].upper()], []]):
            state = json.dumps({"device_id": f"tab-{n}", "content": content})
            await lab.db.execute(
                "INSERT INTO shadow (device_id, state, report_seq, first_seen, last_seen) "
                "VALUES (?, ?, 1, ?, ?)",
                (f"tab-{n}", state, now, now),
            )
        stats = await lab.service.stats()
        [row] = stats["items"]
        assert row["tablets_holding"] == 2 and row["complete"] and row["pinned"]
        assert lab.service.paths.object(item["sha256"]).read_bytes() == good

    async def test_import_wins_over_a_download_retrying_through_an_outage(self, lab, tmp_path):
        """The rural case: the uplink is down, the prefetch keeps retrying, a USB
        stick brings the item. The import takes it; the download stops."""
        await lab.start(origin_give_up_s=600.0)
        data = blob(300_000, 52)
        item = lab.item("outage.apk", data)
        sha = item["sha256"]
        await lab.origin.stop()
        await lab.publish([item])
        status, _, _ = await lab.get(sha)
        assert status == 503  # the tablet is told to come back later...
        assert lab.service.active(sha) is not None  # ...while the download retries
        usb = tmp_path / "usb"
        usb.mkdir()
        (usb / "outage.apk").write_bytes(data)

        report = await lab.service.import_directory(usb)

        assert sorted(report.verified) == [sha], report.as_dict()
        assert not report.failed and report.wanted == 1
        assert lab.service.active(sha) is None
        assert lab.service.lookup(sha).complete
        assert not lab.service.paths.part(sha).exists()
        assert not list(lab.service.paths.partial.iterdir())
        status, _, body = await lab.get(sha)
        assert status == 200 and body == data
        assert lab.counters.get("cache_items_imported") == 1


class TestDiskErrors:
    """A cached file that cannot be read is logged, counted, and the tablet cut off."""

    async def test_unreadable_file_is_counted_and_the_transfer_cut(self, lab, caplog):
        await lab.start()
        data = blob(50_000, 9)
        item = lab.item("x.bin", data)
        await lab.publish([item])
        sha = item["sha256"]
        status, _, body = await lab.get(sha)
        assert status == 200 and body == data
        assert await wait_until(lambda: lab.service.lookup(sha).complete, 5)
        stored = lab.service.paths.object(sha)
        stored.unlink()
        stored.symlink_to("/proc/self/mem")  # opens, but reading at offset 0 fails (EIO)
        with (
            caplog.at_level(logging.ERROR, logger="gateway.cache.http"),
            pytest.raises(aiohttp.ClientPayloadError),
        ):
            await lab.get(sha)
        assert lab.counters.get("cache_disk_read_errors") == 1
        assert f"cannot read {stored}" in caplog.text
        status, _, body = await lab.get(f"{'0' * 64}")  # the server keeps going
        assert status == 404


def protocol_doc() -> str:
    return (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()


class TestTraversal:
    """A path that tries to leave /content/ gets what docs/protocol.md says, never a file."""

    async def raw_get(self, lab: CacheLab, path: str) -> tuple[int, bytes]:
        host, port = lab.base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET {path} HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    async def test_dot_dot_is_404_and_encoded_is_400_as_documented(self, lab):
        await lab.start()
        secret = lab.service.paths.root.parent / "gateway.toml"
        secret.write_text("not for tablets")
        status, body = await self.raw_get(lab, "/content/../gateway.toml")
        assert status == 404 and b"not for tablets" not in body
        status, body = await self.raw_get(lab, "/content/..%2F..%2Fgateway.toml")
        assert status == 400 and json.loads(body)["error"] == "bad_hash"
        assert "`..` segment is resolved before routing" in protocol_doc()
