"""Root's helpers against the real RAUC 1.8: real bundles, a real ``rauc service``.

``tests/rauc_lab.py`` runs ``rauc service`` on a private D-Bus with two
file-backed slots (A booted, B inactive, ``bootloader=noop``). The bundle
sits in the gateway's cache as the manifest said; the request is what the
gateway writes. What a person sees is checked: the outcome record, the
``status`` lines, and the inactive slot's bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, config_from_mapping
from gateway.lab.mosquitto import free_port
from gateway.sysupdate.files import OUTCOME, REQUEST, InstallRequest, update_dir, write_atomically
from gateway.sysupdate.health import run_health_check
from gateway.sysupdate.install import install_requested
from gateway.sysupdate.outcomes import outcome, parse_outcomes, render_outcomes
from gateway.sysupdate.rauc import Rauc
from gateway.sysupdate.status import read_system_block, render_system
from tests.rauc_lab import COMPAT, RaucService, Signer, make_bundle, make_signer, missing_tools

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))


class Box:
    """A box's state directory and config around a running rauc service."""

    def __init__(self, tmp_path: Path, service: RaucService, signer: Signer) -> None:
        self.tmp_path = tmp_path
        self.service = service
        self.signer = signer
        self.version_file = tmp_path / "system-version"
        self.version_file.write_text("1\n")
        self.reboots: list[str] = []
        self.config = self.make_config({})

    def make_config(self, extra: dict[str, dict[str, Any]]) -> Config:
        tables: dict[str, dict[str, Any]] = {
            "gateway": {
                "school_id": "school-a",
                "gateway_id": "gw-a",
                "state_dir": str(self.tmp_path / "state"),
            },
            "academy_broker": {"host": "127.0.0.1"},
            "system_update": self.system_tables(),
        }
        for section, values in extra.items():
            tables.setdefault(section, {}).update(values)
        return config_from_mapping(tables)

    def system_tables(self) -> dict[str, Any]:
        return {
            "window": "00:00-24:00",
            "version_file": str(self.version_file),
            "rauc_system_conf": str(self.service.system_conf),
            "keyring": str(self.signer.cert),
            "health_deadline_s": 5,
        }

    @property
    def folder(self) -> Path:
        return update_dir(self.config.gateway.state_dir)

    def rauc(self) -> Rauc:
        return Rauc(self.config.system_update.rauc_command, self.service.system_conf)

    def request(self, bundle: Path, version: str) -> InstallRequest:
        """Put ``bundle`` in the cache as a complete item and write the gateway's request."""
        data = bundle.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        objects = self.config.gateway.state_dir / "cache" / "objects"
        objects.mkdir(parents=True, exist_ok=True)
        (objects / sha).write_bytes(data)
        request = InstallRequest(
            str((objects / sha).resolve()), sha, len(data), version, COMPAT, time.time()
        )
        write_atomically(self.folder / REQUEST, request.render())
        return request

    def install(self) -> str:
        result = install_requested(
            self.config, self.rauc(), reboot=lambda: self.reboots.append("r")
        )
        return result.outcome

    def outcomes(self) -> list[tuple[str, str]]:
        data = (self.folder / OUTCOME).read_bytes()
        return [(o.outcome, o.reason) for o in parse_outcomes(data)]

    def status_text(self) -> str:
        return "\n".join(render_system(read_system_block(self.config)))


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return make_signer(tmp_path / "keys", "update-signer")


@pytest.fixture
def box(tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Box]:
    service = RaucService(tmp_path / "rauc", keyring=signer.cert)
    service.start()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", service.address)
    try:
        yield Box(tmp_path, service, signer)
    finally:
        service.stop()


