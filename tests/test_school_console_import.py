"""The console's USB import over real HTTP: progress, then the hash check's verdict."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.commands.local import LocalActions
from gateway.lab.mosquitto import free_port
from gateway.lab.origin import Origin
from gateway.school_console.accounts import IT_CONTACT, ConsoleAccounts
from gateway.school_console.console import install_console
from gateway.school_console.services import BoxServices
from gateway.web.passwords import ScryptCost, hash_password
from gateway.web.server import build_app
from tests.cache_lab import CacheLab, blob

PASSWORD = "usb-import-password"


@pytest.fixture
async def content_origin() -> AsyncIterator[Origin]:
    async with Origin() as running:
        yield running


class Link:
    """What the console reads of a broker link (this test is about the cache)."""

    is_connected = True


async def test_usb_import_from_the_updates_page(tmp_path: Path, content_origin: Origin) -> None:
    lab = CacheLab(tmp_path, content_origin)
    await lab.start()
    try:
        good, other = blob(150_000, 60), blob(150_000, 61)
        item = lab.item("manuel-cm2.pdf", good)
        await lab.publish([item])
        stick = tmp_path / "media" / "CLE-USB"
        stick.mkdir(parents=True)
        (stick / "manuel-cm2.pdf").write_bytes(good)
        (stick / "copie-abimee.pdf").write_bytes(other)  # same size, wrong bytes

        config = lab.service.config
        config = dataclasses.replace(
            config,
            console=dataclasses.replace(config.console, import_roots=(str(tmp_path / "media"),)),
        )
        accounts = ConsoleAccounts(lab.db)
        await accounts.create(
            "info", IT_CONTACT, hash_password(PASSWORD, ScryptCost(log2_n=10)), created_by="t"
        )
        services = BoxServices(
            config=config,
            db=lab.db,
            academy_link=Link(),
            school_link=Link(),
            outbox_budget_bytes=1_000_000,
            last_summary_acked=lambda: None,
            local_actions=LocalActions(
                lab.db,
                school_id="school-test",
                max_unfinished=10,
                on_accepted=lambda _d: None,
                on_committed=lambda: None,
            ),
            cache=lab.service,
        )

        async def status() -> dict[str, Any]:
            return {}

        app = build_app(status, "token", None)
        install_console(app, services)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        base = f"http://127.0.0.1:{port}"
        try:
            jar = aiohttp.CookieJar(unsafe=True)
            headers = {"Accept-Language": "fr"}
            async with aiohttp.ClientSession(cookie_jar=jar, headers=headers) as client:
                async with client.get(f"{base}/signin") as r:
                    token = re.search(r'name="csrf_token" value="([^"]+)"', await r.text())
                assert token
                async with client.post(
                    f"{base}/signin",
                    data={"name": "info", "password": PASSWORD, "csrf_token": token[1]},
                ) as r:
                    page = await r.text()
                csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
                assert csrf
                async with client.post(
                    f"{base}/updates/import", data={"folder": "/etc", "csrf_token": csrf[1]}
                ) as r:
                    assert r.status == 400  # only under console.import_roots
                async with client.post(
                    f"{base}/updates/import", data={"folder": str(stick), "csrf_token": csrf[1]}
                ) as r:
                    assert r.status == 200 and "Importer depuis une clé USB" in await r.text()
                deadline = time.monotonic() + 30
                while True:
                    async with client.get(f"{base}/updates") as r:
                        text = await r.text()
                    if "Import terminé." in text:
                        break
                    assert time.monotonic() < deadline, "the import did not finish"
                    await asyncio.sleep(0.1)
                assert "2 fichiers examinés, 1 vérifiés et importés, 1 refusés" in text
                assert "copie-abimee.pdf" in text

                # A tablet known only by its presence (no report yet) is listed too.
                await lab.db.execute(
                    "INSERT INTO shadow (device_id, state, report_seq, group_name, first_seen, "
                    "last_seen, online) VALUES ('tab-new', '{}', 0, '', 0, 0, 1)"
                )
                for path in ("/tablets", "/tablets/tab-new"):
                    async with client.get(f"{base}{path}") as r:
                        assert r.status == 200 and "tab-new" in await r.text(), path
        finally:
            await runner.cleanup()
        assert lab.service.lookup(item["sha256"]).complete
    finally:
        await lab.stop()
