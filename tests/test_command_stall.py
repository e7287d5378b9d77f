"""Command delivery through a school broker that stalls, and tablets that reconnect.

Issue 15, item 5: a publish to the school broker that times out must not
stop delivery for good; item 7: a tablet's birth brings again what it has
not answered yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import aiomqtt

from gateway import topics
from gateway.lab.commands import AcademySigner
from gateway.lab.waiting import wait_until
from tests.commands_kit import SCHOOL, keys, online_fleet, send


class TestStalledSchoolBroker:
    """A publish that timed out while the broker stalled: delivery goes on once it answers."""

    async def test_a_command_after_the_stall_reaches_every_online_tablet(
        self, start_gateway, school_broker, academy_broker, academy_listener, caplog
    ):
        caplog.set_level(logging.INFO, logger="gateway.commands.delivery")
        signer = AcademySigner(SCHOOL)
        overrides = keys(signer) | {"school_broker": {"publish_timeout_s": 0.5}}
        running = await start_gateway(overrides)
        gateway = running.gateway
        async with online_fleet(school_broker, gateway, 3) as (_fleet, applier):
            school_broker.pause()
            try:
                during_id, during = signer.envelope("lock")
                await send(academy_broker, during)
                paused = await wait_until(lambda: "command delivery paused" in caplog.text, 20)
            finally:
                school_broker.resume()
            assert paused, "the publish never timed out while the broker was stopped"
            assert (await gateway.status())["brokers"]["school"]

            after_id, after = signer.envelope("message", params={"text": "Bonjour"})
            await send(academy_broker, after)
            assert await wait_until(lambda: len(applier.answered(after_id)) == 3, 20), (
                "a command accepted after the stall reached "
                f"{sorted(applier.answered(after_id))} of 3 online tablets"
            )
            assert await wait_until(lambda: len(applier.answered(during_id)) == 3, 20)
            for memory in applier.memory.values():
                assert memory.order == [during_id, after_id]


class TestTabletReconnects:
    """A birth re-sends what the tablet has not answered, without waiting for redelivery."""

    async def test_unanswered_delivery_comes_again_after_a_birth(
        self, start_gateway, school_broker, academy_broker
    ):
        signer = AcademySigner(SCHOOL)
        running = await start_gateway(keys(signer))
        gateway = running.gateway
        device = "tab-quiet"
        birth = json.dumps({"online": True}).encode()

        async def connect() -> aiomqtt.Client:
            # A new connection with the same client id replaces the first at the
            # broker, as a tablet's second connection does (no will in between).
            client = aiomqtt.Client(
                school_broker.host, school_broker.port, identifier=device, clean_session=True
            )
            await client.__aenter__()
            await client.subscribe(topics.tablet_commands(device), qos=1)
            await client.publish(topics.tablet_status(device), birth, qos=1, retain=True)
            return client

        async def next_command(client: aiomqtt.Client) -> str:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                return str(json.loads(message.payload)["command_id"])
            raise AssertionError("connection closed")

        first = await connect()
        try:
            assert await wait_until(
                lambda: gateway.counters.get("presence_updates_stored") >= 1, 10
            )
            command_id, envelope = signer.envelope("lock", targets={"devices": [device]})
            await send(academy_broker, envelope)
            async with asyncio.timeout(20):
                assert await next_command(first) == command_id  # received, never answered
        finally:
            second = await connect()
        try:
            async with asyncio.timeout(20):
                assert await next_command(second) == command_id
        finally:
            await second.__aexit__(None, None, None)
            with contextlib.suppress(aiomqtt.MqttError):
                await first.__aexit__(None, None, None)
