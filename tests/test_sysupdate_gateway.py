"""System updates on a running gateway: the bundle comes through the cache, the request
is written in the window only, and every outcome goes upstream in a summary."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.cache.manifest import sign_manifest
from gateway.lab.origin import Origin
from gateway.lab.waiting import wait_until
from gateway.status_view import render_status
from gateway.sysupdate.files import OUTCOME, READY, REQUEST, parse_request, update_dir
from gateway.sysupdate.outcomes import outcome, render_outcomes
from gateway.sysupdate.system import current_boot_id
from tests.helpers import academy_view, families

COMPAT = "school-gateway-amd64"
BUNDLE = b"pretend RAUC bundle of version 2\n" * 4000
ARM_BUNDLE = b"a bundle for another kind of box\n" * 3000


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    async with Origin() as running:
        yield running


def system_files(tmp_path: Path, version: str = "1") -> dict[str, str]:
    (tmp_path / "system-version").write_text(f"{version}\n")
    (tmp_path / "system.conf").write_text(f"[system]\ncompatible={COMPAT}\nbootloader=grub\n")
    return {
        "version_file": str(tmp_path / "system-version"),
        "rauc_system_conf": str(tmp_path / "system.conf"),
    }


class Academy:
    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public = base64.b64encode(raw).decode()
        self.serial = 0

    def manifest(self, items: list[dict[str, Any]]) -> bytes:
        self.serial += 1
        body = {"type": "cache_manifest", "serial": self.serial, "issued_at": time.time()}
        return sign_manifest({**body, "items": items}, self.private, "academy-1")


def system_item(origin: Origin, name: str, data: bytes, compatible: str) -> dict[str, Any]:
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "urls": [origin.add(name, data)],
        "name": name,
        "kind": "system",
        "version": "2",
        "compatible": compatible,
    }


class TestBundleThroughTheCache:
    """The box fetches its own bundle once, leaves other boxes' alone, and asks root in time."""

    async def test_request_written_in_the_window_and_outcomes_reported(
        self, tmp_path: Path, origin: Origin, start_gateway: Any, academy_listener: Any
    ) -> None:
        academy = Academy()
        running = await start_gateway(
            {
                "commands": {"academy_keys": {"academy-1": academy.public}},
                "cache": {"offpeak_windows": ["00:00-24:00"]},
                "system_update": {
                    **system_files(tmp_path),
                    "window": "00:00-24:00",
                    "check_interval_s": 1,
                },
            }
        )
        gateway = running.gateway
        state = update_dir(gateway.config.gateway.state_dir)
        # The gateway of this boot said READY: the health check's proof.
        assert json.loads((state / READY).read_text())["boot_id"] == current_boot_id()

        ours = system_item(origin, "sg-amd64-2.raucb", BUNDLE, COMPAT)
        theirs = system_item(origin, "sg-arm64-2.raucb", ARM_BUNDLE, "school-gateway-arm64")
        await gateway.cache.apply_manifest(academy.manifest([ours, theirs]))

        assert await wait_until((state / REQUEST).exists, 20)
        request = parse_request((state / REQUEST).read_bytes())
        assert (request.sha256, request.version, request.compatible) == (
            ours["sha256"],
            "2",
            COMPAT,
        )
        bundle = await asyncio.to_thread(Path(request.bundle).read_bytes)
        assert bundle == BUNDLE  # complete, in the cache
        # Fetched once; the other box's bundle never left the origin.
        assert [r.name for r in origin.requests] == ["sg-amd64-2.raucb"]
        assert gateway.cache.lookup(theirs["sha256"]).complete is False  # type: ignore[union-attr]

        # Root's helper took the request and recorded its outcome: it goes upstream at once.
        (state / REQUEST).unlink()
        record = (outcome("2", ours["sha256"], "installed", at=time.time(), slot="B"),)
        (state / OUTCOME).write_bytes(render_outcomes(record))

        def reported() -> list[dict[str, Any]]:
            return [
                m["body"]["system"]
                for m in academy_view(academy_listener)
                if m["kind"] == "summary" and m["body"]["system"]["last_update"]
            ]

        assert await academy_listener.wait_for(lambda: bool(reported()), 20)
        system = reported()[-1]
        assert system["version"] == "1" and system["compatible"] == COMPAT
        assert system["last_update"]["outcome"] == "installed"
        assert system["last_update"]["slot"] == "B"

        status = await gateway.status()
        assert status["system"]["last_update"]["outcome"] == "installed"
        text = render_status({**status, "running": True})
        assert "system: version 1 on slot ? (school-gateway-amd64)" in text
        assert "last update: version 2 INSTALLED (slot B)" in text

        # And for a scraper: what runs, and the last outcome with when.
        http = gateway.config.http
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{http.host}:{http.port}/metrics") as response,
        ):
            scraped = families(await response.read())
        assert scraped["school_gateway_system_info"][2] == [({"version": "1", "slot": ""}, 1.0)]
        assert scraped["school_gateway_system_last_update_timestamp_seconds"][2] == [
            ({"version": "2", "outcome": "installed"}, record[0].at)
        ]

    async def test_outside_the_window_no_request(
        self, tmp_path: Path, origin: Origin, start_gateway: Any
    ) -> None:
        academy = Academy()
        hour = time.localtime().tm_hour
        closed = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"
        running = await start_gateway(
            {
                "commands": {"academy_keys": {"academy-1": academy.public}},
                "cache": {"offpeak_windows": ["00:00-24:00"]},
                "system_update": {
                    **system_files(tmp_path),
                    "window": closed,
                    "check_interval_s": 1,
                },
            }
        )
        gateway = running.gateway
        ours = system_item(origin, "sg-amd64-2.raucb", BUNDLE, COMPAT)
        await gateway.cache.apply_manifest(academy.manifest([ours]))
        system = gateway._flows.system

        assert await wait_until(
            lambda: system.decision is not None and system.decision.rule == "window", 20
        )
        assert f"waiting for the maintenance window {closed}" in system.decision.reason  # type: ignore[union-attr]
        assert not (update_dir(gateway.config.gateway.state_dir) / REQUEST).exists()
