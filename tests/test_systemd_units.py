"""The systemd units: systemd-analyze verify and security exposure, offline.

systemd need not run as PID 1: ``systemd-analyze --root=`` loads the units
from a scratch root that holds systemd's own units, the unit files under test
and stub executables for every command they run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.systemd_kit import (
    GATEWAY_UNIT,
    MOSQUITTO_DROPIN,
    RELOAD_UNITS,
    REPO,
    SYSTEM_UPDATE_UNITS,
    analyze,
    complaints,
    exposure,
    make_root,
    unit_settings,
)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A scratch root holding the units as committed."""
    yield make_root(tmp_path / "root", GATEWAY_UNIT.read_text())


class TestVerify:
    """systemd-analyze verify accepts the units as systemd would load them."""

    def test_units_verify_cleanly(self, root: Path) -> None:
        result = analyze(
            root,
            "verify",
            "--man=no",
            "gateway.service",
            "mosquitto.service",
            *RELOAD_UNITS,
            *SYSTEM_UPDATE_UNITS,
        )
        assert complaints(result) == []
        assert result.returncode == 0

    def test_verify_catches_a_misspelt_key(self, tmp_path: Path) -> None:
        broken = GATEWAY_UNIT.read_text().replace("LockPersonality=", "LockPersonalty=")
        root = make_root(tmp_path / "broken", broken)
        result = analyze(root, "verify", "--man=no", "gateway.service")
        assert any("LockPersonalty" in line for line in complaints(result))

    def test_verify_catches_a_missing_program(self, root: Path) -> None:
        (root / "opt" / "school-gateway" / "bin" / "python").unlink()
        result = analyze(root, "verify", "--man=no", "gateway.service")
        assert result.returncode != 0


class TestSecurity:
    """systemd-analyze security exposure of the running services."""

    def test_gateway_exposure_at_most_2_5(self, root: Path) -> None:
        assert exposure(root, "gateway.service") <= 2.5

    def test_dropin_hardens_debian_mosquitto(self, root: Path) -> None:
        hardened = exposure(root, "mosquitto.service")
        dropin = root / "etc" / "systemd" / "system" / "mosquitto.service.d" / "school-gateway.conf"
        dropin.unlink()
        assert hardened <= 2.5 < exposure(root, "mosquitto.service")


class TestUnprovisioned:
    """Without /etc/school-gateway/gateway.toml neither daemon starts (nor restarts)."""

    @pytest.mark.parametrize("unit", ["gateway.service", "mosquitto.service"])
    def test_condition_skips_the_unit(self, root: Path, unit: str) -> None:
        if Path("/etc/school-gateway/gateway.toml").exists():
            pytest.skip("this host is provisioned: the condition would hold")
        result = analyze(root, "condition", f"--unit={unit}")
        output = result.stdout + result.stderr
        assert "ConditionPathExists=/etc/school-gateway/gateway.toml failed" in output
        assert result.returncode != 0

    def test_gateway_starts_after_provisioning(self) -> None:
        settings = unit_settings(GATEWAY_UNIT.read_text())
        assert "school-gateway-firstboot.service" in settings["After"][0].split()


class TestContract:
    """The settings the gateway and the firmware image rely on."""

    def test_gateway_unit(self) -> None:
        settings = unit_settings(GATEWAY_UNIT.read_text())
        assert settings["Type"] == ["notify"]
        assert settings["NotifyAccess"] == ["main"]
        assert settings["WatchdogSec"]
        assert settings["Restart"] == ["on-failure"]
        assert settings["User"] == ["school-gateway"]
        assert "DynamicUser" not in settings
        assert settings["StateDirectory"] == ["school-gateway"]
        assert settings["ConfigurationDirectory"] == ["school-gateway"]
        assert settings["ExecStart"] == [
            "/opt/school-gateway/bin/python -m gateway run"
            " --config /etc/school-gateway/gateway.toml"
        ]
        assert settings["CapabilityBoundingSet"] == [""]

    def test_mosquitto_dropin_replaces_exec_start(self) -> None:
        settings = unit_settings(MOSQUITTO_DROPIN.read_text())
        assert settings["ExecStart"] == [
            "",
            "/usr/sbin/mosquitto -c /var/lib/school-gateway/mosquitto/mosquitto.conf",
        ]
        # Debian's root-only pre-start steps are reset; the generator runs as
        # the service user, so the PKI it writes stays the gateway's.
        assert settings["ExecStartPre"][0] == ""
        assert "-m gateway mosquitto-config" in settings["ExecStartPre"][1]
        assert settings["User"] == ["school-gateway"]
        assert settings["CapabilityBoundingSet"] == [""]

    def test_reload_path_watches_the_broker_files(self) -> None:
        settings = unit_settings((REPO / "systemd" / RELOAD_UNITS[0]).read_text())
        assert settings["PathChanged"] == [
            "/var/lib/school-gateway/pki/acl",
            "/var/lib/school-gateway/pki/crl.pem",
        ]


class TestSystemUpdateUnits:
    """Root's update helper starts on the gateway's request; the health check on every boot."""

    def settings(self, name: str) -> dict[str, list[str]]:
        return unit_settings((REPO / "systemd" / name).read_text())

    def test_path_unit_watches_the_request(self) -> None:
        path = self.settings("school-gateway-system-update.path")
        assert path["PathExists"] == ["/var/lib/school-gateway/system-update/request.json"]
        assert path["Unit"] == ["school-gateway-system-update.service"]
        assert path["WantedBy"] == ["multi-user.target"]

    def test_helpers_run_the_gateway_cli_as_root(self) -> None:
        for name, action in (
            ("school-gateway-system-update.service", "install"),
            ("school-gateway-health-check.service", "health-check"),
        ):
            unit = self.settings(name)
            assert unit["Type"] == ["oneshot"]
            assert "User" not in unit  # root: rauc writes the inactive slot
            assert unit["ExecStart"] == [
                "/opt/school-gateway/bin/python -m gateway system-update "
                f"{action} --config /etc/school-gateway/gateway.toml"
            ]
        assert self.settings("school-gateway-health-check.service")["WantedBy"] == [
            "multi-user.target"
        ]
