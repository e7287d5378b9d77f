"""The academy console in a real Chromium, over two real schools.

Set-up (once for the module): a private PostgreSQL, the academy broker, two
schools each with its own Mosquitto, a real gateway process enrolled with
the academy's key, and six simulated tablets of group class-01; an ingest
worker and the console on loopback. What a person does: sign in, see the
schools, open one and its tablets, send "lock" to class-01 in both schools
and watch every target reach done. And what they must not be able to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.academy.config import AcademyConfig, academy_config_from_mapping
from gateway.academy.console.accounts import set_account
from gateway.academy.console.app import build_app
from gateway.academy.ingest.worker import IngestWorker
from gateway.academy.signing import generate_key_pair
from gateway.academy.store.database import create_pool, migrate
from gateway.lab.academy_schools import SchoolSite, start_schools
from gateway.lab.mosquitto import STAND_IN_ACADEMY_CONFIG, MosquittoProcess, free_port
from gateway.lab.postgres import PostgresCluster
from gateway.sysupdate.files import OUTCOME, update_dir, write_atomically
from gateway.sysupdate.outcomes import outcome, render_outcomes
from tests.browser import axe_check

pytestmark = pytest.mark.asyncio(loop_scope="module")

PASSWORD = "correct horse battery"
KEY_ID = "academy-test"
TABLETS = 6


@dataclass
class Academy:
    url: str
    dsn: str
    config: AcademyConfig
    schools: list[SchoolSite]


async def wait_for_value(dsn: str, query: str, expected: Any, within_s: float) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        value = await conn.fetchval(query)
        while value != expected and loop.time() < deadline:
            await asyncio.sleep(0.1)
            value = await conn.fetchval(query)
        return value
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def academy(
    postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Academy]:
    work = tmp_path_factory.mktemp("academy-console")
    admin = await asyncpg.connect(postgres.dsn())
    await admin.execute("CREATE DATABASE academy_console")
    await admin.close()
    dsn = postgres.dsn("academy_console")
    await migrate(dsn)
    key_path, public = generate_key_pair(work / "keys")
    broker = MosquittoProcess(work / "academy-broker", STAND_IN_ACADEMY_CONFIG)
    await broker.start()
    port = free_port()
    config = academy_config_from_mapping(
        {
            "database": {"dsn": dsn},
            "broker": {"host": broker.host, "port": broker.port},
            "ingest": {"batch_window_s": 0.02},
            "console": {
                "host": "127.0.0.1",
                "port": port,
                "key_file": str(key_path),
                "key_id": KEY_ID,
                "secure_cookies": False,
            },
        },
        source=Path("<test>"),
    )
    conn = await asyncpg.connect(dsn)
    for name, role in (("olga", "operator"), ("victor", "viewer"), ("ada", "admin")):
        await set_account(conn, name, role, PASSWORD)
    await conn.close()
    worker = IngestWorker(config, 1)
    worker_task = asyncio.create_task(worker.run(), name="ingest")
    await asyncio.wait_for(worker.link.connected.wait(), 20)
    schools = await start_schools(work, broker.port, {KEY_ID: public}, count=2, tablets=TABLETS)
    pool = await create_pool(dsn, size=4)
    runner = web.AppRunner(build_app(config, pool))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        assert (
            await wait_for_value(dsn, "SELECT count(*) FROM tablets", 2 * TABLETS, 60)
            == 2 * TABLETS
        )
        yield Academy(f"http://127.0.0.1:{port}", dsn, config, schools)
    finally:
        await runner.cleanup()
        await pool.close()
        for site in schools:
            await site.stop()
        worker_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task
        await broker.stop()


def _client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


async def sign_in(client: aiohttp.ClientSession, url: str, name: str, password: str) -> int:
    async with client.get(f"{url}/signin") as page:
        token = _csrf(await page.text())
    async with client.post(
        f"{url}/signin",
        data={"name": name, "password": password, "csrf_token": token, "next": "/"},
        allow_redirects=False,
    ) as response:
        return response.status


class TestWhatPeopleMayNotDo:
    """Roles, CSRF and passwords, over HTTP."""

    async def test_a_wrong_password_opens_no_session(self, academy: Academy) -> None:
        async with _client() as client:
            assert await sign_in(client, academy.url, "olga", "not her password") == 401
            async with client.get(f"{academy.url}/", allow_redirects=False) as r:
                assert r.status == 303
        failed = await wait_for_value(
            academy.dsn, "SELECT count(*) FROM audit_log WHERE action = 'signin.failed'", 1, 5
        )
        assert failed >= 1

    async def test_a_viewer_gets_no_send_form_and_a_forged_post_gets_403(
        self, academy: Academy
    ) -> None:
        async with _client() as client:
            assert await sign_in(client, academy.url, "victor", PASSWORD) == 303
            async with client.get(f"{academy.url}/commands") as page:
                html = await page.text()
            assert 'action="/commands/preview"' not in html
            order = {
                "csrf_token": _csrf(html),
                "action": "lock",
                "schools": "school-01",
                "target": "all",
                "ttl": "1h",
            }
            async with client.post(f"{academy.url}/commands", data=order) as r:
                assert r.status == 403
            async with client.get(f"{academy.url}/accounts") as r:
                assert r.status == 403
        assert await wait_for_value(academy.dsn, "SELECT count(*) FROM commands", 0, 1) == 0

    async def test_a_post_without_the_csrf_token_gets_403(self, academy: Academy) -> None:
        async with _client() as client:
            assert await sign_in(client, academy.url, "olga", PASSWORD) == 303
            order = {"action": "lock", "schools": "school-01", "target": "all", "ttl": "1h"}
            async with client.post(f"{academy.url}/commands", data=order) as r:
                assert r.status == 403
        assert await wait_for_value(academy.dsn, "SELECT count(*) FROM commands", 0, 1) == 0

    async def test_the_json_api_answers_under_the_same_sign_in(self, academy: Academy) -> None:
        async with _client() as client:
            async with client.get(f"{academy.url}/api/overview", allow_redirects=False) as r:
                assert r.status == 303
            assert await sign_in(client, academy.url, "victor", PASSWORD) == 303
            async with client.get(f"{academy.url}/api/overview") as r:
                body = await r.json()
            assert sorted(s["school_id"] for s in body["schools"]) == ["school-01", "school-02"]
            async with client.get(f"{academy.url}/api/schools/school-01") as r:
                school = await r.json()
            assert len(school["tablets"]) == TABLETS
            # Each gateway's system block came in its summaries (a dev host: no RAUC).
            (gateway,) = school["gateways"]
            assert gateway["system"]["version"] == "unknown"
            assert gateway["system"]["last_update"] is None


class TestSystemUpdateAtASchool:
    """A school's box rolled back a system update: its page says so, in French."""

    async def test_the_outcome_travels_up_and_reads_in_french(self, academy: Academy) -> None:
        site = academy.schools[1]  # school-02: the JSON API test expects none at school-01
        assert site.gateway is not None
        rolled_back = outcome(
            "3", "ab" * 32, "rolled-back", at=time.time(), reason="booted slot A", slot="A"
        )
        folder = update_dir(site.gateway.state_dir)
        await asyncio.to_thread(write_atomically, folder / OUTCOME, render_outcomes((rolled_back,)))
        query = (
            "SELECT count(*) FROM gateways WHERE school_id = 'school-02' "
            "AND summary::jsonb -> 'system' -> 'last_update' ->> 'outcome' = 'rolled-back'"
        )
        assert await wait_for_value(academy.dsn, query, 1, 30) == 1
        async with _client() as client:
            assert await sign_in(client, academy.url, "victor", PASSWORD) == 303
            for language, words in (
                ("fr", "Version 3 : retour au système précédent"),
                ("en", "Version 3: rolled back to the previous system"),
            ):
                async with client.get(f"{academy.url}/schools/school-02?lang={language}") as r:
                    html = await r.text()
                shown = re.search(r'data-outcome="rolled-back">([^<]*)<', html)
                assert shown is not None, html
                assert shown.group(1) == words
                assert "booted slot A" in html


