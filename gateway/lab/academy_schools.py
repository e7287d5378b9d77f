"""Several schools reporting to one academy broker (demo and browser tests).

Each :class:`SchoolSite` is a real school: its own Mosquitto, a real gateway
(``python -m gateway run``, a subprocess) enrolled with the academy's public
key, and simulated tablets (gateway.sim.fleet) that report and answer
commands. :class:`AcademySite` adds the academy: its broker is the caller's,
an ingest worker and the console (in this process), on a private PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.broker.mosquitto_config import render_mosquitto_config
from gateway.config import config_from_mapping
from gateway.lab.gateway_process import GatewayProcess
from gateway.lab.mosquitto import MosquittoProcess, free_port
from gateway.sim.commands import SimulatedCommands
from gateway.sim.fleet import Fleet, FleetSettings


def school_tables(
    workdir: Path,
    *,
    school_id: str,
    gateway_id: str,
    school_port: int,
    academy_port: int,
    academy_keys: dict[str, str],
    summary_interval_s: float = 3.0,
) -> dict[str, dict[str, Any]]:
    return {
        "gateway": {
            "school_id": school_id,
            "gateway_id": gateway_id,
            "state_dir": str(workdir / "state"),
        },
        # Development only: anonymous plain MQTT on loopback (docs/security.md).
        "school_broker": {"host": "127.0.0.1", "port": school_port, "lab_plain_listener": True},
        "academy_broker": {"host": "127.0.0.1", "port": academy_port},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "uplink": {"summary_interval_s": summary_interval_s},
        "cache": {"offpeak_windows": []},
        "commands": {"academy_keys": academy_keys},
    }


@dataclass
class SchoolSite:
    """One school: broker, gateway subprocess, simulated tablets."""

    school_id: str
    gateway_id: str
    workdir: Path
    academy_port: int
    academy_keys: dict[str, str]
    tablets: int = 6
    interval_s: float = 2.0
    broker: MosquittoProcess | None = None
    gateway: GatewayProcess | None = None
    fleet: Fleet | None = None
    commands: SimulatedCommands = field(default_factory=SimulatedCommands)
    _fleet_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        port = free_port()
        tables = school_tables(
            self.workdir,
            school_id=self.school_id,
            gateway_id=self.gateway_id,
            school_port=port,
            academy_port=self.academy_port,
            academy_keys=self.academy_keys,
        )
        text = render_mosquitto_config(config_from_mapping(tables))
        self.broker = MosquittoProcess(self.workdir / "school-broker", text, port=port)
        await self.broker.start()
        self.gateway = GatewayProcess(tables, self.workdir / "gateway")
        await self.gateway.start()
        await self.gateway.wait_connected(60)
        self.fleet = Fleet(
            FleetSettings(
                host="127.0.0.1",
                port=port,
                tablets=self.tablets,
                interval_s=self.interval_s,
                prefix="tab",
                stay_online=True,
            ),
            on_command=self.commands,
        )
        self._fleet_task = asyncio.create_task(self.fleet.run(), name=f"fleet-{self.school_id}")

    async def stop(self) -> None:
        if self._fleet_task is not None:
            self._fleet_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._fleet_task
        if self.gateway is not None:
            with contextlib.suppress(ProcessLookupError):
                await self.gateway.stop()
        if self.broker is not None:
            await self.broker.stop()


async def start_schools(
    workdir: Path,
    academy_port: int,
    academy_keys: dict[str, str],
    *,
    count: int,
    tablets: int,
    interval_s: float = 2.0,
) -> list[SchoolSite]:
    """``count`` schools (school-01..., gw-01...), started one after the other."""
    sites = [
        SchoolSite(
            school_id=f"school-{n:02d}",
            gateway_id=f"gw-{n:02d}",
            workdir=workdir / f"school-{n:02d}",
            academy_port=academy_port,
            academy_keys=academy_keys,
            tablets=tablets,
            interval_s=interval_s,
        )
        for n in range(1, count + 1)
    ]
    started: list[SchoolSite] = []
    try:
        for site in sites:
            await site.start()
            started.append(site)
    except BaseException:
        for site in started:
            await site.stop()
        raise
    return sites
