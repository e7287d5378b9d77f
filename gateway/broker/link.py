"""A long-lived, reconnecting MQTT link to one broker.

The link owns one aiomqtt client at a time. It connects with a persistent
session (clean_session=False, fixed client id) so the broker keeps our
subscriptions and queues QoS 1 messages while we are away; it publishes a
retained birth message after each connect and leaves a retained last will;
it reconnects with capped, jittered backoff (gateway.backoff).

Inbound messages are acknowledged manually: the handler decides when to call
:meth:`BrokerLink.ack`, which the gateway does only after the transaction
that holds the message committed. Until then the broker keeps the message
in flight, and redelivers it if we crash.

The broker's ``max_inflight_messages`` is not a reliable bound: Mosquitto
2.0.11 (Debian, Raspberry Pi OS) sends far more unacknowledged messages once
some are queued for the client (measured: 20,000 in flight with a limit of
1,000). aiomqtt would then discard what overflows its local queue, never
acknowledged, so stuck until the next reconnect. The link therefore bounds
its own intake: when ``INTAKE_PAUSE_AT`` messages wait locally it stops
reading the socket (TCP pushes back; the broker keeps the rest queued) and
reads again below ``INTAKE_RESUME_AT`` (counted in
``broker_<name>_intake_pauses``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from gateway.backoff import backoff_delay
from gateway.errors import BrokerError
from gateway.metrics import Counters

log = logging.getLogger(__name__)

LOCAL_QUEUE_LIMIT = 20_000
INTAKE_PAUSE_AT = 2_000
INTAKE_RESUME_AT = 500


@dataclass(frozen=True)
class Announcement:
    """A retained message on connect (birth) or left with the broker (last will)."""

    topic: str
    payload: bytes


@dataclass(frozen=True)
class LinkSettings:
    """Everything a link needs to know about its broker."""

    name: str
    host: str
    port: int
    client_id: str
    keepalive_s: int = 30
    birth: Announcement | None = None
    will: Announcement | None = None
    subscriptions: tuple[tuple[str, int], ...] = ()
    tls: ssl.SSLContext | None = None
    backoff_cap_s: float = 30.0
    publish_timeout_s: float = 10.0
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Inbound:
    """A message from the broker, tagged with the connection it arrived on."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    connection: int


InboundHandler = Callable[[Inbound], Awaitable[None]]


class _IntakeGate:
    """Stops reading the broker socket while too many messages wait in aiomqtt's queue."""

    def __init__(self, client: aiomqtt.Client, on_pause: Callable[[], None]) -> None:
        self._client = client
        self._paho = client._client
        self._loop = asyncio.get_running_loop()
        self._on_pause = on_pause
        self._paused_fd: int | None = None
        # Armed only once messages are consumed: before that, the birth's PUBACK
        # and the SUBACKs must still be read (they queue behind a resumed
        # session's messages). Nothing is acknowledged before, so the broker's
        # limit holds that long.
        self.armed = False
        delivered = self._paho.on_message

        def on_message(paho_client: Any, userdata: Any, message: Any) -> None:
            delivered(paho_client, userdata, message)  # type: ignore[misc]
            if self.armed and self._paused_fd is None and self._waiting() >= INTAKE_PAUSE_AT:
                self._pause()

        self._paho.on_message = on_message

    def _waiting(self) -> int:
        return self._client._queue.qsize()

    def _pause(self) -> None:
        sock = self._paho.socket()
        if sock is None:
            return
        self._paused_fd = sock.fileno()
        self._loop.remove_reader(self._paused_fd)
        self._on_pause()

    def consumed(self) -> None:
        """A message left the local queue: read again once it has room."""
        if self._paused_fd is not None and self._waiting() <= INTAKE_RESUME_AT:
            fd, self._paused_fd = self._paused_fd, None
            sock = self._paho.socket()
            if sock is not None and sock.fileno() == fd:
                self._loop.add_reader(fd, self._read)

    def _read(self) -> None:
        # What aiomqtt's own reader does: a read error means the connection broke.
        try:
            self._paho.loop_read()
        except Exception as exc:  # handed to aiomqtt, which raises it from its loop
            disconnected = self._client._disconnected
            if not disconnected.done():
                disconnected.set_exception(exc)


