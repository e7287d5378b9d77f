"""Box health: pure choices over made-up readings, and one real reading."""

from __future__ import annotations

import json
import socket
from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from gateway.health.box import (
    BoxHealth,
    LanInterface,
    collect_box_health,
    default_route_interface,
    lan_interfaces,
    pick_soc_temperature,
)

Reading = namedtuple("Reading", "label current high critical")


class TestSocTemperature:
    """Choosing the SoC sensor from psutil.sensors_temperatures()."""

    def test_no_sensor_is_none(self) -> None:
        assert pick_soc_temperature({}) is None

    def test_raspberry_pi_sensor_preferred(self) -> None:
        sensors = {
            "nvme": [Reading("Composite", 38.0, None, None)],
            "cpu_thermal": [Reading("", 51.5, None, None)],
        }
        assert pick_soc_temperature(sensors) == 51.5

    def test_unknown_sensor_used_when_alone(self) -> None:
        assert pick_soc_temperature({"board": [Reading("", 40, None, None)]}) == 40.0

    def test_garbage_readings_skipped(self) -> None:
        sensors = {"cpu_thermal": [Reading("", float("nan"), None, None)], "acpitz": []}
        assert pick_soc_temperature(sensors) is None


class TestNetwork:
    """LAN interfaces and the default route from netifaces values."""

    def test_loopback_and_addressless_interfaces_left_out(self) -> None:
        addresses = {"lo": ["127.0.0.1"], "wlan0": [], "eth0": ["10.1.2.3", "10.1.2.4"]}
        assert lan_interfaces(addresses) == (
            LanInterface(name="eth0", ipv4=("10.1.2.3", "10.1.2.4")),
        )

    def test_default_route_ipv4_first(self) -> None:
        gateways = {
            "default": {
                socket.AF_INET6: ("fe80::1", "wlan0"),
                socket.AF_INET: ("10.1.2.1", "eth0"),
            }
        }
        assert default_route_interface(gateways) == "eth0"

    def test_ipv6_only_default_route(self) -> None:
        gateways = {"default": {socket.AF_INET6: ("fe80::1", "wlan0")}}
        assert default_route_interface(gateways) == "wlan0"

    def test_no_default_route(self) -> None:
        assert default_route_interface({"default": {}}) is None
        assert default_route_interface({}) is None


class TestCollect:
    """A real reading of this machine."""

    def test_reading_is_sane(self, tmp_path: Path) -> None:
        health = collect_box_health(tmp_path)
        assert 0.0 <= health.cpu_percent <= 100.0 * (psutil.cpu_count() or 1)
        assert 0 < health.memory_available_bytes <= health.memory_total_bytes
        assert 0 < health.disk_free_bytes <= health.disk_total_bytes
        assert health.uptime_s > 0
        assert all(not ip.startswith("127.") for i in health.interfaces for ip in i.ipv4)
        assert health.has_default_route == (health.default_route_interface is not None)

    def test_state_dir_not_created_yet(self, tmp_path: Path) -> None:
        health = collect_box_health(tmp_path / "not" / "yet")
        assert health.disk_total_bytes == psutil.disk_usage(str(tmp_path)).total

    def test_missing_sensor_support_is_none(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def broken() -> dict[str, list[Reading]]:
            raise OSError("no /sys/class/hwmon")

        monkeypatch.setattr(psutil, "sensors_temperatures", broken)
        assert collect_box_health(tmp_path).soc_temperature_c is None
        monkeypatch.delattr(psutil, "sensors_temperatures")
        assert collect_box_health(tmp_path).soc_temperature_c is None

    def test_as_dict_is_json(self, tmp_path: Path) -> None:
        health = collect_box_health(tmp_path)
        data = json.loads(json.dumps(health.as_dict()))
        assert data["disk_free_bytes"] == health.disk_free_bytes
        assert data["has_default_route"] == health.has_default_route
        assert isinstance(data["interfaces"], list)

    def test_frozen(self, tmp_path: Path) -> None:
        health = collect_box_health(tmp_path)
        assert isinstance(health, BoxHealth)
        with pytest.raises(AttributeError):
            health.cpu_percent = 1.0  # type: ignore[misc]
