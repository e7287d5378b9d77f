"""The school console in real headless Chromium, against a real gateway.

One module, one gateway (secure school broker, academy broker, enrolled
simulated tablets in two classes), one browser. The tests run in order and
share that box, as the school's IT contact and a teacher would.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway.app import Gateway
from gateway.config import config_from_mapping
from gateway.lab.mosquitto import STAND_IN_ACADEMY_CONFIG, MosquittoProcess, free_port
from gateway.school_console.setup import read_setup_code, shown
from gateway.security import pki, registry
from gateway.security.enrollment import enrollment_url
from gateway.sim.commands import SimulatedCommands
from gateway.sim.enroll import enroll_tablet
from gateway.sim.fleet import Fleet, FleetSettings
from gateway.state.shadow import tablet_counts
from gateway.sysupdate.files import OUTCOME, update_dir, write_atomically
from gateway.sysupdate.outcomes import outcome, render_outcomes
from tests.browser import axe_check
from tests.conftest import secure_lab_tables, start_secure_broker

pytestmark = pytest.mark.asyncio(loop_scope="module")

IT_NAME, IT_PASSWORD = "informatique", "ecole-des-tilleuls-2026"
TEACHER_NAME, TEACHER_PASSWORD = "m.dupont", "cahier-de-textes-42"
CLASS_A = ["tab-0000", "tab-0001", "tab-0002"]  # class-01 (the simulator's first class)
CLASS_B = ["tab-0030", "tab-0031"]  # class-02
DEADLINE_S = 60


@dataclass
class Box:
    url: str
    gateway: Gateway
    academy: MosquittoProcess
    commands: SimulatedCommands
    fleets: list[Fleet]
    workdir: Path
    pages: dict[str, Any] = field(default_factory=dict)

    @property
    def db(self) -> Any:
        return self.gateway.console.db if self.gateway.console else None


async def _enroll(gateway: Gateway, device_id: str, group: str, workdir: Path) -> Any:
    config = gateway.config
    assert gateway.console is not None
    secret = await registry.create_token(
        gateway.console.db, group=group, ttl_s=600, now=time.time(), device_id=device_id
    )
    ca = pki.load_certificate((config.gateway.state_dir / "pki" / "ca.crt").read_bytes(), "ca")
    url = enrollment_url("127.0.0.1", config.enrollment.port, secret, pki.fingerprint(ca))
    credentials = await enroll_tablet(url, workdir / device_id)
    return credentials.tls_context()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def box(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Box]:
    workdir = tmp_path_factory.mktemp("console")
    academy = MosquittoProcess(workdir / "academy-broker", STAND_IN_ACADEMY_CONFIG)
    await academy.start()
    tables = secure_lab_tables(
        workdir / "state", school_port=free_port(), tls_port=free_port(), academy_port=academy.port
    )
    school, tables = await start_secure_broker(workdir / "school-broker", tables)
    gateway = Gateway(config_from_mapping(tables))
    task = asyncio.create_task(gateway.run(), name="gateway")
    fleets: list[Fleet] = []
    fleet_tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.wait_for(gateway.ready.wait(), 20)
        await asyncio.wait_for(gateway.academy_link.connected.wait(), 20)
        contexts = {d: await _enroll(gateway, d, "class-01", workdir) for d in CLASS_A}
        contexts |= {d: await _enroll(gateway, d, "class-02", workdir) for d in CLASS_B}
        commands = SimulatedCommands()
        for first, count in ((0, len(CLASS_A)), (30, len(CLASS_B))):
            fleet = Fleet(
                FleetSettings(
                    host="127.0.0.1",
                    port=gateway.config.school_broker.tls_port,
                    tablets=count,
                    first_index=first,
                    interval_s=3.0,
                    stay_online=True,
                    tls=contexts,
                ),
                on_command=commands,
            )
            fleets.append(fleet)
            fleet_tasks.append(asyncio.create_task(fleet.run(), name=f"fleet-{first}"))
        assert gateway.console is not None
        db = gateway.console.db

        async def all_online() -> bool:
            # Online (presence) and reporting (a state report gives the group).
            row = await db.fetch_one(
                "SELECT count(*) FROM shadow WHERE online = 1 AND group_name != ''"
            )
            return await tablet_counts(db) == (5, 5) and row is not None and row[0] == 5

        deadline = time.monotonic() + DEADLINE_S
        while not await all_online():
            assert time.monotonic() < deadline, "the simulated tablets did not all report"
            await asyncio.sleep(0.2)
        yield Box(
            f"http://127.0.0.1:{gateway.config.http.port}",
            gateway,
            academy,
            commands,
            fleets,
            workdir,
        )
    finally:
        for fleet in fleets:
            for tablet in fleet.tablets:
                tablet.leave()
        for fleet_task in fleet_tasks:
            fleet_task.cancel()
        await asyncio.gather(*fleet_tasks, return_exceptions=True)
        gateway.stop()
        await asyncio.wait_for(task, 20)
        await school.stop()
        await academy.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def it_page(box: Box, browser: Any) -> AsyncIterator[Any]:
    """The IT contact's browser tab, on a phone-sized French screen."""
    context = await browser.new_context(viewport={"width": 412, "height": 915}, locale="fr-FR")
    context.set_default_timeout(15_000)
    page = await context.new_page()
    yield page
    await context.close()