async def test_in_chromium_sign_in_see_schools_and_lock_a_group_in_two_schools(
    academy: Academy, browser: Any
) -> None:
    """The operator's afternoon, in French, checked by axe-core on every page."""
    context = await browser.new_context(locale="fr-FR")
    context.set_default_timeout(20_000)
    page = await context.new_page()
    await page.goto(f"{academy.url}/")
    await page.get_by_label("Identifiant").fill("olga")
    await page.get_by_label("Mot de passe").fill(PASSWORD)
    await page.get_by_role("button", name="Se connecter").click()
    await page.wait_for_url(f"{academy.url}/")
    await page.get_by_role("link", name="school-01").wait_for()
    await page.get_by_role("link", name="school-02").wait_for()
    await axe_check(page)

    await page.get_by_role("link", name="school-01").click()
    await page.wait_for_url(f"{academy.url}/schools/school-01")
    for n in range(TABLETS):
        await page.get_by_role("rowheader", name=f"tab-{n:04d}").wait_for()
    await axe_check(page)

    await page.get_by_role("link", name="Commandes").click()
    await page.get_by_label("Action").select_option("lock")
    await page.get_by_label("Établissements (identifiants").fill("school-01, school-02")
    await page.get_by_label("un groupe").check()
    await page.get_by_label("Groupe", exact=True).fill("class-01")
    await page.get_by_label("Durée de validité").fill("1h")
    await axe_check(page)
    await page.get_by_role("button", name="Voir qui elle atteindra").click()
    await page.get_by_text(
        f"Elle atteindra aujourd\u2019hui {2 * TABLETS} tablettes dans 2"
    ).wait_for()
    await axe_check(page)
    await page.get_by_role("button", name="Signer et envoyer").click()
    await page.wait_for_url(re.compile(r".*/commands/cmd-.*"))
    await page.locator("#total-done", has_text=str(2 * TABLETS)).wait_for(timeout=90_000)
    await page.locator("#state", has_text="terminée").wait_for()
    assert await page.locator("#total-targets").inner_text() == str(2 * TABLETS)
    await axe_check(page)
    await context.close()

    for site in academy.schools:
        command_id = page.url.rsplit("/", 1)[-1]
        assert site.commands.answered(command_id) == {f"tab-{n:04d}" for n in range(TABLETS)}
    sent = await wait_for_value(
        academy.dsn, "SELECT count(*) FROM audit_log WHERE action = 'command.send'", 1, 5
    )
    assert sent == 1
