"""Issue 15 item 10: expiry and replay protection across wall-clock jumps.

The gateway runs as a subprocess under libfaketime; the test moves its wall
clock while it runs (the monotonic clock is left alone, as on a box whose
NTP jumps). Real Mosquitto brokers, real tablets as MQTT clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.commands.clock import BoxClock
from gateway.lab.commands import AcademySigner, rejections, results_for
from gateway.lab.gateway_process import GatewayProcess
from gateway.lab.mosquitto import MosquittoProcess, free_port
from gateway.lab.waiting import wait_until
from gateway.lab.wall_clock import NO_FAKETIME, MovableWallClock, libfaketime
from gateway.store.database import Database
from gateway.topics import academy_commands

pytestmark = [
    pytest.mark.skipif(libfaketime() is None, reason=NO_FAKETIME),
    pytest.mark.slow,  # whole gateways under faketime, restarted across jumps
]

SCHOOL = "school-test"
HOUR = 3600
DAY = 86_400


def gateway_table(
    state_dir: Path, school: MosquittoProcess, academy: MosquittoProcess, signer: AcademySigner
) -> dict[str, dict[str, Any]]:
    return {
        "gateway": {"school_id": SCHOOL, "gateway_id": "gw-clock", "state_dir": str(state_dir)},
        "school_broker": {"host": "127.0.0.1", "port": school.port, "lab_plain_listener": True},
        "academy_broker": {"host": "127.0.0.1", "port": academy.port},
        "http": {"host": "127.0.0.1", "port": free_port()},
        # The expiry pass runs every second, so a jump is seen at once.
        "commands": {"academy_keys": signer.config_keys(), "redeliver_after_s": 1},
    }


class Tablet:
    """One tablet on the school broker: online, records commands, answers ``done``."""

    def __init__(self, broker: MosquittoProcess, device_id: str) -> None:
        self.broker = broker
        self.device_id = device_id
        self.received: list[str] = []
        self.ready = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client(
            self.broker.host, self.broker.port, identifier=self.device_id
        ) as client:
            await client.subscribe(f"tablets/{self.device_id}/commands", qos=1)
            await client.publish(
                f"tablets/{self.device_id}/status", b'{"online": true}', qos=1, retain=True
            )
            self.ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                command_id = json.loads(message.payload)["command_id"]
                self.received.append(command_id)
                answer = {"command_id": command_id, "status": "done"}
                await client.publish(f"tablets/{self.device_id}/results", json.dumps(answer), qos=1)


@contextlib.asynccontextmanager
async def online(tablet: Tablet) -> AsyncIterator[Tablet]:
    task = asyncio.create_task(tablet.run(), name=tablet.device_id)
    try:
        await asyncio.wait_for(tablet.ready.wait(), 10)
        yield tablet
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def send(academy: MosquittoProcess, envelope: bytes) -> None:
    async with aiomqtt.Client(academy.host, academy.port, identifier="academy-sender") as client:
        await client.publish(academy_commands(SCHOOL), envelope, qos=1)


@pytest.fixture
async def faked(
    tmp_path, school_broker, academy_broker
) -> AsyncIterator[tuple[GatewayProcess, MovableWallClock, AcademySigner]]:
    signer = AcademySigner(SCHOOL)
    clock = MovableWallClock(tmp_path / "clock")
    gateway = GatewayProcess(
        gateway_table(tmp_path / "state", school_broker, academy_broker, signer),
        tmp_path / "gw",
        env=clock.env(),
    )
    async with gateway:
        await gateway.wait_connected(30)
        yield gateway, clock, signer


class TestClockJumps:
    """A wall clock that jumps ahead and back expires nothing early and opens no replay."""

    async def test_two_hour_jump_expires_nothing_that_still_has_time(
        self, faked, school_broker, academy_broker, academy_listener
    ):
        gateway, clock, signer = faked
        waiting_id, waiting = signer.envelope("lock", targets={"devices": ["tab-0001"]}, ttl_s=HOUR)
        marker_id, marker = signer.envelope("lock", targets={"devices": ["tab-0002"]}, ttl_s=8)
        await send(academy_broker, waiting)
        await send(academy_broker, marker)
        assert await gateway.wait_for_line(f"command {marker_id} accepted", 20)

        clock.jump(2 * HOUR)  # NTP answers wrong for a while
        # The marker's 8 s pass on both clocks: an expiry pass ran with the clock ahead.
        assert await academy_listener.wait_for(
            lambda: results_for(academy_listener, marker_id) == {"tab-0002": "expired"}, 30
        )
        assert results_for(academy_listener, waiting_id) == {}
        clock.jump(0)

        async with online(Tablet(school_broker, "tab-0001")) as tablet:
            assert await wait_until(lambda: waiting_id in tablet.received, 20), (
                "the command with 59 minutes left was expired by the clock jump"
            )
            assert await academy_listener.wait_for(
                lambda: results_for(academy_listener, waiting_id) == {"tab-0001": "done"}, 20
            )

    async def test_eight_day_jump_does_not_forget_a_command_id(
        self, faked, school_broker, academy_broker, academy_listener
    ):
        gateway, clock, signer = faked
        command_id, envelope = signer.envelope(
            "lock", targets={"devices": ["tab-0003"]}, ttl_s=HOUR
        )
        async with online(Tablet(school_broker, "tab-0003")) as tablet:
            await send(academy_broker, envelope)
            assert await academy_listener.wait_for(
                lambda: results_for(academy_listener, command_id) == {"tab-0003": "done"}, 30
            )
            marker_id, marker = signer.envelope("lock", targets={"devices": ["tab-0009"]}, ttl_s=8)
            await send(academy_broker, marker)
            assert await gateway.wait_for_line(f"command {marker_id} accepted", 20)

            clock.jump(8 * DAY)  # past not_after + retention_s (7 days) on the wall clock
            assert await academy_listener.wait_for(
                lambda: results_for(academy_listener, marker_id) == {"tab-0009": "expired"}, 30
            )
            clock.jump(0)  # the clock comes back; the same envelope arrives again

            await send(academy_broker, envelope)
            assert await academy_listener.wait_for(
                lambda: any(
                    r["reason"] == "replayed" and r.get("command_id") == command_id
                    for r in rejections(academy_listener)
                ),
                30,
            ), f"replayed envelope not rejected; the tablet got {tablet.received}"
            assert tablet.received.count(command_id) == 1


class TestElapsedClockPersists:
    """The box's elapsed time carries over restarts and never goes back."""

    async def test_checkpoint_then_restart_continues_from_it(self, tmp_path):
        mono = [100.0]
        db = await Database.open(tmp_path / "gateway.db")
        try:
            first = BoxClock(monotonic=lambda: mono[0])
            await first.load(db)  # nothing stored: elapsed starts at 0
            mono[0] = 130.0
            async with db.transaction() as conn:
                await first.checkpoint(conn)
            assert first.elapsed() == 30.0
            mono[0] = 5.0  # a reboot: the monotonic clock starts again
            second = BoxClock(monotonic=lambda: mono[0])
            await second.load(db)
            mono[0] = 25.0
            assert second.elapsed() == 50.0  # 30 before the restart, 20 since
            assert second.deadline(not_after=1_000.0, now=900.0) == 150.0
        finally:
            await db.close()
