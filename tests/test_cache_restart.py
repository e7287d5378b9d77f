"""The gateway process killed mid-download resumes the item after a restart.

Runs ``python -m gateway run`` as a real subprocess (real brokers, real
origin), SIGKILLs it while a tablet is downloading, starts it again and
checks the download resumed by Range and the item verified. Also seeds the
cache with ``python -m gateway cache import DIR`` against the stopped gateway.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.cache.manifest import sign_manifest
from gateway.lab.mosquitto import free_port
from gateway.lab.origin import Origin
from gateway.lab.waiting import wait_until

MB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent


def blob(size: int, seed: int) -> bytes:
    return b"".join(hashlib.sha256(f"{seed}-{i}".encode()).digest() for i in range(size // 32 + 1))[
        :size
    ]


def write_config(
    tmp_path: Path, school_port: int, academy_port: int, manifest_url: str, key_id: str
) -> tuple[Path, int]:
    http_port = free_port()
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[gateway]
school_id = "school-test"
gateway_id = "gw-test"
state_dir = "{tmp_path / "state"}"

[school_broker]
host = "127.0.0.1"
port = {school_port}
lab_plain_listener = true

[academy_broker]
host = "127.0.0.1"
port = {academy_port}

[http]
host = "127.0.0.1"
port = {http_port}

[cache]
offpeak_windows = []
manifest_url = "{manifest_url}"

[commands.academy_keys]
"{key_id}" = "{key_id}"
"""
    )
    return path, http_port


async def start_gateway(config: Path, http_port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "run",
        "--config",
        str(config),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with aiohttp.ClientSession() as session:

        async def answering() -> bool:
            try:
                async with session.get(f"http://127.0.0.1:{http_port}/content/{'0' * 64}") as r:
                    return r.status == 404
            except aiohttp.ClientError:
                return False

        deadline = time.monotonic() + 20
        while not await answering():
            assert process.returncode is None, "gateway exited at start-up"
            assert time.monotonic() < deadline, "gateway did not start"
            await asyncio.sleep(0.1)
    return process


@pytest.mark.slow
class TestKilledMidDownload:
    """SIGKILL during a download: after restart the partial file resumes by Range."""

    async def test_resumes_after_sigkill(self, tmp_path, school_broker, academy_broker):
        private = Ed25519PrivateKey.generate()
        key_id = base64.b64encode(
            private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        ).decode()
        data = blob(3 * MB, 1)
        sha = hashlib.sha256(data).hexdigest()
        async with Origin(rate_bytes_per_s=MB) as origin:
            url = origin.add("os.img", data)
            manifest = {
                "type": "cache_manifest",
                "serial": 1,
                "issued_at": time.time(),
                "items": [
                    {
                        "sha256": sha,
                        "size": len(data),
                        "urls": [url],
                        "name": "os.img",
                        "kind": "os",
                    }
                ],
            }
            origin.add("manifest.json", sign_manifest(manifest, private, key_id))
            config, http_port = write_config(
                tmp_path,
                school_broker.port,
                academy_broker.port,
                origin.url("manifest.json"),
                key_id,
            )
            content_url = f"http://127.0.0.1:{http_port}/content/{sha}"
            partial = tmp_path / "state" / "cache" / "partial" / sha

            gateway = await start_gateway(config, http_port)
            async with aiohttp.ClientSession() as session:

                async def download() -> bytes:
                    async with session.get(content_url) as resp:
                        return await resp.read()

                # The manifest is fetched at start-up; wait until the item is known.
                async def known() -> bool:
                    async with session.head(content_url) as resp:
                        return resp.status == 200

                deadline = time.monotonic() + 10
                while not await known():
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                first = asyncio.create_task(download())
                assert await wait_until(
                    lambda: partial.exists() and partial.stat().st_size > MB, 15
                )
                os.kill(gateway.pid, signal.SIGKILL)
                await gateway.wait()
                with pytest.raises(aiohttp.ClientPayloadError):
                    await first  # the tablet saw its download cut, not a short "complete" file
                held = partial.stat().st_size
                sent_before_restart = origin.sent_by_name["os.img"]
                requests_before_restart = len(origin.requests)

                origin.rate_bytes_per_s = 4 * MB
                gateway = await start_gateway(config, http_port)
                stored = tmp_path / "state" / "cache" / "objects" / sha
                try:
                    body = await download()
                    # The last byte goes out once the hash verified; the file is
                    # renamed into place just after: wait for it, then stop.
                    assert await wait_until(stored.exists, 10)
                finally:
                    gateway.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(gateway.wait(), 20)
            assert hashlib.sha256(body).hexdigest() == sha
            item_requests = [r for r in origin.requests if r.name == "os.img"]
            assert item_requests[0].range is None
            after_restart = [
                r for r in list(origin.requests)[requests_before_restart:] if r.name == "os.img"
            ]
            resumed_from = int(after_restart[0].range.removeprefix("bytes=").rstrip("-"))
            assert resumed_from == held > MB
            assert origin.sent_by_name["os.img"] - sent_before_restart == len(data) - held
            assert stored.exists()
            assert not partial.exists()


class TestImportCommand:
    """``python -m gateway cache import DIR`` seeds a stopped gateway's cache."""

    async def test_cli_import_against_the_store(self, tmp_path):
        private = Ed25519PrivateKey.generate()
        key_id = base64.b64encode(
            private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        ).decode()
        data = blob(100_000, 2)
        sha = hashlib.sha256(data).hexdigest()
        async with Origin() as origin:
            url = origin.add("lesson.pdf", data)
            manifest = {
                "type": "cache_manifest",
                "serial": 1,
                "issued_at": time.time(),
                "items": [{"sha256": sha, "size": len(data), "urls": [url]}],
            }
            origin.add("manifest.json", sign_manifest(manifest, private, key_id))
            config, _ = write_config(
                tmp_path, free_port(), free_port(), origin.url("manifest.json"), key_id
            )
            # Store the manifest as a running gateway would have (through the service).
            from gateway.cache.service import CacheService
            from gateway.config import load_config
            from gateway.metrics import Counters
            from gateway.signed import load_public_keys
            from gateway.store.database import Database

            cfg = load_config(config)
            db = await Database.open(cfg.gateway.state_dir / "gateway.db")
            keys = load_public_keys(cfg.commands.academy_keys)
            service = CacheService(cfg, db, Counters(), academy_keys=keys)
            await service.open()
            await service.apply_manifest(origin.blobs["manifest.json"])
            await db.close()
        usb = tmp_path / "usb"
        usb.mkdir()
        (usb / "lesson.pdf").write_bytes(data)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "cache",
            "import",
            str(usb),
            "--config",
            str(config),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        report = json.loads(out)
        assert report["imported"] == [sha]
        assert report["via"] == "store (gateway not running)"
        assert (tmp_path / "state" / "cache" / "objects" / sha).read_bytes() == data
