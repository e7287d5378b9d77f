"""One tablet floods the school broker with junk; everyone else's commands and results flow.

Issue 15, items 6 and 9: a tablet publishing malformed reports as fast as it
can (its own topic, within its ACL) must not keep commands from the
well-behaved tablets, nor make the broker drop their results; the flooder is
counted and shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import aiohttp
import pytest

from gateway.lab.commands import AcademySigner, results_for
from gateway.lab.waiting import wait_until
from tests.test_commands_flow import SCHOOL, keys, online_fleet, send

TABLETS = 100
COMMANDS = 9
FLOODER = "tab-flood"


@contextlib.asynccontextmanager
async def flooding(host: str, port: int, device: str):
    """A flooding publisher in its own process; yields how many it published so far."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.lab.flood",
        host,
        str(port),
        device,
        stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    published = [0]

    async def read() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            if line.startswith(b"published "):
                published[0] = int(line.split()[1])

    reader = asyncio.create_task(read(), name="flood-output")
    try:
        yield published
    finally:
        process.kill()
        await process.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


@pytest.mark.slow
class TestFloodingTablet:
    """Commands reach every well-behaved tablet and their results the academy."""

    async def test_commands_and_results_flow_while_one_tablet_floods(
        self, start_gateway, school_broker, academy_broker, academy_listener
    ):
        signer = AcademySigner(SCHOOL)
        running = await start_gateway(keys(signer))
        gateway = running.gateway
        async with online_fleet(school_broker, gateway, TABLETS) as (_fleet, applier):
            async with flooding(school_broker.host, school_broker.port, FLOODER) as published:
                assert await wait_until(lambda: published[0] >= 100_000, 60), (
                    "the flooder did not get going"
                )
                sent = []
                for _ in range(COMMANDS):
                    command_id, envelope = signer.envelope("message", params={"text": "Bonjour"})
                    await send(academy_broker, envelope)
                    sent.append(command_id)

                def every_tablet_answered() -> bool:
                    return all(len(applier.answered(c)) == TABLETS for c in sent)

                answered = await wait_until(every_tablet_answered, 60, step_s=0.2)
                if not answered:
                    print(
                        "DEBUG",
                        {c: len(applier.answered(c)) for c in sent},
                        (await gateway.status())["counters"],
                    )
                assert answered, (
                    {c: len(applier.answered(c)) for c in sent},
                    (await gateway.status())["counters"],
                )
                assert await academy_listener.wait_for(
                    lambda: all(len(results_for(academy_listener, c)) == TABLETS for c in sent),
                    60,
                ), {c: len(results_for(academy_listener, c)) for c in sent}
                assert all(set(results_for(academy_listener, c).values()) == {"done"} for c in sent)

                # The flooder is counted and shown while it floods.
                status = await gateway.status()
                assert status["counters"]["tablet_messages_over_budget"] > 0
                assert [f["device_id"] for f in status["flooding_tablets"]] == [FLOODER]
                http = gateway.config.http
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://{http.host}:{http.port}/metrics") as response,
                ):
                    metrics = await response.text()
                assert "school_gateway_tablets_over_budget 1.0" in metrics
            print(f"flooder published {published[0]} messages")
