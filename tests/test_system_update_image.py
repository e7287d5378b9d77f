"""The box updates itself under QEMU: A/B bundles through its cache, and a rollback (issue 14).

Marker ``image`` (tens of minutes, root, mmdebstrap/genimage/RAUC/QEMU under TCG):

    pytest -m image tests/test_system_update_image.py

What runs, with nothing of the box's own path mocked:

1. ``firmware-image/build.sh`` (through tests/image_kit.py, which caches the
   builds) makes the ``--test`` image of version 1, a bundle of version 2 and a
   bundle of version 3 whose gateway cannot start, all signed with one key.
2. The provisioning file (the academy broker at 10.0.2.100, a technician's SSH
   key, the maintenance window all day) reaches the card's boot partition
   through QEMU's fw_cfg at every boot (the test image's test-provision unit);
   from there the box's own provisioning step takes it, as from a file a
   school wrote. QEMU boots the card through its bootloader (OVMF, GRUB) under
   TCG, on a network that reaches only the test's academy broker (a real
   Mosquitto with mTLS) and HTTP origin (``restrict=on``, ``guestfwd``).
3. The technician (SSH, as a school's would) gives the box the academy CA
   and the certificate the academy signed from the box's CSR, and makes an
   enrollment token; a tablet enrolls over the LAN port and reports its state.
4. The academy publishes version 2 in the signed manifest (``academy send
   --manifest``); the box fetches it through its cache from the origin,
   installs it, reboots into slot B and marks it good.
5. The academy publishes version 3: the box installs it, boots it, the health
   check fails, and the box is back on version 2 with no one touching it.
6. The tablet's state row and certificate from before the first update are
   still there (the tablet connects again with it), and each outcome reached
   the academy broker in a summary.

Every wait polls the academy broker or the box with a deadline; no step
asserts how long it took. The durations are printed (docs/firmware-image.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.academy.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE
from gateway.cli import main as gateway_main
from gateway.sim.enroll import TabletCredentials, enroll_tablet
from tests.helpers import run_cli
from tests.image_academy import AcademyStandIn, FileOrigin
from tests.image_kit import Card, Vm, boot_checks, build_image, missing_tools
from tests.image_vm import GUEST_SERVICES_ADDRESS, Forward, Technician, VmNetwork

SCHOOL = "ecole-e2e"
GATEWAY = "gw-e2e-1"
TABLET = "tab-e2e-1"
ACADEMY_PORT_ON_BOX = 8883  # 10.0.2.100:8883 on the box's side
ORIGIN_PORT_ON_BOX = 8000
DISK_BYTES = 16 * 1024**3  # the virtual card: larger than the image (the data partition grows)
# Deadlines (never assertions on durations): generous for TCG on a loaded 2-core machine.
FIRST_BOOT_S = 900.0
UPDATE_S = 2400.0  # fetch + install + reboot + health check
ROLLBACK_S = 2400.0  # fetch + install + reboot + failed check + reboot into the old slot
SUMMARY_INTERVAL_S = 10
HEALTH_DEADLINE_S = 240


@dataclass(frozen=True)
class Release:
    """What build.sh produced: the card image of version 1 and two bundles, one signing key."""

    image: Path
    bundle_v2: Path
    bundle_v3_broken: Path
    build_seconds: float


def image_selected(config: pytest.Config) -> bool:
    return "image" in str(config.getoption("markexpr", default="") or "")


@pytest.fixture(scope="module")
def release(request: pytest.FixtureRequest) -> Release:
    """Version 1's image, version 2's bundle, version 3's broken bundle (image_kit caches them)."""
    if not image_selected(request.config):
        pytest.skip("image test: tens of minutes of build and emulation; run with -m image")
    if os.geteuid() != 0:
        pytest.skip("building the image needs root (mmdebstrap, chroot, file ownership)")
    missing = [
        *missing_tools(),
        *(tool for tool in ("ssh", "ssh-keygen") if not shutil.which(tool)),
    ]
    if missing:
        pytest.skip(f"missing {missing}: see docs/firmware-image.md for the packages")
    v1 = build_image("1", bundle=False)
    v2 = build_image("2", image=False)
    v3 = build_image("3", image=False, break_gateway=True)
    assert v1.image is not None and v2.bundle is not None and v3.bundle is not None
    return Release(v1.image, v2.bundle, v3.bundle, v1.seconds + v2.seconds + v3.seconds)


