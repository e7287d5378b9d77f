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
from gateway.state.intake_budget import TabletBudget
from gateway.status_view import render_status
from tests.commands_kit import SCHOOL, keys, online_fleet, send

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
        async with (
            online_fleet(school_broker, gateway, TABLETS) as (_fleet, applier),
            flooding(school_broker.host, school_broker.port, FLOODER) as published,
        ):
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
            assert f"FLOODING: {FLOODER} over its message budget" in render_status(
                {**status, "running": True}
            )
            http = gateway.config.http
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{http.host}:{http.port}/metrics") as response,
            ):
                metrics = await response.text()
            assert "school_gateway_tablets_over_budget 1.0" in metrics


class TestTabletBudget:
    """The per-tablet token bucket: a pure decision per device, over a bounded map."""

    def test_a_burst_then_the_rate_per_device(self):
        budget = TabletBudget(rate_per_s=2, burst=3, max_devices=10)
        assert [budget.allow("tab-a", 0.0) for _ in range(4)] == [True, True, True, False]
        assert budget.allow("tab-b", 0.0)  # another tablet has its own bucket
        assert not budget.allow("tab-a", 0.2)  # 0.4 token refilled: not enough
        assert budget.allow("tab-a", 0.5)  # one token after 0.5 s at 2/s
        assert budget.dropped == 2
        [flooder] = budget.flooders(now=1.0)
        assert (flooder.device_id, flooder.dropped) == ("tab-a", 2)
        assert budget.flooders(now=1000.0) == []  # not dropped recently: not shown

    def test_at_the_bound_the_least_recently_seen_device_is_forgotten(self):
        budget = TabletBudget(rate_per_s=1, burst=1, max_devices=2)
        assert budget.allow("tab-a", 0.0)
        assert budget.allow("tab-b", 0.0)
        assert not budget.allow("tab-a", 0.0)  # tab-a is now the most recently seen
        assert budget.allow("tab-c", 0.0)  # evicts tab-b
        assert budget.evictions == 1
        assert budget.allow("tab-b", 0.0)  # back with a full bucket; evicts tab-a
        assert budget.allow("tab-a", 0.0)