class TestInstall:
    """A good bundle is installed into the inactive slot, then the box reboots."""

    def test_signed_bundle_installed_into_slot_b(self, box: Box, tmp_path: Path) -> None:
        bundle = make_bundle(tmp_path / "b", "v2", version="2", signer=box.signer)
        slot_a = box.service.slot_bytes("A")
        request = box.request(bundle, "2")

        assert box.install() == "installed"
        assert [o for o, _ in box.outcomes()] == ["installing", "installed"]
        record = parse_outcomes((box.folder / OUTCOME).read_bytes())[-1]
        assert (record.version, record.sha256, record.slot) == ("2", request.sha256, "B")
        assert (
            box.service.slot_bytes("B")[: 1024 * 1024]
            == (tmp_path / "b" / "v2.content" / "rootfs.ext4").read_bytes()
        )
        assert box.service.slot_bytes("A") == slot_a  # the running slot untouched
        assert box.reboots == ["r"]
        assert not (box.folder / REQUEST).exists()
        assert "last update: version 2 INSTALLED (slot B)" in box.status_text()

    def test_rauc_down_fails_and_attempts_are_bounded(self, box: Box, tmp_path: Path) -> None:
        bundle = make_bundle(tmp_path / "b", "v2", version="2", signer=box.signer)
        box.service.stop()  # no rauc service on the bus: the D-Bus client fails
        for _ in range(3):
            box.request(bundle, "2")
            assert box.install() == "failed"
        box.request(bundle, "2")
        assert box.install() == "failed"
        outcomes = box.outcomes()
        assert [o for o, _ in outcomes] == ["installing", "failed"] * 3 + ["failed"]
        assert "rauc status failed" in outcomes[1][1]
        assert outcomes[-1][1] == "tried 3 times already; not again"
        assert box.reboots == []

    def test_an_unexpected_error_never_leaves_the_request(self, box: Box, tmp_path: Path) -> None:
        box.request(make_bundle(tmp_path / "b", "v2", version="2", signer=box.signer), "2")
        (box.folder / OUTCOME).mkdir()  # the record cannot be written
        assert box.install() == "dropped"
        assert not (box.folder / REQUEST).exists()  # the path unit does not loop


class TestRefusals:
    """Unsigned, another key, truncated, another compatible: refused, slot B untouched."""

    @pytest.mark.parametrize(
        ("case", "reason"),
        [
            ("unsigned", "signature check failed: rauc info failed"),
            ("wrong-key", "signature check failed: rauc info failed"),
            ("truncated", "signature check failed: rauc info failed"),
            ("wrong-compatible", "bundle is for compatible 'school-gateway-arm64'"),
            ("wrong-version", "bundle says version '3', the manifest says '2'"),
        ],
    )
    def test_refused(self, box: Box, tmp_path: Path, case: str, reason: str) -> None:
        folder = tmp_path / "b"
        if case == "unsigned":
            bundle = make_bundle(folder, case, version="2", signer=None)
        elif case == "wrong-key":
            other = make_signer(tmp_path / "other-keys", "someone-else")
            bundle = make_bundle(folder, case, version="2", signer=other)
        elif case == "truncated":
            bundle = make_bundle(folder, case, version="2", signer=box.signer)
            bundle.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
        elif case == "wrong-compatible":
            bundle = make_bundle(
                folder, case, version="2", signer=box.signer, compatible="school-gateway-arm64"
            )
        else:
            bundle = make_bundle(folder, case, version="3", signer=box.signer)
        slot_b = box.service.slot_bytes("B")
        box.request(bundle, "2")

        assert box.install() == "refused"
        ((what, why),) = box.outcomes()
        assert what == "refused" and reason in why
        assert box.service.slot_bytes("B") == slot_b  # nothing written
        assert box.reboots == []
        assert not (box.folder / REQUEST).exists()  # the path unit does not loop
        text = box.status_text()
        assert "last update: version 2 REFUSED" in text and reason in text

    def test_wrong_key_reason_is_rauc_own(self, box: Box, tmp_path: Path) -> None:
        other = make_signer(tmp_path / "other-keys", "someone-else")
        box.request(make_bundle(tmp_path / "b", "k", version="2", signer=other), "2")
        box.install()
        assert "signature verification failed" in box.outcomes()[-1][1]

    def test_file_not_the_manifest_bytes_refused_before_rauc(
        self, box: Box, tmp_path: Path
    ) -> None:
        bundle = make_bundle(tmp_path / "b", "v2", version="2", signer=box.signer)
        request = box.request(bundle, "2")
        Path(request.bundle).write_bytes(b"x" * request.size)  # same size, other bytes
        assert box.install() == "refused"
        assert "bundle sha256 is" in box.outcomes()[-1][1]

    def test_outside_the_window_dropped_without_outcome(self, box: Box, tmp_path: Path) -> None:
        hour = time.localtime().tm_hour
        closed = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"
        box.config = box.make_config({"system_update": {"window": closed}})
        box.request(make_bundle(tmp_path / "b", "v2", version="2", signer=box.signer), "2")
        assert box.install() == "dropped"
        assert not (box.folder / OUTCOME).exists()
        assert not (box.folder / REQUEST).exists()


