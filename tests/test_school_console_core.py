"""The school console's decisions without a browser: glance, local policy, QR, accounts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import qrcode

from gateway.commands.local import (
    CLASSROOM_ACTIONS,
    LocalActions,
    LocalActor,
    authorise,
    local_command,
)
from gateway.errors import RejectedInput
from gateway.school_console.accounts import IT_CONTACT, TEACHER, ConsoleAccounts, parse_groups
from gateway.school_console.glance import AMBER, GREEN, GREY, RED, GlanceFacts, glance, worst
from gateway.school_console.qr import qr_svg
from gateway.school_console.setup import (
    SETUP_CODE_FILE,
    ensure_first_it_contact,
    read_setup_code,
)
from gateway.store.database import Database
from gateway.web.accounts import StoredSession
from gateway.web.passwords import ScryptCost, hash_password

NOW = 1_800_000_000.0


def facts(**changes: object) -> GlanceFacts:
    base = dict(
        now=NOW,
        started_at=NOW - 7200,
        academy_up=True,
        academy_since=NOW - 7200,
        school_up=True,
        school_since=NOW - 7200,
        backlog_rows=0,
        backlog_bytes=0,
        backlog_budget_bytes=50_000_000,
        disk_free_bytes=50_000_000_000,
        disk_total_bytes=100_000_000_000,
        temperature_c=48.0,
        last_summary_acked=NOW - 100,
        summary_interval_s=300.0,
        last_report_at=NOW - 20,
        tablets_known=300,
        tablets_online=280,
    )
    base.update(changes)
    return GlanceFacts(**base)  # type: ignore[arg-type]


def levels(f: GlanceFacts) -> dict[str, str]:
    return {light.key: light.level for light in glance(f)}


class TestGlance:
    """Each light turns amber or red on what a school would notice, with one thing to do."""

    def test_a_healthy_box_is_all_green(self) -> None:
        assert set(levels(facts()).values()) == {GREEN}
        assert worst(glance(facts())) == GREEN
        assert all(light.advice is None for light in glance(facts()))

    def test_uplink_down_is_amber_with_since_and_backlog_then_red(self) -> None:
        light = glance(facts(academy_up=False, academy_since=NOW - 600, backlog_rows=42))[0]
        assert light.level == AMBER and light.advice
        assert light.params["since_age"] == 600 and light.params["rows"] == 42
        assert levels(facts(academy_up=False, academy_since=NOW - 2 * 86400))["uplink"] == RED
        near_budget = facts(academy_up=False, backlog_bytes=45_000_000)
        assert levels(near_budget)["uplink"] == RED

    def test_broker_disk_heat_summary_and_tablets(self) -> None:
        assert levels(facts(school_up=False))["broker"] == RED
        assert levels(facts(disk_free_bytes=10_000_000_000))["disk"] == AMBER
        assert levels(facts(disk_free_bytes=1_000_000_000))["disk"] == RED
        assert levels(facts(temperature_c=None))["temperature"] == GREY
        assert levels(facts(temperature_c=75.0))["temperature"] == AMBER
        assert levels(facts(temperature_c=85.0))["temperature"] == RED
        assert levels(facts(last_summary_acked=NOW - 3600))["summary"] == AMBER
        assert levels(facts(last_summary_acked=None, started_at=NOW - 60))["summary"] == GREY
        assert levels(facts(last_report_at=NOW - 3600))["tablets"] == AMBER
        assert levels(facts(tablets_known=0, last_report_at=None))["tablets"] == GREY
        assert worst(glance(facts(school_up=False, temperature_c=75.0))) == RED

    def test_every_sentence_is_a_message_with_its_parameters(self) -> None:
        for f in (facts(), facts(academy_up=False), facts(school_up=False)):
            for light in glance(f):
                names = set(re.findall(r"%\((\w+)\)s", light.summary))
                assert names == set(light.params), light.summary


ACTOR = LocalActor("m.dupont", TEACHER, frozenset({"5A"}))
IT = LocalActor("info", IT_CONTACT, frozenset(), may_act_on_any_group=True)


class TestLocalPolicy:
    """Only lock, unlock and a message; a teacher only for their own groups."""

    def test_the_classroom_list_is_short_and_fixed(self) -> None:
        assert CLASSROOM_ACTIONS == ("lock", "unlock", "message")

    @pytest.mark.parametrize(
        "action", ["wipe", "install_app", "remove_app", "set_policy", "reboot", "open_url"]
    )
    def test_nothing_the_academy_alone_may_do(self, action: str) -> None:
        for actor in (ACTOR, IT):
            with pytest.raises(RejectedInput) as caught:
                authorise(actor, action, "5A", {})
            assert caught.value.reason == "not_classroom"

    def test_a_teacher_acts_on_their_groups_only(self) -> None:
        assert authorise(ACTOR, "lock", "5A", {}).group == "5A"
        with pytest.raises(RejectedInput) as caught:
            authorise(ACTOR, "lock", "5B", {})
        assert caught.value.reason == "not_your_group"
        assert authorise(IT, "unlock", "5B", {}).group == "5B"

    def test_parameters_are_checked_like_academy_commands(self) -> None:
        assert authorise(ACTOR, "message", "5A", {"text": "Rangez"}).params == {"text": "Rangez"}
        for params in ({}, {"text": ""}, {"text": "x" * 1001}, {"text": "a", "url": "b"}):
            with pytest.raises(RejectedInput):
                authorise(ACTOR, "message", "5A", params)
        with pytest.raises(RejectedInput):
            authorise(ACTOR, "lock", "5A", {"extra": 1})
        with pytest.raises(RejectedInput):
            authorise(IT, "lock", "", {})

    def test_the_stored_command_names_who_asked(self) -> None:
        command = local_command(authorise(ACTOR, "lock", "5A", {}), "school-1", NOW)
        payload = json.loads(command.payload)
        assert command.key_id == "local" and command.command_id.startswith("local-")
        assert payload["issued_by"] == {"account": "m.dupont", "role": TEACHER, "local": True}
        assert payload["targets"] == {"group": "5A"}
        assert command.not_after - command.issued_at == 3600


def test_qr_svg_draws_exactly_the_code_modules() -> None:
    data = "https://192.0.2.1:8443/enroll?token=abc&ca_sha256=" + "f" * 64
    svg = str(qr_svg(data, "QR <1>"))
    assert "<title>QR &lt;1&gt;</title>" in svg and "style" not in svg
    code = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_M)
    code.add_data(data)
    code.make(fit=True)
    expected = {(x, y) for y, row in enumerate(code.get_matrix()) for x, on in enumerate(row) if on}
    drawn = set()
    for x, y, width in re.findall(r"M(\d+) (\d+)h(\d+)v1h-\d+z", svg):
        drawn |= {(int(x) + i, int(y)) for i in range(int(width))}
    assert drawn == expected


@pytest.fixture
async def db(tmp_path: Path):
    database = await Database.open(tmp_path / "gateway.db")
    yield database
    await database.close()


CHEAP = ScryptCost(log2_n=10)


class TestAccountsInSqlite:
    """Accounts and sessions in the gateway's SQLite file."""

    async def test_sessions_are_bounded_per_account_and_end_with_a_new_password(self, db) -> None:
        accounts = ConsoleAccounts(db)
        await accounts.create("info", IT_CONTACT, hash_password("x" * 12, CHEAP), created_by="t")
        for i in range(5):
            await accounts.create_session(
                StoredSession(f"h{i}", "info", "csrf", NOW + i, NOW + 3600),
                max_per_account=3,
                now=NOW + i,
            )
        assert [await accounts.session(f"h{i}") is not None for i in range(5)] == [
            False,
            False,
            True,
            True,
            True,
        ]
        await accounts.set_password("info", hash_password("y" * 12, CHEAP))
        assert await accounts.session("h4") is None

    async def test_names_groups_and_the_last_it_contact(self, db) -> None:
        accounts = ConsoleAccounts(db)
        hashed = hash_password("x" * 12, CHEAP)
        await accounts.create("info", IT_CONTACT, hashed, created_by="t")
        await accounts.create(
            "m.dupont", TEACHER, hashed, parse_groups("5A, 5B,\n5A"), created_by="t"
        )
        assert await accounts.groups_of("m.dupont") == {"5A", "5B"}
        for name in ("Info", "x", "a b", "../etc"):
            with pytest.raises(RejectedInput):
                await accounts.create(name, TEACHER, hashed, created_by="t")
        with pytest.raises(RejectedInput):
            await accounts.create("m.dupont", TEACHER, hashed, created_by="t")
        with pytest.raises(RejectedInput) as caught:
            await accounts.delete("info")
        assert caught.value.reason == "last_it_contact"
        await accounts.delete("m.dupont")
        assert [a.name for a in await accounts.list_accounts()] == ["info"]


