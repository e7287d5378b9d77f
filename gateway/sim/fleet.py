"""Simulated tablets on a real broker: each tablet is its own MQTT client.

One process plays up to thousands of tablets: every tablet is an aiomqtt
client with a retained birth and last will on its status topic, publishes
state reports (QoS 1) every ``interval_s`` (0 = as fast as the broker acks),
and listens on its command topic (``on_command``, see gateway.sim.commands)
and for result confirmations. As docs/protocol.md asks, a tablet holds one
connection and on each connect subscribes first, then publishes its birth,
then re-sends its unconfirmed results (again whenever ``gateway/status``
says online, and every ``RESULT_RESEND_S``).
With ``stay_online`` a tablet that sent its report quota keeps its session
open, listening for commands, until told to ``leave()``; ``come_back()``
readies it for another ``run()`` with the same persistent session. Connects are staggered through a
semaphore so a thousand tablets do not stampede the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiomqtt

from gateway import topics
from gateway.backoff import backoff_delay
from gateway.sim.model import TabletModel, device_id_for, group_for

log = logging.getLogger(__name__)

CONNECT_CONCURRENCY = 64
RESULT_RESEND_S = 30.0


@dataclass
class FleetStats:
    """What the fleet did, for the demo view and the benchmarks."""

    tablets: int = 0
    connected: int = 0
    reports_published: int = 0
    report_bytes_published: int = 0
    commands_received: int = 0
    connect_failures: int = 0
    per_tablet_reports: dict[str, int] = field(default_factory=dict)


class CommandAgent(Protocol):
    """What a tablet does with commands and result confirmations (gateway.sim.commands)."""

    async def __call__(
        self, tablet: SimulatedTablet, client: aiomqtt.Client, payload: bytes
    ) -> None:
        """A command delivery arrived."""

    def confirmed(self, tablet: SimulatedTablet, payload: bytes) -> None:
        """A result confirmation arrived."""

    async def resend(self, tablet: SimulatedTablet, client: aiomqtt.Client) -> None:
        """Publish again every result not confirmed yet."""


CommandHandler = CommandAgent


@dataclass(frozen=True)
class FleetSettings:
    host: str
    port: int
    tablets: int
    interval_s: float = 5.0
    reports_per_tablet: int | None = None
    prefix: str = "tab"
    first_index: int = 0
    seed: int = 1
    stay_online: bool = False
    # Enrolled tablets connect with TLS: device id -> its context (gateway.sim.enroll).
    tls: Mapping[str, ssl.SSLContext] = field(default_factory=dict)


class SimulatedTablet:
    """One tablet: its model plus an MQTT session."""

    def __init__(
        self,
        model: TabletModel,
        settings: FleetSettings,
        stats: FleetStats,
        connect_gate: asyncio.Semaphore,
        on_command: CommandHandler | None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.stats = stats
        self._gate = connect_gate
        self._on_command = on_command
        self.reports_sent = 0
        self.done = asyncio.Event()
        self.online = False
        self._leave = asyncio.Event()

    @property
    def device_id(self) -> str:
        return self.model.device_id

    def leave(self) -> None:
        """Go offline cleanly (publishing the offline status), ending ``run()``."""
        self._leave.set()

    def come_back(self) -> None:
        """Ready another ``run()``: a new session with a fresh report quota."""
        self.done.clear()
        self._leave.clear()
        self.reports_sent = 0

    def _finished(self) -> bool:
        if self.settings.stay_online:
            return self._leave.is_set()
        return self.done.is_set()

    async def run(self) -> None:
        """Stay connected (reconnecting on failure) until the report quota is sent
        (with ``stay_online``: until told to leave)."""
        attempt = 0
        status = topics.tablet_status(self.device_id)
        while not self._finished():
            client = aiomqtt.Client(
                self.settings.host,
                self.settings.port,
                identifier=self.device_id,
                clean_session=False,
                keepalive=60,
                will=aiomqtt.Will(status, b'{"online":false}', qos=1, retain=True),
                timeout=30,
                tls_context=self.settings.tls.get(self.device_id),
            )
            connected = False
            try:
                async with self._gate:
                    await client.__aenter__()
                connected = True
                self.stats.connected += 1
                attempt = 0
                await client.subscribe(topics.tablet_commands(self.device_id), qos=1)
                await client.subscribe(topics.tablet_results_ack(self.device_id), qos=1)
                await client.subscribe(topics.GATEWAY_STATUS, qos=1)
                await client.publish(status, b'{"online":true}', qos=1, retain=True)
                self.online = True
                async with asyncio.TaskGroup() as group:
                    listener = group.create_task(self._listen(client), name="listen")
                    resender = None
                    if self._on_command is not None:
                        resender = group.create_task(self._resend(client), name="resend")
                    await self._report_loop(client)
                    if self.settings.stay_online:
                        await self._leave.wait()
                    listener.cancel()
                    if resender is not None:
                        resender.cancel()
                self.online = False
                await client.publish(status, b'{"online":false}', qos=1, retain=True)
            except (aiomqtt.MqttError, ExceptionGroup) as exc:
                if isinstance(exc, ExceptionGroup):  # the connection died under the listener
                    _, rest = exc.split(aiomqtt.MqttError)
                    if rest is not None:
                        raise
                self.stats.connect_failures += 1
                log.debug("tablet %s: %s", self.device_id, exc)
                await asyncio.sleep(backoff_delay(attempt, cap_s=5.0))
                attempt += 1
            finally:
                self.online = False
                if connected:
                    self.stats.connected -= 1
                    # Bounded: a broker that never answers the DISCONNECT must not keep
                    # a stopping fleet (the demo, a test) waiting forever.
                    with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                        async with asyncio.timeout(5):
                            await client.__aexit__(None, None, None)

    async def _report_loop(self, client: aiomqtt.Client) -> None:
        topic = topics.tablet_state(self.device_id)
        interval = self.settings.interval_s
        quota = self.settings.reports_per_tablet
        if interval > 0:  # spread the fleet over one period
            await asyncio.sleep(self.model.rng.uniform(0, interval))
        while quota is None or self.reports_sent < quota:
            self.model.advance()
            payload = json.dumps(self.model.report(time.time()), separators=(",", ":")).encode()
            await client.publish(topic, payload, qos=1)
            self.reports_sent += 1
            self.stats.reports_published += 1
            self.stats.report_bytes_published += len(payload)
            if interval > 0:
                await asyncio.sleep(interval * self.model.rng.uniform(0.9, 1.1))
        self.done.set()

    async def _listen(self, client: aiomqtt.Client) -> None:
        confirmations = topics.tablet_results_ack(self.device_id)
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if message.topic.value == confirmations:
                if self._on_command is not None:
                    self._on_command.confirmed(self, payload)
                continue
            if message.topic.value == topics.GATEWAY_STATUS:
                # The gateway is (back) online and subscribed: what it has not
                # confirmed may have been lost with the broker's sessions.
                if self._on_command is not None and _says_online(payload):
                    await self._on_command.resend(self, client)
                continue
            self.stats.commands_received += 1
            if self._on_command is not None:
                await self._on_command(self, client, payload)

    async def _resend(self, client: aiomqtt.Client) -> None:
        """Unconfirmed results: at once (the gateway may have lost them), then periodically."""
        assert self._on_command is not None
        while True:
            await self._on_command.resend(self, client)
            await asyncio.sleep(RESULT_RESEND_S)


def _says_online(payload: bytes) -> bool:
    try:
        return json.loads(payload).get("online") is True
    except (ValueError, AttributeError):
        return False


class Fleet:
    """N simulated tablets against one broker."""

    def __init__(self, settings: FleetSettings, on_command: CommandHandler | None = None) -> None:
        self.settings = settings
        self.stats = FleetStats(tablets=settings.tablets)
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        rng = random.Random(settings.seed)
        self.tablets = [
            SimulatedTablet(
                TabletModel.create(
                    device_id_for(settings.prefix, i), group_for(i), rng.randrange(2**32)
                ),
                settings,
                self.stats,
                gate,
                on_command,
            )
            for i in range(settings.first_index, settings.first_index + settings.tablets)
        ]

    async def run(self) -> None:
        """Run every tablet until each sent its quota (forever without one)."""
        async with asyncio.TaskGroup() as group:
            for tablet in self.tablets:
                group.create_task(tablet.run(), name=f"tablet-{tablet.device_id}")
