"""A power cut right after the tablets' PUBACKs loses no command result (issue 15, item 8).

The school broker acknowledges a tablet's result as soon as it has it, in
memory; the gateway commits it a moment later. Here the gateway is frozen
(SIGSTOP) so it cannot commit, the tablets answer and get the broker's
PUBACKs, then broker and gateway are SIGKILLed together and restarted. The
command has expired by then, so nothing delivers it again: only the
tablets' re-sends (until the gateway confirms each result after its commit)
bring the results back. Each must reach the academy exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter

import aiomqtt
import pytest

from gateway.lab.commands import AcademySigner, upstream
from gateway.lab.gateway_process import GatewayProcess
from gateway.lab.mosquitto import free_port
from gateway.lab.waiting import wait_until
from gateway.sim.commands import SimulatedCommands
from gateway.sim.fleet import Fleet, FleetSettings, SimulatedTablet
from gateway.topics import academy_commands

SCHOOL = "school-test"
TABLETS = 20
TTL_S = 10.0


class HeldAnswers(SimulatedCommands):
    """Tablets that receive a command but answer only when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: set[str] = set()
        self.release = asyncio.Event()

    async def __call__(
        self, tablet: SimulatedTablet, client: aiomqtt.Client, payload: bytes
    ) -> None:
        self.arrived.add(tablet.device_id)
        await self.release.wait()
        await super().__call__(tablet, client, payload)


@pytest.mark.slow
class TestPowerCut:
    """SIGKILL of broker and gateway together right after the tablets' PUBACKs."""

    async def test_every_result_reaches_the_academy_exactly_once(
        self, tmp_path, school_broker, academy_broker, academy_listener
    ):
        signer = AcademySigner(SCHOOL)
        gateway = GatewayProcess(
            {
                "gateway": {
                    "school_id": SCHOOL,
                    "gateway_id": "gw-cut",
                    "state_dir": str(tmp_path / "state"),
                },
                "school_broker": {
                    "host": "127.0.0.1",
                    "port": school_broker.port,
                    "lab_plain_listener": True,
                },
                "academy_broker": {"host": "127.0.0.1", "port": academy_broker.port},
                "http": {"host": "127.0.0.1", "port": free_port()},
                "commands": {"academy_keys": signer.config_keys()},
            },
            tmp_path / "gateway",
        )
        await gateway.start()
        assert await gateway.wait_connected(30)
        tablets = HeldAnswers()
        fleet = Fleet(
            FleetSettings(
                host=school_broker.host,
                port=school_broker.port,
                tablets=TABLETS,
                interval_s=0,
                reports_per_tablet=1,
                stay_online=True,
            ),
            on_command=tablets,
        )
        fleet_task = asyncio.create_task(fleet.run(), name="fleet")
        try:
            assert await academy_listener.wait_for(
                lambda: (
                    len({m["body"]["device_id"] for m in upstream(academy_listener, "state")})
                    == TABLETS
                ),
                30,
            ), "the gateway never relayed every tablet's first report"
            command_id, envelope = signer.envelope("lock", ttl_s=TTL_S)
            not_after = time.time() + TTL_S
            async with aiomqtt.Client(academy_broker.host, academy_broker.port) as academy:
                await academy.publish(academy_commands(SCHOOL), envelope, qos=1)
            assert await wait_until(lambda: len(tablets.arrived) == TABLETS, TTL_S / 2)

            os.kill(gateway.pid, signal.SIGSTOP)  # it can no longer commit anything
            tablets.release.set()
            key = (command_id, "done")
            assert await wait_until(
                lambda: sum(key in m.broker_acked for m in tablets.memory.values()) == TABLETS,
                TTL_S / 2,
            ), "the tablets' results were not acknowledged by the broker"
            await school_broker.kill()
            await gateway.kill()

            # Nothing can deliver the command again once it expired.
            assert await wait_until(lambda: time.time() > not_after + 0.5, TTL_S + 5, 0.1)
            await school_broker.start()
            await gateway.start()
            assert await gateway.wait_connected(30)

            def done_results() -> Counter[str]:
                return Counter(
                    m["body"]["device_id"]
                    for m in upstream(academy_listener, "result")
                    if m["body"].get("type") == "delivery"
                    and m["body"]["command_id"] == command_id
                    and m["body"]["status"] == "done"
                )

            assert await academy_listener.wait_for(lambda: len(done_results()) == TABLETS, 30), (
                f"{len(done_results())} of {TABLETS} results reached the academy"
            )
            assert await wait_until(lambda: tablets.unconfirmed() == 0, 30)
            assert done_results() == {t.device_id: 1 for t in fleet.tablets}
            assert all(m.applications[command_id] == 1 for m in tablets.memory.values())
        finally:
            for tablet in fleet.tablets:
                tablet.leave()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(fleet_task, 20)
            await gateway.stop()