async def sign_in(page: Any, url: str, name: str, password: str) -> None:
    await page.goto(f"{url}/signin")
    await page.get_by_label("Identifiant").fill(name)
    await page.get_by_label("Mot de passe").fill(password)
    await page.get_by_role("button", name="Se connecter").click()
    await page.wait_for_load_state()


async def poll_until(page: Any, selector: str, deadline_s: float = DEADLINE_S) -> None:
    """Wait (the page refreshes itself) until ``selector`` matches, or fail at the deadline."""
    await page.wait_for_selector(selector, timeout=deadline_s * 1000)


class TestItContact:
    """The IT contact sets the console up and runs the box from it."""

    async def test_first_set_up_with_the_code_then_sign_in(self, box: Box, it_page: Any) -> None:
        state_dir = box.gateway.config.gateway.state_dir
        code = read_setup_code(state_dir)
        assert code is not None, "no IT contact yet: the gateway must have made a set-up code"
        page = it_page
        await page.goto(f"{box.url}/")
        assert "/signin" in page.url
        await axe_check(page)
        await page.get_by_role("link", name="première installation").click()
        await axe_check(page)
        await page.get_by_label("Code d’installation").fill("WRONG-CODE-0000")
        await page.get_by_label("Identifiant").fill(IT_NAME)
        await page.get_by_label("Mot de passe (au moins 10 caractères)").fill(IT_PASSWORD)
        await page.get_by_role("button", name="Créer le compte du référent numérique").click()
        await page.get_by_text("Ce n’est pas le code d’installation.").wait_for()
        await page.get_by_label("Code d’installation").fill(shown(code).lower())
        await page.get_by_label("Mot de passe (au moins 10 caractères)").fill(IT_PASSWORD)
        await page.get_by_role("button", name="Créer le compte du référent numérique").click()
        await page.wait_for_url(f"{box.url}/signin")
        assert read_setup_code(state_dir) is None  # used once, gone
        await sign_in(page, box.url, IT_NAME, IT_PASSWORD)
        await page.get_by_role("heading", name="En un coup d’œil", exact=True).wait_for()
        await poll_until(page, '[data-light="uplink"][data-level="green"]')
        await axe_check(page)

    async def test_tablets_list_and_a_tablets_page(self, box: Box, it_page: Any) -> None:
        page = it_page
        await page.get_by_role("link", name="Tablettes").click()
        rows = page.locator("tbody tr")
        assert await rows.count() == 5
        await axe_check(page)
        await page.get_by_label("Groupe").select_option("class-02")
        await page.get_by_role("button", name="Afficher").click()
        await page.wait_for_url(re.compile(r"group=class-02"))
        assert await rows.count() == len(CLASS_B)
        await page.get_by_role("link", name="tab-0030").click()
        await page.get_by_role("heading", name="Tablette tab-0030").wait_for()
        await axe_check(page)

    async def test_create_a_token_and_see_its_qr_code(self, box: Box, it_page: Any) -> None:
        page = it_page
        await page.get_by_role("link", name="Inscription").click()
        await axe_check(page)
        await page.get_by_label("Groupe (classe)").fill("class-03")
        await page.get_by_label("Nombre de tablettes").fill("2")
        await page.get_by_role("button", name="Créer les QR codes").click()
        qr = page.get_by_role("img", name="QR code d’inscription 1")
        await qr.wait_for()
        assert await page.get_by_role("img", name=re.compile("QR code d’inscription")).count() == 2
        await axe_check(page)
        # What the QR code holds enrolls a tablet.
        url = await page.locator(".qr-card .url a").first.get_attribute("href")
        assert url is not None and "/enroll?token=" in url
        credentials = await enroll_tablet(url, box.workdir / "from-the-sheet")
        assert credentials.device_id.startswith("tab-")

    async def test_revoke_a_tablet_and_see_it_go_offline(self, box: Box, it_page: Any) -> None:
        page = it_page
        await page.goto(f"{box.url}/enrollment")
        row = page.locator('tr[data-device="tab-0031"]')
        await row.get_by_text("en ligne").wait_for()
        page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await row.get_by_role("button", name="Révoquer tab-0031").click()
        await page.get_by_text("La tablette est révoquée et déconnectée.").wait_for()
        await row.get_by_text("révoquée").wait_for()
        await page.goto(f"{box.url}/tablets?group=class-02")
        deadline = time.monotonic() + DEADLINE_S
        line = page.locator("tr", has=page.get_by_role("link", name="tab-0031"))
        while await line.get_by_text("hors ligne").count() == 0:
            assert time.monotonic() < deadline, "the revoked tablet still shows online"
            await page.reload()
        assert await page.locator("tr", has_text="tab-0030").get_by_text("en ligne").count() == 1

    async def test_create_a_teacher_account(self, box: Box, it_page: Any) -> None:
        page = it_page
        await page.get_by_role("link", name="Comptes").click()
        await axe_check(page)
        await page.get_by_label("Identifiant", exact=True).fill(TEACHER_NAME)
        await page.get_by_label("Rôle").select_option("teacher")
        await page.get_by_label("Groupes (enseignants").fill("class-01")
        await page.get_by_label("Mot de passe (au moins 10 caractères)").fill(TEACHER_PASSWORD)
        await page.get_by_role("button", name="Créer le compte").click()
        await page.get_by_text("Enregistré.").wait_for()
        assert await page.get_by_role("cell", name=TEACHER_NAME, exact=True).count() == 1

    async def test_updates_and_commands_pages(self, box: Box, it_page: Any) -> None:
        page = it_page
        # Root's helpers recorded a rollback: the updates page says so, in French.
        rolled_back = outcome(
            "3", "ab" * 32, "rolled-back", at=time.time(), reason="booted slot A", slot="A"
        )
        folder = update_dir(box.gateway.config.gateway.state_dir)
        write_atomically(folder / OUTCOME, render_outcomes((rolled_back,)))
        for link, heading in (("Mises à jour", "Mises à jour"), ("Commandes", "Commandes")):
            await page.get_by_role("link", name=link).click()
            await page.get_by_role("heading", name=heading, exact=True).wait_for()
            if link == "Mises à jour":
                await page.get_by_role("heading", name="Système de ce boîtier").wait_for()
                await poll_until(page, '[data-outcome="rolled-back"]')
                card = page.locator('[data-system="last-update"]')
                assert "Version 3 : retour au système précédent" in await card.inner_text()
                assert "booted slot A" in await card.inner_text()
            await axe_check(page)
        await page.goto(f"{box.url}/tablets?lang=en")
        await page.get_by_role("heading", name="Tablets").wait_for()
        await axe_check(page)
        await page.goto(f"{box.url}/tablets?lang=fr")


