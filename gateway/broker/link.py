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

Inbound messages go straight from paho into the link's own bounded inbox
(``_Intake``), read in bursts; aiomqtt's message queue is not used. Two
reasons, both measured:

- Bound: Mosquitto 2.0.11 (Debian, Raspberry Pi OS) does not hold to
  ``max_inflight_messages`` once messages are queued for the client (20,000
  in flight with a limit of 1,000), and aiomqtt discards what overflows its
  queue, never acknowledged. The intake stops reading the socket when
  ``INTAKE_PAUSE_AT`` messages wait (TCP pushes back; the broker keeps the
  rest queued) and reads again below ``INTAKE_RESUME_AT`` (counted in
  ``broker_<name>_intake_pauses``). Nothing is discarded.
- Cost: paho reads one packet per readable event, with a recv call for each
  of the first bytes, and aiomqtt adds a Message, a Task and an
  ``asyncio.wait`` per message. The intake reads the socket 64 KB at a time
  and parses every packet waiting, which halves the CPU per state report.

It uses paho and aiomqtt internals (``_packet_read``, ``_sock_recv``,
``_handle_on_message``, ``_packet_queue``, ``_disconnected``): pyproject.toml pins both to the
versions tested.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt

from gateway.backoff import backoff_delay
from gateway.errors import BrokerError
from gateway.metrics import Counters

log = logging.getLogger(__name__)

PENDING_CALLS_LIMIT = 20_000
INTAKE_PAUSE_AT = 2_000
INTAKE_RESUME_AT = 500
RECV_BYTES = 64 * 1024
READ_BURST = 500
_PUBACK = struct.Struct("!BBH")  # type, remaining length 2, packet id


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


class _Intake:
    """The inbox of one connection: paho parses into it, the link's loop takes from it."""

    def __init__(self, client: aiomqtt.Client, connection: int, on_pause: Callable[[], None]):
        self._client = client
        self._paho = client._client
        self._connection = connection
        self._loop = asyncio.get_running_loop()
        self._on_pause = on_pause
        self._messages: collections.deque[Inbound] = collections.deque()
        self._arrived = asyncio.Event()
        self._paused_fd: int | None = None
        self._recv_unbuffered = self._paho._sock_recv
        self._buffer = b""
        self._position = 0
        # Armed only once messages are consumed: before that, the birth's PUBACK
        # and the SUBACKs must still be read (they queue behind a resumed
        # session's messages). Nothing is acknowledged before, so the broker's
        # limit holds that long.
        self.armed = False
        paho = self._paho
        paho._sock_recv = self._recv  # type: ignore[method-assign]
        paho._handle_on_message = self._take  # type: ignore[method-assign]
        opened = paho.on_socket_open

        def on_socket_open(client: Any, userdata: Any, sock: Any) -> None:
            opened(client, userdata, sock)  # type: ignore[misc]
            # After aiomqtt's reader is registered (same FIFO), replace it with ours.
            self._loop.call_soon_threadsafe(self._loop.add_reader, sock.fileno(), self._read)

        paho.on_socket_open = on_socket_open

    def _recv(self, bufsize: int) -> bytes:
        """paho's ``_sock_recv``, served from one large read of the socket."""
        if self._position >= len(self._buffer):
            self._buffer = self._recv_unbuffered(RECV_BYTES)  # raises BlockingIOError
            self._position = 0
        chunk = self._buffer[self._position : self._position + bufsize]
        self._position += len(chunk)
        return chunk

    def _read(self) -> None:
        """Parse every packet waiting (in bursts, so the loop's other work goes on)."""
        paho = self._paho
        try:
            for _ in range(READ_BURST):
                if paho._sock is None or self._paused_fd is not None:
                    return
                rc = paho._packet_read()
                if rc == mqtt.MQTT_ERR_AGAIN:
                    return
                if rc > 0:
                    paho._loop_rc_handle(rc)
                    return
            self._loop.call_soon(self._read)  # more may wait in our buffer
        except Exception as exc:  # handed to aiomqtt, which raises it from its loop
            disconnected = self._client._disconnected
            if not disconnected.done():
                disconnected.set_exception(exc)
            self._arrived.set()

    def _take(self, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # the handlers reject it by topic
            topic = message._topic.decode("utf-8", "replace")
        payload = message.payload
        self._messages.append(
            Inbound(
                topic=topic,
                payload=payload if type(payload) is bytes else bytes(payload),
                qos=message.qos,
                retain=bool(message.retain),
                mid=message.mid,
                connection=self._connection,
            )
        )
        self._arrived.set()
        if self.armed and self._paused_fd is None and len(self._messages) >= INTAKE_PAUSE_AT:
            self._pause()

    def _pause(self) -> None:
        sock = self._paho.socket()
        if sock is None:
            return
        self._paused_fd = sock.fileno()
        self._loop.remove_reader(self._paused_fd)
        self._on_pause()

    def _resume(self) -> None:
        fd, self._paused_fd = self._paused_fd, None
        sock = self._paho.socket()
        if sock is not None and sock.fileno() == fd:
            self._loop.add_reader(fd, self._read)
            self._loop.call_soon(self._read)  # bytes may already wait in our buffer

    async def next(self) -> Inbound:
        """The next message; raises aiomqtt.MqttError once the connection is gone."""
        while not self._messages:
            await self._wait()
        message = self._messages.popleft()
        if self._paused_fd is not None and len(self._messages) <= INTAKE_RESUME_AT:
            self._resume()
        return message

    async def _wait(self) -> None:
        disconnected = self._client._disconnected
        if disconnected.done():
            cause = None if disconnected.cancelled() else disconnected.exception()
            raise aiomqtt.MqttError("Disconnected during message iteration") from cause
        self._arrived.clear()
        arrived = self._loop.create_task(self._arrived.wait())
        try:
            await asyncio.wait((arrived, disconnected), return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrived.cancel()


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
            timeout=s.publish_timeout_s,
        )
        # paho acknowledges QoS 1 messages when on_message returns unless told
        # otherwise; we acknowledge after commit instead.
        client._client.manual_ack_set(True)
        # Many concurrent QoS 1 publishes (a command fan-out, an outbox batch) are
        # normal here; aiomqtt would log a warning for each one past 10.
        client.pending_calls_threshold = PENDING_CALLS_LIMIT
        self._connection += 1
        intake = _Intake(
            client,
            self._connection,
            lambda: self._counters.inc(f"broker_{s.name}_intake_pauses"),
        )
        async with client:
            self._client = client
            if s.birth is not None:
                await client.publish(s.birth.topic, s.birth.payload, qos=1, retain=True)
            for topic_filter, qos in s.subscriptions:
                await client.subscribe(topic_filter, qos=qos)
            log.info("%s broker connected at %s:%d as %s", s.name, s.host, s.port, s.client_id)
            self._counters.inc(f"broker_{s.name}_connects")
            self._disconnected.clear()
            self.connected.set()
            intake.armed = True
            while True:
                inbound = await intake.next()
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

    def ack_all(self, messages: Sequence[Inbound]) -> None:
        """Acknowledge a batch of messages (after the transaction that holds them).

        paho queues one packet per acknowledgement and asks the loop to write
        for each; the same PUBACK packets go out here as one write.
        """
        client = self._client
        if client is None:
            return
        mids = []
        for message in messages:
            if message.qos == 1 and message.connection == self._connection:
                mids.append(message.mid)
            elif message.qos > 1:
                self.ack(message)
        if mids:
            pubacks = b"".join(_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids)
            client._client._packet_queue(mqtt.PUBACK, pubacks, 0, 0)

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
