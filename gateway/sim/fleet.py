"""Simulated tablets on a real broker: each tablet is its own MQTT client.

One process plays up to thousands of tablets: every tablet is an aiomqtt
client with a retained birth and last will on its status topic, publishes
state reports (QoS 1) every ``interval_s`` (0 = as fast as the broker acks),
and listens on its command topic (``on_command``, see gateway.sim.commands).
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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiomqtt

from gateway import topics
from gateway.backoff import backoff_delay
from gateway.sim.model import TabletModel, device_id_for, group_for

log = logging.getLogger(__name__)

CONNECT_CONCURRENCY = 64


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


CommandHandler = Callable[["SimulatedTablet", aiomqtt.Client, bytes], Awaitable[None]]


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
                await client.publish(status, b'{"online":true}', qos=1, retain=True)
                await client.subscribe(topics.tablet_commands(self.device_id), qos=1)
                self.online = True
                async with asyncio.TaskGroup() as group:
                    listener = group.create_task(self._listen(client), name="listen")
                    await self._report_loop(client)
                    if self.settings.stay_online:
                        await self._leave.wait()
                    listener.cancel()
                self.online = False
                await client.publish(status, b'{"online":false}', qos=1, retain=True)
            except aiomqtt.MqttError as exc:
                self.stats.connect_failures += 1
                log.debug("tablet %s: %s", self.device_id, exc)
                await asyncio.sleep(backoff_delay(attempt, cap_s=5.0))
                attempt += 1
            finally:
                self.online = False
                if connected:
                    self.stats.connected -= 1
                    with contextlib.suppress(aiomqtt.MqttError):
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
        async for message in client.messages:
            self.stats.commands_received += 1
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if self._on_command is not None:
                await self._on_command(self, client, payload)


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