class TestFirstItContact:
    """The first IT contact: from provisioning, else a one-time code only `status` shows."""

    async def test_a_code_is_made_once_and_removed_when_an_it_contact_exists(
        self, db, tmp_path: Path
    ) -> None:
        accounts = ConsoleAccounts(db)
        code = await ensure_first_it_contact(accounts, tmp_path, "informatique", "")
        assert code is not None and read_setup_code(tmp_path) == code
        assert (tmp_path / SETUP_CODE_FILE).stat().st_mode & 0o777 == 0o600
        assert await ensure_first_it_contact(accounts, tmp_path, "informatique", "") == code
        await accounts.create("info", IT_CONTACT, "scrypt$x", created_by="t")
        assert await ensure_first_it_contact(accounts, tmp_path, "informatique", "") is None
        assert read_setup_code(tmp_path) is None

    async def test_provisioning_gives_the_password_hash(self, db, tmp_path: Path) -> None:
        accounts = ConsoleAccounts(db)
        hashed = hash_password("provisioned-pass", CHEAP)
        assert await ensure_first_it_contact(accounts, tmp_path, "info", hashed) is None
        account = await accounts.account("info")
        assert account is not None and account.role == IT_CONTACT
        assert read_setup_code(tmp_path) is None


async def test_local_actions_queue_like_academy_commands(db) -> None:
    """A classroom action is a command with one delivery per tablet of the group."""
    async with db.transaction() as conn:
        for device, group in (("t1", "5A"), ("t2", "5A"), ("t3", "5B")):
            await conn.execute(
                "INSERT INTO shadow (device_id, state, report_seq, group_name, first_seen, "
                "last_seen) VALUES (?, '{}', 1, ?, 0, 0)",
                (device, group),
            )
    woken: list[list[str]] = []
    actions = LocalActions(
        db,
        school_id="school-1",
        max_unfinished=1,
        on_accepted=lambda devices: woken.append(list(devices)),
        on_committed=lambda: None,
    )
    queued = await actions.submit(authorise(ACTOR, "lock", "5A", {}))
    assert sorted(queued.devices) == ["t1", "t2"] and woken == [["t1", "t2"]]
    rows = await db.fetch_all("SELECT device_id, state FROM deliveries ORDER BY device_id")
    assert [tuple(r) for r in rows] == [("t1", "pending"), ("t2", "pending")]
    kinds = [json.loads(r[0])["type"] for r in await db.fetch_all("SELECT body FROM outbox")]
    assert kinds == ["local_action", "progress"]
    with pytest.raises(RejectedInput) as caught:  # the same bound as academy commands
        await actions.submit(authorise(ACTOR, "unlock", "5A", {}))
    assert caught.value.reason == "queue_full"


def test_hash_password_for_provisioning() -> None:
    """`console hash-password` prints a hash the console accepts; a short password is refused."""
    import subprocess
    import sys

    from gateway.web.passwords import verify_password

    def run(password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "console", "hash-password"],
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    good = run("provisioned-secret-1")
    assert good.returncode == 0 and verify_password("provisioned-secret-1", good.stdout.strip())
    short = run("short")
    assert short.returncode == 2 and "at least 10 characters" in short.stderr
