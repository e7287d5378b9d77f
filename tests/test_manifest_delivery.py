"""The cache manifest reaches a default box from the academy broker (issue 16 item 2).

``cache.manifest_url`` is empty by default: the academy publishes the signed
manifest, retained, on ``schools/<school>/manifest`` with ``academy send
--manifest``; ``cache import`` says why it skips each file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from gateway.academy.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE
from gateway.cli import main
from gateway.lab.config_file import write_config_file
from gateway.lab.waiting import wait_until
from tests.helpers import lab_tables, run_cli

APP = b"classroom app 2.5.1\n" * 5000


def manifest_file(path: Path, serial: int) -> Path:
    path.write_text(
        json.dumps(
            {
                "serial": serial,
                "items": [
                    {
                        "sha256": hashlib.sha256(APP).hexdigest(),
                        "size": len(APP),
                        "urls": ["http://127.0.0.1:9/classroom.apk"],
                        "name": "classroom-2.5.1.apk",
                        "kind": "apk",
                        "version": "2.5.1",
                    }
                ],
            }
        )
    )
    return path


class TestManifestFromTheAcademy:
    """A box with the default config learns items, and the USB import then works."""

    async def test_send_manifest_then_import(
        self, tmp_path, start_gateway, school_broker, academy_broker
    ):
        keys = tmp_path / "keys"
        await asyncio.to_thread(main, ["academy", "keygen", "--out", str(keys)])
        public = (keys / PUBLIC_KEY_FILE).read_text().strip()
        overrides = {"commands": {"academy_keys": {"academy-1": public}}}
        running = await start_gateway(overrides)
        gateway = running.gateway
        assert gateway.config.cache.manifest_url == ""  # the default
        tables = lab_tables(
            gateway.config.gateway.state_dir,
            school_port=school_broker.port,
            academy_port=academy_broker.port,
            overrides={
                **overrides,
                "http": {"host": "127.0.0.1", "port": gateway.config.http.port},
            },
        )
        config = write_config_file(tables, tmp_path / "gateway.toml")
        usb = tmp_path / "usb"
        usb.mkdir()
        (usb / "classroom.apk").write_bytes(APP)
        (usb / "notes.txt").write_text("hello")

        # No manifest yet: the import says why it did nothing, and fails.
        before = await run_cli("cache", "import", str(usb), "--config", str(config))
        assert before.returncode == 1, before.stdout + before.stderr
        report = json.loads(before.stdout)
        assert report["imported"] == []
        assert "no manifest has reached it yet" in report["note"]
        assert (
            f"{usb / 'notes.txt'}: its size, 5 bytes, is the size of nothing is wanted"
            in (report["skip_reasons"])
        )

        sent = await run_cli(
            "academy", "send", "--broker", f"127.0.0.1:{academy_broker.port}",
            "--school", "school-test", "--key", str(keys / PRIVATE_KEY_FILE),
            "--key-id", "academy-1", "--manifest", str(manifest_file(tmp_path / "m.json", 7)),
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert "sent manifest 7 to schools/school-test/manifest (retained)" in sent.stdout
        assert await wait_until(
            lambda: gateway.cache is not None and gateway.cache.manifest is not None, 10
        )
        assert gateway.cache is not None and gateway.cache.manifest is not None
        assert gateway.cache.manifest.serial == 7

        after = await run_cli("cache", "import", str(usb), "--config", str(config))
        assert after.returncode == 0, after.stdout + after.stderr
        report = json.loads(after.stdout)
        assert report["imported"] == [hashlib.sha256(APP).hexdigest()]
        assert report["skip_reasons"] == [
            f"{usb / 'notes.txt'}: its size, 5 bytes, is the size of no wanted item"
        ]

    async def test_retained_manifest_reaches_a_gateway_that_connects_later(
        self, tmp_path, start_gateway, academy_broker
    ):
        keys = tmp_path / "keys"
        await asyncio.to_thread(main, ["academy", "keygen", "--out", str(keys)])
        public = (keys / PUBLIC_KEY_FILE).read_text().strip()
        sent = await run_cli(
            "academy", "send", "--broker", f"127.0.0.1:{academy_broker.port}",
            "--school", "school-test", "--key", str(keys / PRIVATE_KEY_FILE),
            "--key-id", "academy-1", "--manifest", str(manifest_file(tmp_path / "m.json", 3)),
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        running = await start_gateway({"commands": {"academy_keys": {"academy-1": public}}})
        cache = running.gateway.cache
        assert await wait_until(lambda: cache is not None and cache.manifest is not None, 10)
        assert cache is not None and cache.manifest is not None and cache.manifest.serial == 3
        assert running.gateway.counters.get("cache_manifests_applied") == 1
