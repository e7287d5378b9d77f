"""Helpers for the systemd unit tests: a scratch root for ``systemd-analyze --root=``."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GATEWAY_UNIT = REPO / "systemd" / "gateway.service"
MOSQUITTO_DROPIN = REPO / "systemd" / "mosquitto.service.d" / "school-gateway.conf"
RELOAD_UNITS = ("school-gateway-broker-reload.path", "school-gateway-broker-reload.service")
SYSTEM_UPDATE_UNITS = (
    "school-gateway-system-update.path",
    "school-gateway-system-update.service",
    "school-gateway-health-check.service",
)
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

# Debian bookworm's /lib/systemd/system/mosquitto.service (mosquitto 2.0.11),
# the unit the drop-in amends; embedded so the test does not need mosquitto.
DEBIAN_MOSQUITTO_UNIT = """\
[Unit]
Description=Mosquitto MQTT Broker
Documentation=man:mosquitto.conf(5) man:mosquitto(8)
After=network.target
Wants=network.target

[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/sbin/mosquitto -c /etc/mosquitto/mosquitto.conf
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
ExecStartPre=/bin/mkdir -m 740 -p /var/log/mosquitto
ExecStartPre=/bin/chown mosquitto /var/log/mosquitto
ExecStartPre=/bin/mkdir -m 740 -p /run/mosquitto
ExecStartPre=/bin/chown mosquitto /run/mosquitto

[Install]
WantedBy=multi-user.target
"""

EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)")

pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (Debian package systemd)"
)


def host_unit_dir() -> Path | None:
    """Where this host keeps systemd's own units (sysinit.target and friends)."""
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (candidate / "sysinit.target").is_file():
            return candidate
    return None


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, in order; repeated keys keep every value."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";", "[")):
            continue
        key, _, value = stripped.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def executables(text: str) -> set[str]:
    """The absolute paths of the programs a unit's Exec* lines run."""
    paths: set[str] = set()
    for key, values in unit_settings(text).items():
        if not key.startswith("Exec"):
            continue
        for value in values:
            if value:
                paths.add(value.split()[0].lstrip("-@:+!"))
    return paths


def analyze(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze against the scratch root."""
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, f"--root={root}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def make_root(root: Path, gateway_unit: str) -> Path:
    """A scratch root with systemd's units, ours, and stub executables."""
    system_units = host_unit_dir()
    if system_units is None:
        pytest.skip("systemd's own units (sysinit.target) are not installed on this host")
    units = root / "usr" / "lib" / "systemd" / "system"
    shutil.copytree(system_units, units, symlinks=True)
    (units / "mosquitto.service").write_text(DEBIAN_MOSQUITTO_UNIT)
    local = root / "etc" / "systemd" / "system"
    (local / "mosquitto.service.d").mkdir(parents=True)
    (local / "gateway.service").write_text(gateway_unit)
    reload_texts = []
    for name in (*RELOAD_UNITS, *SYSTEM_UPDATE_UNITS):
        reload_texts.append((REPO / "systemd" / name).read_text())
        (local / name).write_text(reload_texts[-1])
    dropin = MOSQUITTO_DROPIN.read_text()
    (local / "mosquitto.service.d" / "school-gateway.conf").write_text(dropin)
    texts = [gateway_unit, dropin, DEBIAN_MOSQUITTO_UNIT, *reload_texts]
    for program in set().union(*(executables(text) for text in texts)):
        stub = root / program.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


def exposure(root: Path, unit: str) -> float:
    """The overall exposure systemd-analyze security gives ``unit`` (0 safest, 10 worst)."""
    result = analyze(root, "security", "--offline=true", "--no-pager", unit)
    match = EXPOSURE.search(result.stdout + result.stderr)
    if match is None:
        pytest.fail(f"no exposure level in systemd-analyze output:\n{result.stdout}{result.stderr}")
    return float(match.group(2))


def complaints(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines of systemd-analyze output that concern our units."""
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if "gateway" in line or "mosquitto" in line]