class BrokerLink:
    """Keeps one broker connection alive and moves messages in and out."""

    def __init__(
        self,
        settings: LinkSettings,
        counters: Counters,
        on_message: InboundHandler | None = None,
    ) -> None:
        self.settings = settings
        self._counters = counters
        self._on_message = on_message
        self._client: aiomqtt.Client | None = None
        self._connection = 0
        self.connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()

    @property
    def is_connected(self) -> bool:
        return self.connected.is_set()

    async def wait_disconnected(self) -> None:
        await self._disconnected.wait()

    async def run(self) -> None:
        """Connect, serve, reconnect: forever (until cancelled)."""
        attempt = 0
        name = self.settings.name
        while True:
            try:
                await self._serve_one_connection()
                attempt = 0
            except aiomqtt.MqttError as exc:
                self._counters.inc(f"broker_{name}_connection_errors")
                if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    # The broker's certificate does not chain to the CA we pin.
                    self._counters.inc(f"broker_{name}_tls_refused")
                    log.error("%s broker refused: its certificate is not trusted: %s", name, exc)
                else:
                    log.warning("%s broker link down: %s", name, exc)
                if self.connected.is_set():  # it was up: a new outage starts from short delays
                    attempt = 0
            finally:
                self.connected.clear()
                self._disconnected.set()
                self._client = None
            delay = backoff_delay(attempt, cap_s=self.settings.backoff_cap_s)
            attempt += 1
            log.info("%s broker: reconnecting in %.1f s", name, delay)
            await asyncio.sleep(delay)

    async def _serve_one_connection(self) -> None:
        s = self.settings
        will = None
        if s.will is not None:
            will = aiomqtt.Will(s.will.topic, s.will.payload, qos=1, retain=True)
        client = aiomqtt.Client(
            s.host,
            s.port,
            identifier=s.client_id,
            clean_session=False,
            keepalive=s.keepalive_s,
            will=will,
            tls_context=s.tls,
            max_queued_incoming_messages=LOCAL_QUEUE_LIMIT,
            timeout=s.publish_timeout_s,
        )
        # paho acknowledges QoS 1 messages when on_message returns unless told
        # otherwise; we acknowledge after commit instead.
        client._client.manual_ack_set(True)
        # Many concurrent QoS 1 publishes (a command fan-out, an outbox batch) are
        # normal here; aiomqtt would log a warning for each one past 10.
        client.pending_calls_threshold = LOCAL_QUEUE_LIMIT
        gate = _IntakeGate(client, lambda: self._counters.inc(f"broker_{s.name}_intake_pauses"))
        async with client:
            self._connection += 1
            connection = self._connection
            self._client = client
            if s.birth is not None:
                await client.publish(s.birth.topic, s.birth.payload, qos=1, retain=True)
            for topic_filter, qos in s.subscriptions:
                await client.subscribe(topic_filter, qos=qos)
            log.info("%s broker connected at %s:%d as %s", s.name, s.host, s.port, s.client_id)
            self._counters.inc(f"broker_{s.name}_connects")
            self._disconnected.clear()
            self.connected.set()
            gate.armed = True
            async for message in client.messages:
                gate.consumed()
                payload = message.payload
                if not isinstance(payload, bytes | bytearray):
                    payload = b"" if payload is None else str(payload).encode()
                inbound = Inbound(
                    topic=message.topic.value,
                    payload=bytes(payload),
                    qos=message.qos,
                    retain=bool(message.retain),
                    mid=message.mid,
                    connection=connection,
                )
                if self._on_message is None:
                    self.ack(inbound)
                else:
                    await self._on_message(inbound)

    def ack(self, message: Inbound) -> None:
        """Acknowledge ``message`` to the broker (after it is safely stored).

        A message that arrived on an earlier connection cannot be acknowledged
        any more; the broker redelivers it and the handler sees it again.
        """
        client = self._client
        if message.qos == 0 or client is None or message.connection != self._connection:
            return
        client._client.ack(message.mid, message.qos)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and, for QoS 1, wait for the broker's PUBACK.

        Raises BrokerError when not connected or when the PUBACK does not come.
        """
        client = self._client
        if client is None or not self.connected.is_set():
            raise BrokerError(f"{self.settings.name} broker is not connected")
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"{self.settings.name} broker publish failed: {exc}") from exc

    async def disconnect(self) -> None:
        """Publish the offline status ourselves (a clean disconnect sends no will)."""
        s = self.settings
        client = self._client
        if client is None or s.will is None or not self.connected.is_set():
            return
        try:
            await client.publish(s.will.topic, s.will.payload, qos=1, retain=True, timeout=2)
        except aiomqtt.MqttError as exc:
            log.info("%s broker: could not publish offline status: %s", s.name, exc)