class TestTeacher:
    """A teacher locks their class with the uplink down; nothing more."""

    async def test_lock_a_class_with_the_uplink_down(
        self, box: Box, it_page: Any, browser: Any
    ) -> None:
        await box.academy.stop()
        await it_page.goto(f"{box.url}/")
        await poll_until(it_page, '[data-light="uplink"][data-level="amber"]')
        assert "Coupée depuis" in await it_page.locator('[data-light="uplink"]').inner_text()
        await axe_check(it_page)

        context = await browser.new_context(viewport={"width": 390, "height": 844}, locale="fr-FR")
        context.set_default_timeout(15_000)
        page = await context.new_page()
        try:
            await sign_in(page, box.url, TEACHER_NAME, TEACHER_PASSWORD)
            await page.get_by_role("heading", name="En classe", exact=True).wait_for()
            await axe_check(page)
            assert await page.get_by_role("heading", name="Groupe class-02").count() == 0
            group = page.locator("section", has=page.get_by_role("heading", name="Groupe class-01"))
            await group.get_by_role("button", name="Verrouiller les tablettes", exact=True).click()
            await page.wait_for_url(re.compile(r"/commands/local-"))
            command_id = page.url.rsplit("/", 1)[1]
            await poll_until(
                page, f'[data-summary="done"]:has-text("{len(CLASS_A)} faites sur {len(CLASS_A)}")'
            )
            for device in CLASS_A:
                assert (
                    await page.locator(f'tr[data-device="{device}"][data-state="done"]').count()
                    == 1
                )
            await axe_check(page)
            for fleet in box.fleets[:1]:
                assert all(t.model.locked for t in fleet.tablets)
            assert not any(t.model.locked for t in box.fleets[1].tablets)
            # The action waits upstream with who did it.
            assert box.gateway.console is not None
            row = await box.gateway.console.db.fetch_one(
                "SELECT body FROM outbox WHERE kind = 'result' AND body LIKE ? AND body LIKE ?",
                ('%"local_action"%', f"%{command_id}%"),
            )
            assert row is not None and TEACHER_NAME in row[0]

            # A teacher cannot reach the IT contact's pages, nor another class.
            for path in ("/enrollment", "/accounts", "/commands", "/tablets?group=class-02"):
                response = await page.goto(f"{box.url}{path}")
                assert response is not None and response.status == 403, path
            await axe_check(page)
            forged = await context.request.post(
                f"{box.url}/classroom", form={"group": "class-02", "action": "lock"}
            )
            assert forged.status == 403  # no CSRF token
            await page.goto(f"{box.url}/classroom")
            token = await page.locator('input[name="csrf_token"]').first.get_attribute("value")
            for form, status in (
                ({"group": "class-02", "action": "lock"}, 403),  # not their class
                ({"group": "class-01", "action": "wipe"}, 403),  # not a classroom action
            ):
                response = await context.request.post(
                    f"{box.url}/classroom", form={**form, "csrf_token": token or ""}
                )
                assert response.status == status, form
        finally:
            await context.close()

        await box.academy.start()
        await it_page.goto(f"{box.url}/")
        await poll_until(it_page, '[data-light="uplink"][data-level="green"]')


class TestSignInRefusals:
    """Wrong passwords and forged posts open nothing."""

    async def test_wrong_password_opens_no_session(self, box: Box, browser: Any) -> None:
        context = await browser.new_context(locale="fr-FR")
        context.set_default_timeout(15_000)
        page = await context.new_page()
        try:
            await sign_in(page, box.url, IT_NAME, "not the password at all")
            await page.get_by_text("Identifiant ou mot de passe incorrect.").wait_for()
            assert not any(c["name"] == "school_console" for c in await context.cookies())
            await page.goto(f"{box.url}/accounts")
            assert "/signin" in page.url
            response = await context.request.post(f"{box.url}/accounts", form={"do": "delete"})
            assert response.status == 403
        finally:
            await context.close()
