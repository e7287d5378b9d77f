"""What the box itself looks like: CPU, memory, disk, temperature, network.

``collect_box_health`` is the only function that touches the machine (psutil
and netifaces); choosing the SoC sensor, the LAN interfaces and the uplink
route are pure functions over the values those libraries return, tested
with made-up readings. Nothing here raises for a missing sensor, a vanished
interface or a state directory that does not exist yet: the reading is
None, empty or taken from the nearest existing parent directory.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netifaces
import psutil

logger = logging.getLogger(__name__)

# psutil sensor names, best first: the Raspberry Pi's SoC, then common x86
# and arm64 boards (a developer laptop, the amd64 test image).
SOC_SENSORS = ("cpu_thermal", "soc_thermal", "coretemp", "k10temp", "acpitz", "cpu-thermal")


@dataclass(frozen=True)
class LanInterface:
    """One network interface and its IPv4 addresses."""

    name: str
    ipv4: tuple[str, ...]


@dataclass(frozen=True)
class BoxHealth:
    """One reading of the box's health."""

    cpu_percent: float
    load_1m: float
    memory_total_bytes: int
    memory_available_bytes: int
    disk_total_bytes: int
    disk_free_bytes: int
    soc_temperature_c: float | None
    uptime_s: float
    interfaces: tuple[LanInterface, ...]
    default_route_interface: str | None

    @property
    def has_default_route(self) -> bool:
        """Whether the box has a route out of the LAN (an uplink may still be down)."""
        return self.default_route_interface is not None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view, for the admin API and the upstream summary."""
        return {
            "cpu_percent": self.cpu_percent,
            "load_1m": self.load_1m,
            "memory_total_bytes": self.memory_total_bytes,
            "memory_available_bytes": self.memory_available_bytes,
            "disk_total_bytes": self.disk_total_bytes,
            "disk_free_bytes": self.disk_free_bytes,
            "soc_temperature_c": self.soc_temperature_c,
            "uptime_s": self.uptime_s,
            "interfaces": [{"name": i.name, "ipv4": list(i.ipv4)} for i in self.interfaces],
            "has_default_route": self.has_default_route,
            "default_route_interface": self.default_route_interface,
        }


def pick_soc_temperature(sensors: Mapping[str, Sequence[Any]]) -> float | None:
    """The SoC temperature in °C from ``psutil.sensors_temperatures()``, or None.

    Prefers the known SoC sensors in ``SOC_SENSORS`` order, then any sensor
    with a reading; readings that are not finite numbers are skipped.
    """
    names = [name for name in SOC_SENSORS if name in sensors]
    names += sorted(name for name in sensors if name not in SOC_SENSORS)
    for name in names:
        for reading in sensors[name]:
            current = getattr(reading, "current", None)
            if isinstance(current, int | float) and math.isfinite(current) and abs(current) < 1000:
                return float(current)
    return None


def lan_interfaces(addresses: Mapping[str, Iterable[str]]) -> tuple[LanInterface, ...]:
    """Interfaces with at least one non-loopback IPv4 address, sorted by name."""
    found = []
    for name in sorted(addresses):
        ipv4 = tuple(a for a in addresses[name] if a and not a.startswith("127."))
        if ipv4:
            found.append(LanInterface(name=name, ipv4=ipv4))
    return tuple(found)


def default_route_interface(gateways: Mapping[Any, Any]) -> str | None:
    """The interface of the default route from ``netifaces.gateways()``, IPv4 first."""
    defaults = gateways.get("default") or {}
    for family in (socket.AF_INET, socket.AF_INET6):
        route = defaults.get(family)
        if isinstance(route, tuple) and len(route) >= 2:
            return str(route[1])
    return None


def disk_usage_of(path: Path) -> tuple[int, int]:
    """Total and free bytes of the filesystem holding ``path`` or its nearest existing parent."""
    for candidate in (path, *path.parents):
        try:
            usage = psutil.disk_usage(str(candidate))
        except OSError:
            continue
        return usage.total, usage.free
    return 0, 0


def _uptime_s() -> float:
    # CLOCK_BOOTTIME ignores wall-clock steps: a Pi has no RTC and its clock
    # jumps when NTP first syncs, which would skew time.time() - boot_time().
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if clock is not None:
        return time.clock_gettime(clock)
    return max(0.0, time.time() - psutil.boot_time())


def _read_temperature() -> float | None:
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return None
    try:
        return pick_soc_temperature(reader())
    except (OSError, ValueError, RuntimeError) as exc:
        logger.debug("no temperature reading: %s", exc)
        return None


def _read_ipv4_addresses() -> dict[str, list[str]]:
    addresses: dict[str, list[str]] = {}
    for name in netifaces.interfaces():
        try:
            entries = netifaces.ifaddresses(name).get(netifaces.AF_INET) or []
        except ValueError:  # the interface went away between the two calls
            continue
        addresses[str(name)] = [str(entry.get("addr", "")) for entry in entries]
    return addresses


def lan_addresses() -> list[str]:
    """IPv4 addresses of the box's LAN interfaces, loopback excluded."""
    return [a for interface in lan_interfaces(_read_ipv4_addresses()) for a in interface.ipv4]


def _read_default_route() -> str | None:
    try:
        return default_route_interface(netifaces.gateways())
    except (OSError, ValueError) as exc:
        logger.debug("no routing table: %s", exc)
        return None


def collect_box_health(state_dir: Path) -> BoxHealth:
    """Read the box now; fast (no sampling sleep), never raises for a missing sensor.

    ``cpu_percent`` is the CPU use since the previous call in this process
    (0.0 on the first call), so call it on a regular schedule.
    """
    memory = psutil.virtual_memory()
    disk_total, disk_free = disk_usage_of(state_dir)
    try:
        load_1m = float(psutil.getloadavg()[0])
    except OSError:
        load_1m = 0.0
    return BoxHealth(
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        load_1m=load_1m,
        memory_total_bytes=int(memory.total),
        memory_available_bytes=int(memory.available),
        disk_total_bytes=disk_total,
        disk_free_bytes=disk_free,
        soc_temperature_c=_read_temperature(),
        uptime_s=_uptime_s(),
        interfaces=lan_interfaces(_read_ipv4_addresses()),
        default_route_interface=_read_default_route(),
    )
