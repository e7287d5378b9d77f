"""Tablets that are offline when a command arrives get it when they come back.

"The next minutes" are compressed: the 200 tablets come back at random over
about 20 seconds of real time (some of them flapping: online for a moment,
off again, back later). The arrival schedule is the workload, not a wait.
"""

from __future__ import annotations

import asyncio
import logging
import random

import aiomqtt
import pytest

from gateway.lab.commands import AcademySigner, latest_progress, results_for, upstream
from gateway.lab.waiting import wait_until
from gateway.sim.commands import SimulatedCommands
from gateway.sim.fleet import Fleet, FleetSettings
from gateway.topics import academy_commands

log = logging.getLogger(__name__)

SCHOOL = "school-test"
TABLETS = 200
SPREAD_S = 20.0


async def tablets_online(gateway) -> int:
    return (await gateway.status())["tablets"]["online"]


async def poll(predicate, within_s: float) -> bool:
    """Poll an async predicate with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


@pytest.mark.slow
class TestOfflineTablets:
    """200 tablets offline at acceptance: each gets the command once; expired ones never."""

    async def test_every_tablet_coming_back_gets_it_once_and_expired_never(
        self, start_gateway, school_broker, academy_broker, academy_listener
    ):
        signer = AcademySigner(SCHOOL)
        running = await start_gateway({"commands": {"academy_keys": signer.config_keys()}})
        gateway = running.gateway
        applier = SimulatedCommands()
        fleet = Fleet(
            FleetSettings(
                host=school_broker.host,
                port=school_broker.port,
                tablets=TABLETS,
                interval_s=0,
                reports_per_tablet=1,
                stay_online=True,
            ),
            on_command=applier,
        )
        # Enrolment: every tablet is seen once (birth + a report with its group), then leaves.
        first = asyncio.create_task(fleet.run())
        assert await wait_until(lambda: gateway.counters.get("state_reports_stored") >= TABLETS, 60)
        for tablet in fleet.tablets:
            tablet.leave()
        await asyncio.wait_for(first, 30)
        assert await poll(lambda: _is(tablets_online(gateway), 0), 20)

        async with aiomqtt.Client(academy_broker.host, academy_broker.port) as academy:
            lock_id, lock = signer.envelope("lock", targets={"all": True}, ttl_s=3600)
            short_id, short = signer.envelope(
                "message", targets={"all": True}, params={"text": "too late"}, ttl_s=2
            )
            await academy.publish(academy_commands(SCHOOL), lock, qos=1)
            await academy.publish(academy_commands(SCHOOL), short, qos=1)

        # The short command expires while everyone is away: 200 expired results.
        assert await academy_listener.wait_for(
            lambda: (latest_progress(academy_listener, short_id) or {}).get("expired") == TABLETS,
            20,
        )
        assert set(results_for(academy_listener, short_id).values()) == {"expired"}

        rng = random.Random(4)
        flappers = set(rng.sample(range(TABLETS), 40))

        async def come_back(index: int) -> None:
            tablet = fleet.tablets[index]
            if index in flappers:  # online for a moment, away again, back later
                await asyncio.sleep(rng.uniform(0, SPREAD_S / 2))
                tablet.come_back()
                session = asyncio.create_task(tablet.run())
                assert await wait_until(lambda: tablet.online, 10)
                tablet.leave()
                await session
            await asyncio.sleep(rng.uniform(0, SPREAD_S))
            tablet.come_back()
            await tablet.run()

        async with asyncio.TaskGroup() as group:
            returns = [group.create_task(come_back(i)) for i in range(TABLETS)]
            assert await academy_listener.wait_for(
                lambda: (
                    len(results_for(academy_listener, lock_id)) == TABLETS
                    and (latest_progress(academy_listener, lock_id) or {}).get("complete")
                ),
                SPREAD_S + 60,
            )
            # Every tablet applied the lock exactly once and is locked.
            assert applier.applications(lock_id) == {t.device_id: 1 for t in fleet.tablets}
            assert all(t.model.locked for t in fleet.tablets)
            assert set(results_for(academy_listener, lock_id).values()) == {"done"}
            progress = latest_progress(academy_listener, lock_id)
            assert progress is not None
            assert (progress["targets"], progress["done"], progress["expired"]) == (200, 200, 0)
            # The expired command never reached a tablet.
            assert applier.received(short_id) == set()
            assert applier.refused_expired == 0
            stored = gateway.counters.get("presence_updates_stored")
            for tablet in fleet.tablets:
                tablet.leave()
        assert all(r.done() for r in returns)
        assert await wait_until(
            lambda: gateway.counters.get("presence_updates_stored") >= stored + TABLETS, 10
        )
        dupes = sum(m.deliveries[lock_id] - 1 for m in applier.memory.values())
        # Redeliveries happen (flappers, reconnects) and are absorbed by the command id.
        log.info("offline test: %d redeliveries of the lock absorbed by the tablets", dupes)
        assert len([m for m in upstream(academy_listener, "rejection")]) == 0


async def _is(value, expected) -> bool:
    return await value == expected
