"""The tablet simulator against a real broker and gateway."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.lab.waiting import wait_until
from gateway.sim.fleet import Fleet, FleetSettings
from gateway.state.shadow import load_tablets


class TestFleetThroughGateway:
    """Every simulated tablet ends up in the gateway's shadow with its latest report."""

    async def test_fifty_tablets_three_reports_each(self, start_gateway, school_broker):
        running = await start_gateway()
        fleet = Fleet(
            FleetSettings(
                host=school_broker.host,
                port=school_broker.port,
                tablets=50,
                interval_s=0,
                reports_per_tablet=3,
            )
        )
        await asyncio.wait_for(fleet.run(), 60)
        counters = running.gateway.counters
        assert await wait_until(lambda: counters.get("state_reports_stored") == 150, 20)
        tablets = await load_tablets(running.gateway._db)  # type: ignore[arg-type]
        assert len(tablets) == 50
        assert {t.state["seq"] for t in tablets} == {3}
        assert {t.group for t in tablets} == {"class-01", "class-02"}
        assert all(0 <= t.state["battery_pct"] <= 100 for t in tablets)
        # Each tablet said goodbye with its retained status after its quota.
        assert await wait_until(lambda: counters.get("presence_updates_stored") >= 100, 20)


@pytest.mark.slow
class TestThousandTablets:
    """One process plays 1,000 tablets, each its own MQTT client, on this machine."""

    async def test_thousand_tablets_connect_and_report(self, school_broker):
        import aiomqtt

        seen: set[str] = set()
        async with aiomqtt.Client(school_broker.host, school_broker.port) as watcher:
            await watcher.subscribe("tablets/+/state", qos=1)
            fleet = Fleet(
                FleetSettings(
                    host=school_broker.host,
                    port=school_broker.port,
                    tablets=1000,
                    interval_s=0,
                    reports_per_tablet=2,
                )
            )
            run = asyncio.create_task(fleet.run())
            async with asyncio.timeout(120):
                async for message in watcher.messages:
                    assert isinstance(message.payload, bytes)
                    seen.add(json.loads(message.payload)["device_id"])
                    if len(seen) == 1000:
                        break
            await asyncio.wait_for(run, 60)
        assert fleet.stats.reports_published == 2000
        assert fleet.stats.connect_failures == 0