class TestHealthCheck:
    """The first boot of the new slot is judged; the other slot's boot is a rollback."""

    def boot(self, box: Box, slot: str, config: Config, boot_id: str | None = None) -> str:
        cmdline = box.tmp_path / f"cmdline-{slot}"
        cmdline.write_text(f"BOOT_IMAGE=/vmlinuz root=PARTLABEL=root{slot} rauc.slot={slot}\n")

        async def check() -> str:
            return await run_health_check(
                config,
                box.rauc(),
                reboot=lambda: box.reboots.append(slot),
                cmdline=cmdline,
                boot_id=boot_id,
            )

        return asyncio.run(check())

    def installed(self, box: Box, config: Config) -> None:
        record = outcome("2", "ab" * 32, "installed", at=time.time(), slot="B")
        write_atomically(update_dir(config.gateway.state_dir) / OUTCOME, render_outcomes((record,)))

    async def test_healthy_new_slot_marked_good(self, box: Box, start_gateway: Any) -> None:
        running = await start_gateway({"system_update": box.system_tables()})
        config = running.gateway.config
        self.installed(box, config)
        verdict = await asyncio.to_thread(self.boot, box, "B", config)
        assert verdict == "marked-good"
        outcomes = parse_outcomes((update_dir(config.gateway.state_dir) / OUTCOME).read_bytes())
        assert [o.outcome for o in outcomes] == ["installed", "booted", "marked-good"]
        assert box.reboots == []

    async def test_gateway_not_ready_fails_then_rollback_recorded(
        self, box: Box, start_gateway: Any
    ) -> None:
        running = await start_gateway({"system_update": box.system_tables()})
        config = running.gateway.config
        self.installed(box, config)
        # The gateway's READY is from another boot: this boot's gateway never came up.
        verdict = await asyncio.to_thread(self.boot, box, "B", config, "another-boot")
        assert verdict == "health-check-failed"
        assert box.reboots == ["B"]
        # The bootloader fell back: the next boot is on slot A.
        assert await asyncio.to_thread(self.boot, box, "A", config) == "rolled-back"
        outcomes = parse_outcomes((update_dir(config.gateway.state_dir) / OUTCOME).read_bytes())
        assert [o.outcome for o in outcomes] == [
            "installed",
            "booted",
            "health-check-failed",
            "rolled-back",
        ]
        assert "gateway: the gateway has not reached READY since this boot" in outcomes[2].reason
        assert "booted slot A, version 2 was installed in slot B" in outcomes[3].reason
        # An established slot's boot: nothing recorded, marked good.
        assert await asyncio.to_thread(self.boot, box, "A", config) == "established"
        assert (
            len(parse_outcomes((update_dir(config.gateway.state_dir) / OUTCOME).read_bytes())) == 4
        )


class TestHealthCheckLikeATablet:
    """The production shape: TLS listener, client certificate of the school CA, ACL."""

    async def test_tls_tablet_connection_passes(self, box: Box, start_secure_gateway: Any) -> None:
        running = await start_secure_gateway({"system_update": box.system_tables()})
        config = running.gateway.config
        assert not config.school_broker.lab_plain_listener
        TestHealthCheck().installed(box, config)
        assert await asyncio.to_thread(TestHealthCheck().boot, box, "B", config) == "marked-good"
        # The throw-away certificate was never left in the state directory.
        assert list((config.gateway.state_dir / "pki").glob("health-check-probe-*")) == []

    async def test_no_listener_fails_naming_it(self, box: Box, start_secure_gateway: Any) -> None:
        running = await start_secure_gateway({"system_update": box.system_tables()})
        broker = dataclasses.replace(running.gateway.config.school_broker, tls_port=free_port())
        config = dataclasses.replace(running.gateway.config, school_broker=broker)
        TestHealthCheck().installed(box, config)
        assert await asyncio.to_thread(TestHealthCheck().boot, box, "B", config) == (
            "health-check-failed"
        )
        last = parse_outcomes((update_dir(config.gateway.state_dir) / OUTCOME).read_bytes())[-1]
        assert f"tablets: no tablet connection on 127.0.0.1:{broker.tls_port}" in last.reason
