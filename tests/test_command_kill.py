"""SIGKILL the gateway between receipt and delivery, again and again.

The gateway runs as a subprocess (``python -m gateway run``); the simulated
tablets live in the test process, so what they applied survives every kill.
Each round sends one signed command and kills the gateway at a moment picked
at random among: right after the academy broker took the command, right
after the gateway logged it accepted, after the first tablet got it, after
some of the tablets got it. No accepted command may be lost, none applied
twice by a tablet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import aiomqtt
import pytest

from gateway.lab.commands import AcademySigner, latest_progress, results_for, upstream
from gateway.lab.gateway_process import GatewayProcess
from gateway.lab.mosquitto import free_port
from gateway.lab.waiting import wait_until
from gateway.sim.commands import SimulatedCommands
from gateway.sim.fleet import Fleet, FleetSettings
from gateway.topics import academy_commands

log = logging.getLogger(__name__)

SCHOOL = "school-test"
TABLETS = 30
ROUNDS = 22
ACTIONS = [
    ("lock", {}),
    ("unlock", {}),
    ("message", {"text": "Rangez les tablettes"}),
    ("set_policy", {"camera": False}),
    ("open_url", {"url": "https://lumni.fr/"}),
]


@pytest.mark.slow
class TestKilledGateway:
    """Random SIGKILLs between receipt and delivery lose nothing and double nothing."""

    async def test_no_accepted_command_lost_none_applied_twice(
        self, tmp_path, school_broker, academy_broker, academy_listener
    ):
        signer = AcademySigner(SCHOOL)
        gateway = GatewayProcess(
            {
                "gateway": {
                    "school_id": SCHOOL,
                    "gateway_id": "gw-kill",
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
        assert await gateway.wait_connected(30), "gateway did not connect"

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
        fleet_task = asyncio.create_task(fleet.run(), name="fleet")
        rng = random.Random(7)
        sent: list[str] = []
        triggers: list[str] = []
        try:
            # Every tablet known (with its group) before the first command.
            warmup_id, warmup = signer.envelope("request_state", targets={"all": True})
            assert await academy_listener.wait_for(
                lambda: (
                    len({m["body"]["device_id"] for m in upstream(academy_listener, "state")})
                    == TABLETS
                ),
                30,
            )
            async with aiomqtt.Client(academy_broker.host, academy_broker.port) as academy:
                await academy.publish(academy_commands(SCHOOL), warmup, qos=1)
                assert await wait_until(lambda: len(applier.answered(warmup_id)) == TABLETS, 30)

                for round_number in range(ROUNDS):
                    action, params = ACTIONS[round_number % len(ACTIONS)]
                    targets = rng.choice([{"all": True}, {"group": "class-01"}])
                    command_id, envelope = signer.envelope(action, targets=targets, params=params)
                    await academy.publish(academy_commands(SCHOOL), envelope, qos=1)
                    sent.append(command_id)
                    trigger = rng.choice(["published", "accepted", "first", "some"])
                    triggers.append(trigger)
                    if trigger == "accepted":
                        await gateway.wait_for_line(f"command {command_id} accepted", 15)
                    elif trigger == "first":
                        assert await wait_until(
                            lambda c=command_id: len(applier.received(c)) >= 1, 15
                        )
                    elif trigger == "some":
                        some = rng.randint(2, TABLETS - 1)
                        assert await wait_until(
                            lambda c=command_id, n=some: len(applier.received(c)) >= n, 15
                        )
                    await gateway.kill()
                    await gateway.start()
                    assert await gateway.wait_connected(30), (
                        f"no reconnect after kill {round_number}"
                    )

            # Everything settles: every command applied once by each of its targets.
            def all_applied() -> bool:
                return all(len(applier.answered(c)) == TABLETS for c in sent)

            assert await wait_until(all_applied, 60), {c: len(applier.answered(c)) for c in sent}
            for command_id in sent:
                applications = applier.applications(command_id)
                assert applications == {t.device_id: 1 for t in fleet.tablets}, command_id
            # ... and every result reached the academy.
            assert await wait_until(
                lambda: all(
                    len(results_for(academy_listener, c)) == TABLETS
                    and (latest_progress(academy_listener, c) or {}).get("complete")
                    for c in sent
                ),
                60,
            ), [
                (c, len(results_for(academy_listener, c)), latest_progress(academy_listener, c))
                for c in sent
                if not (latest_progress(academy_listener, c) or {}).get("complete")
            ]
            for command_id in sent:
                assert set(results_for(academy_listener, command_id).values()) == {"done"}
                progress = latest_progress(academy_listener, command_id)
                assert progress is not None and progress["complete"], command_id
            # Tablets saw their commands in the order they were accepted.
            for memory in applier.memory.values():
                assert memory.order == [warmup_id, *sent]
            redeliveries = sum(m.deliveries[c] - 1 for m in applier.memory.values() for c in sent)
            log.info(
                "kill test: %d kills (%s); %d redeliveries absorbed by the tablets",
                ROUNDS,
                ", ".join(triggers),
                redeliveries,
            )
        finally:
            for tablet in fleet.tablets:
                tablet.leave()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(fleet_task, 20)
            await gateway.stop()