def provisioning(academy_public_key: str, technician: Technician) -> str:
    """The school's provisioning file: what the academy gives every school, for this box."""
    return f"""\
[gateway]
school_id = "{SCHOOL}"
gateway_id = "{GATEWAY}"

[academy_broker]
host = "{GUEST_SERVICES_ADDRESS}"
port = {ACADEMY_PORT_ON_BOX}
# On the data partition: it must outlive every slot switch.
ca_file = "/var/lib/school-gateway/academy-ca.pem"

[school_broker]
reload_command = ["/bin/true"]

[uplink]
summary_interval_s = {SUMMARY_INTERVAL_S}

# Install as soon as a bundle is complete, and judge a new slot within 4 minutes.
[system_update]
window = "00:00-24:00"
health_deadline_s = {HEALTH_DEADLINE_S}

[cache]
offpeak_windows = ["00:00-24:00"]
prefetch_bytes_per_s = 200000000

[commands.academy_keys]
"academy-1" = "{academy_public_key}"

[technicians]
ssh_keys = ["{technician.public_key}"]
"""


@dataclass
class Scenario:
    """The parts of one run and what was measured."""

    tmp: Path
    academy: AcademyStandIn
    origin: FileOrigin
    vm: Vm
    technician: Technician
    academy_keys: Path
    network: VmNetwork
    marks: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic() - self.started

    def failure(self, what: str) -> str:
        summaries = self.academy.summaries()
        listener = self.academy.listener
        topics = Counter(m.topic for m in listener.messages) if listener is not None else {}
        last = summaries[-1].get("system") if summaries else "no summary at all"
        if ended := self.academy.listener_ended():
            what += f"\nthe academy listener ended: {ended}"
        return (
            f"{what}\n{len(summaries)} summaries; the last one's system: {last}"
            f"\nmessages at the academy by topic: {dict(topics)}"
            f"\nconsole tail:\n{self.vm.console_text()[-6000:]}"
        )

    async def box_journal(self) -> str:
        """The box's own account, for a failure message: its gateway's and the updater's logs."""
        command = (
            "journalctl --no-pager -o short-monotonic -n 80 -u gateway.service"
            " -u school-gateway-system-update.service -u school-gateway-health-check.service;"
            " echo '--- warnings of this boot:'; journalctl --no-pager -b -p warning -n 40;"
            " ls -l /var/lib/school-gateway /var/lib/school-gateway/pki"
        )
        result = await self.technician.run(command, timeout_s=60)
        return f"box journal (ssh exit {result.returncode}):\n{result.stdout}{result.stderr}"

    async def expect_summary(
        self, predicate: Callable[[dict[str, Any]], bool], within_s: float, what: str
    ) -> dict[str, Any]:
        """:meth:`wait_summary`, failing with ``what``, the console and the box's journal."""
        found = await self.wait_summary(predicate, within_s)
        if found is None:
            pytest.fail(f"{self.failure(what)}\n{await self.box_journal()}")
        return found

    async def wait_summary(
        self, predicate: Callable[[dict[str, Any]], bool], within_s: float
    ) -> dict[str, Any] | None:
        """The first summary (arriving from now on or already there) that ``predicate`` accepts."""
        listener = self.academy.listener
        assert listener is not None

        def found() -> bool:
            return any(predicate(body) for body in self.academy.summaries())

        await listener.wait_for(found, within_s)
        return next((body for body in self.academy.summaries() if predicate(body)), None)

    async def publish_manifest(self, serial: int, bundle: Path, version: str) -> str:
        """The academy puts the bundle on the origin and in the signed manifest; its sha256."""
        await asyncio.to_thread(shutil.copy, bundle, self.origin.directory / bundle.name)
        digest, size = await asyncio.to_thread(file_sha256, bundle)
        manifest = self.tmp / f"manifest-{serial}.json"
        manifest.write_text(
            json.dumps(
                {
                    "serial": serial,
                    "items": [
                        {
                            "sha256": digest,
                            "size": size,
                            "urls": [
                                f"http://{GUEST_SERVICES_ADDRESS}:{ORIGIN_PORT_ON_BOX}"
                                f"/files/{bundle.name}"
                            ],
                            "name": bundle.name,
                            "kind": "system",
                            "version": version,
                            "compatible": "school-gateway-amd64",
                        }
                    ],
                }
            )
        )
        sent = await run_cli(
            "academy", "send", "--broker", f"127.0.0.1:{self.academy.port}",
            "--school", SCHOOL, "--key", str(self.academy_keys / PRIVATE_KEY_FILE),
            "--key-id", "academy-1", "--manifest", str(manifest),
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        return digest


def file_sha256(path: Path) -> tuple[str, int]:
    """The SHA-256 (hex) and size of a file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def system_of(body: dict[str, Any]) -> dict[str, Any]:
    system = body.get("system")
    return system if isinstance(system, dict) else {}


def last_update(body: dict[str, Any]) -> dict[str, Any]:
    update = system_of(body).get("last_update")
    return update if isinstance(update, dict) else {}


async def provision_box(scenario: Scenario) -> None:
    """What the technician does once: the academy CA, and the certificate from the CSR."""
    technician = scenario.technician
    assert await technician.wait_ready(FIRST_BOOT_S), scenario.failure("sshd never answered")
    await technician.write_file(
        "/var/lib/school-gateway/academy-ca.pem", scenario.academy.ca_pem,
        mode="0644", owner="root:school-gateway",
    )  # fmt: skip
    csr_path = "/var/lib/school-gateway/pki/gateway.csr"
    deadline = time.monotonic() + FIRST_BOOT_S
    while (await technician.run(f"test -s {csr_path}")).returncode != 0:
        assert time.monotonic() < deadline, scenario.failure("the gateway never wrote its CSR")
        await asyncio.sleep(3)
    csr = await technician.check(f"cat {csr_path}")
    await technician.write_file(
        "/var/lib/school-gateway/pki/academy-client.crt",
        scenario.academy.sign_gateway_csr(csr.encode()),
        mode="0644", owner="school-gateway:school-gateway",
    )  # fmt: skip


async def enroll_and_report(scenario: Scenario, tablet_dir: Path) -> TabletCredentials:
    """A tablet enrolls on the box's LAN port and reports its state over mTLS."""
    out = await scenario.technician.check(
        "runuser -u school-gateway -- /opt/school-gateway/bin/school-gateway enroll new"
        f" --device-id {TABLET} --group class-e2e"
    )
    url = re.search(r"https://\S+/enroll\?\S+", out)
    assert url is not None, out
    # The tablet reaches the box's 8443 through the test's forward.
    local = re.sub(
        r"https://[^/]+/", f"https://127.0.0.1:{scenario.network.expose(8443)}/", url.group(0)
    )
    credentials = await enroll_tablet(local, tablet_dir)
    await publish_state(scenario, credentials.tls_context(), seq=1, battery=77)
    return credentials


async def publish_state(scenario: Scenario, context: Any, *, seq: int, battery: int) -> None:
    """One state report of the tablet, QoS 1, on the box's TLS listener."""
    report = {
        "device_id": TABLET,
        "seq": seq,
        "ts": time.time(),
        "battery_pct": battery,
        "charging": False,
        "storage_free_mb": 4000,
        "storage_total_mb": 32000,
        "os_version": "14.0.1",
        "apps": {"org.ent.classroom": "2.5.1"},
        "locked": False,
        "group": "class-e2e",
    }
    async with aiomqtt.Client(
        "127.0.0.1", scenario.network.expose(8883), identifier=TABLET,
        tls_context=context, timeout=30,
    ) as client:  # fmt: skip
        await client.publish(f"tablets/{TABLET}/state", json.dumps(report), qos=1)


SNAPSHOT = """\
import hashlib, json, sqlite3
state = "/var/lib/school-gateway"
db = sqlite3.connect(f"file:{state}/gateway.db?mode=ro", uri=True)
rows = {
    "shadow": db.execute(
        "SELECT device_id, state, report_seq, group_name FROM shadow ORDER BY device_id"
    ).fetchall(),
    "tablet_identity": db.execute(
        "SELECT device_id, serial, group_name, enrolled, revoked FROM tablet_identity"
        " ORDER BY device_id"
    ).fetchall(),
}
pki = {
    name: hashlib.sha256(open(f"{state}/pki/{name}", "rb").read()).hexdigest()
    for name in ("ca.crt", "ca.key", "gateway.key", "academy-client.crt")
}
print(json.dumps({"rows": rows, "pki": pki}, sort_keys=True))
"""


async def snapshot(scenario: Scenario) -> dict[str, Any]:
    """The tablet's rows in the store and the keys of pki/, read on the box (read-only)."""
    out = await scenario.technician.check("python3 -", stdin=SNAPSHOT.encode())
    data: dict[str, Any] = json.loads(out)
    return data


def outcomes_seen(summaries: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Every (version, outcome) any summary carried, in ``last_update`` or ``recent``."""
    seen = set()
    for body in summaries:
        for entry in [last_update(body), *(system_of(body).get("recent") or [])]:
            if isinstance(entry, dict) and "version" in entry and "outcome" in entry:
                seen.add((str(entry["version"]), str(entry["outcome"])))
    return seen


def on(version: str, slot: str) -> Callable[[dict[str, Any]], bool]:
    def check(body: dict[str, Any]) -> bool:
        system = system_of(body)
        return system.get("version") == version and system.get("booted_slot") == slot

    return check


@pytest.mark.image
class TestSystemUpdateOnTheBox:
    """Version 1 updates itself to 2, refuses to stay on a broken 3, and keeps its data."""

    async def test_update_then_automatic_rollback(
        self, release: Release, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        keys = tmp_path / "academy-keys"
        await asyncio.to_thread(gateway_main, ["academy", "keygen", "--out", str(keys)])
        public = (keys / PUBLIC_KEY_FILE).read_text().strip()
        async with (
            AcademyStandIn(tmp_path / "academy", GUEST_SERVICES_ADDRESS) as academy,
            FileOrigin(tmp_path / "origin") as origin,
        ):
            network = VmNetwork(
                [Forward(ACADEMY_PORT_ON_BOX, academy.tls_port),
                 Forward(ORIGIN_PORT_ON_BOX, origin.port)]
            )  # fmt: skip
            technician = Technician.make(tmp_path / "technician", network.expose(22))
            for port in (8443, 8883):  # enrollment and the tablets' TLS listener
                network.expose(port)
            school_file = tmp_path / "school-gateway.toml"
            school_file.write_text(provisioning(public, technician))
            vm = Vm(
                Card.create(release.image, tmp_path / "card", DISK_BYTES),
                tmp_path / "console.log",
                fw_cfg={"after-check": "stay", "provision": school_file},
                extra_args=["-nic", network.nic_option()],
            )
            scenario = Scenario(tmp_path, academy, origin, vm, technician, keys, network)
            vm.start()
            try:
                await self.scenario(scenario, release, tmp_path / "tablet")
            finally:
                vm.kill()
                with capsys.disabled():
                    marks = ", ".join(f"{name} {at:.0f} s" for name, at in scenario.marks.items())
                    print(
                        f"\nsystem update image test: builds {release.build_seconds:.0f} s"
                        f" (0 when cached); after power-on: {marks}"
                    )

    async def scenario(self, scenario: Scenario, release: Release, tablet_dir: Path) -> None:
        academy = scenario.academy
        await provision_box(scenario)
        await scenario.expect_summary(
            on("1", "A"), FIRST_BOOT_S, "no summary from version 1 on slot A"
        )
        scenario.mark("version 1 reported")
        tablet = await enroll_and_report(scenario, tablet_dir)
        await scenario.expect_summary(
            lambda body: body["tablets"]["reporting"] == 1,
            300,
            "the tablet's report never reached a summary",
        )
        before = await snapshot(scenario)
        assert [row[0] for row in before["rows"]["shadow"]] == [TABLET], before
        assert [row[0] for row in before["rows"]["tablet_identity"]] == [TABLET], before
        scenario.mark("tablet enrolled")

        # Version 2 through the manifest, the cache and the origin: slot B, marked good.
        v2_sha256 = await scenario.publish_manifest(1, release.bundle_v2, "2")
        good = await scenario.expect_summary(
            lambda body: on("2", "B")(body) and last_update(body).get("outcome") == "marked-good",
            UPDATE_S,
            "version 2 was not marked good on slot B",
        )
        scenario.mark("version 2 marked good on B")
        # It came through the update cache: complete there, fetched from the origin.
        cached = {item["sha256"]: item for item in good["cache"]["items"]}
        assert cached.get(v2_sha256, {}).get("complete") is True, good["cache"]
        assert scenario.origin.requests[f"GET /files/{release.bundle_v2.name}"] >= 1
        assert await snapshot(scenario) == before

        # Version 3 cannot start its gateway: the box comes back to 2 on its own.
        await scenario.publish_manifest(2, release.bundle_v3_broken, "3")
        await scenario.expect_summary(
            lambda body: (
                on("2", "B")(body)
                and last_update(body).get("version") == "3"
                and last_update(body).get("outcome") == "rolled-back"
            ),
            ROLLBACK_S,
            "the box did not come back to version 2",
        )
        scenario.mark("back on version 2 after 3 failed")
        assert await snapshot(scenario) == before

        # The tablet's certificate still opens the school broker, and its report counts.
        await publish_state(scenario, tablet.tls_context(), seq=2, battery=5)
        await scenario.expect_summary(
            lambda body: TABLET in body["low_battery"]["devices"],
            300,
            "the tablet's report after the rollback never reached a summary",
        )
        scenario.mark("tablet reported after the rollback")

        # The box's own status says the same (the technician's view).
        status = await scenario.technician.check(
            "runuser -u school-gateway -- /opt/school-gateway/bin/school-gateway status"
        )
        assert "system: version 2 on slot B" in status, status
        assert "last update: version 3 ROLLED-BACK" in status, status

        # Each outcome reached the academy in a summary.
        seen = outcomes_seen(academy.summaries())
        expected = {
            ("2", "installed"), ("2", "booted"), ("2", "marked-good"),
            ("3", "installed"), ("3", "booted"), ("3", "health-check-failed"),
            ("3", "rolled-back"),
        }  # fmt: skip
        assert expected <= seen, f"missing outcomes {sorted(expected - seen)}; seen {sorted(seen)}"

        # The console tells the same story, one boot check per boot.
        boots = [(check.slot, check.version) for check in boot_checks(scenario.vm.console_text())]
        assert boots[:2] == [("A", "1"), ("B", "2")], boots
        assert boots[-1] == ("B", "2"), boots
