"""Helpers for command tests: the school, sending a signed envelope, an online fleet."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt

from gateway.lab.commands import AcademySigner
from gateway.lab.waiting import wait_until
from gateway.sim.commands import SimulatedCommands
from gateway.sim.fleet import Fleet, FleetSettings
from gateway.topics import academy_commands

SCHOOL = "school-test"


async def send(academy_broker, envelope: bytes) -> None:
    async with aiomqtt.Client(academy_broker.host, academy_broker.port) as client:
        await client.publish(academy_commands(SCHOOL), envelope, qos=1)


@contextlib.asynccontextmanager
async def online_fleet(school_broker, gateway, tablets: int, prefix: str = "tab"):
    """``tablets`` simulated tablets, online, known to the gateway with their group."""
    applier = SimulatedCommands()
    fleet = Fleet(
        FleetSettings(
            host=school_broker.host,
            port=school_broker.port,
            tablets=tablets,
            interval_s=0,
            reports_per_tablet=1,
            prefix=prefix,
            stay_online=True,
        ),
        on_command=applier,
    )
    task = asyncio.create_task(fleet.run(), name="fleet")
    assert await wait_until(
        lambda: (
            gateway.counters.get("state_reports_stored") >= tablets
            and gateway.counters.get("presence_updates_stored") >= tablets
        ),
        30,
        what="the gateway saw every tablet's birth and first report",
    )
    try:
        yield fleet, applier
    finally:
        stored = gateway.counters.get("presence_updates_stored")
        for tablet in fleet.tablets:
            tablet.leave()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)
        # Let the gateway store the goodbyes before the test stops it: state
        # ingest's batcher can miss a cancellation racing with a message
        # (asyncio.wait_for on Python 3.11), which would stall the shutdown.
        assert await wait_until(
            lambda: gateway.counters.get("presence_updates_stored") >= stored + tablets, 10
        )


def keys(signer: AcademySigner) -> dict:
    return {"commands": {"academy_keys": signer.config_keys()}}
