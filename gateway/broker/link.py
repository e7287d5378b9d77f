"""A long-lived, reconnecting MQTT 5 link to one broker: our own asyncio protocol.

The protocol logic is in :mod:`gateway.broker.session` (sans-I/O, over the
``mqtt5`` codec) and :mod:`gateway.broker.keepalive`; this module moves
bytes between them and a socket, and keeps the connection alive:

- **Session.** Every connect uses the same client id, ``clean_start`` false
  and a Session Expiry Interval (default: never), so the broker keeps our
  subscriptions and queues QoS 1 messages while we are away. (Mosquitto 2.0
  persists across its own restarts only the sessions whose last CONNECT had
  ``clean_start`` false.) A retained birth message is published after each
  connect and a retained last will is left with the broker. Reconnects wait
  a capped, jittered backoff (:func:`gateway.backoff.backoff_delay`).
- **Manual acknowledgement.** A handler calls :meth:`BrokerLink.ack` or
  :meth:`BrokerLink.ack_all` after the transaction that holds the message
  committed; the PUBACKs of a batch go out in one write. Until then the
  broker keeps the message, and redelivers it if we crash.
- **Flow control.** CONNECT carries Receive Maximum (``receive_max``): the
  broker sends at most that many QoS 1 messages we have not acknowledged,
  then holds the rest queued (``broker_intake_pauses`` counts the
  times the window filled, ``broker_intake_resumes`` the times acknowledgements
  opened it again). The link never stops reading its socket for that, so
  PINGRESP, PUBACK and SUBACK keep flowing while the store is slow. A
  broker that overruns the window (``broker_receive_max_overruns``; Mosquitto
  2.0.11 does after a reconnect with a backlog) is tolerated, but memory
  stays bounded: past ``receive_max`` messages in the inbox, or
  ``max_unacked_bytes`` of unacknowledged payload (receive_max x
  max_packet_size could be hundreds of MB), the link stops reading
  (``broker_read_pauses``) until both are down to half.
- **Keepalive.** The link owns its timer (:class:`~gateway.broker.keepalive.Keepalive`):
  PINGREQ when idle, connection dropped (``broker_keepalive_timeouts``) when a
  ping has no answer for one more interval while the link reads.
- **Packet size.** CONNECT carries Maximum Packet Size, so a broker never
  sends us more than ``max_packet_size`` bytes at once (it drops such a
  message for us); a broker that did is disconnected (``packet_too_large``)
  before the packet is buffered.
- **Errors.** Reason codes of CONNACK, PUBACK, SUBACK and DISCONNECT are
  logged by name and counted (``broker_link_down{reason}``,
  ``broker_refusals{packet, reason}``; every series has a ``link`` label). TLS
  failures are told apart by exception type: ``ssl.SSLCertVerificationError``
  (the broker's certificate does not chain to the CA we pin) counts
  ``broker_tls_refused``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.backoff import backoff_delay
from gateway.broker.keepalive import Action, Keepalive
from gateway.broker.session import (
    Accepted,
    Inbound,
    LinkDown,
    PingAnswered,
    Published,
    Session,
    SessionOptions,
    Subscribed,
)
from gateway.errors import BrokerError
from gateway.metrics import Counters

__all__ = ["Announcement", "BrokerLink", "Inbound", "InboundHandler", "LinkSettings"]

log = logging.getLogger(__name__)

SESSION_NEVER_EXPIRES = 0xFFFF_FFFF


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
    connect_timeout_s: float = 10.0
    # How many QoS 1 messages the broker may send us unacknowledged (CONNECT
    # Receive Maximum): the bound of what waits in memory for a commit.
    receive_max: int = 1_000
    # The largest packet we take (CONNECT Maximum Packet Size).
    max_packet_size: int = 256 * 1024
    # Payload bytes of unacknowledged messages past which the link stops reading
    # (until half is acknowledged): receive_max x max_packet_size could be large.
    max_unacked_bytes: int = 32 * 1024 * 1024
    session_expiry_s: int = SESSION_NEVER_EXPIRES


InboundHandler = Callable[[Inbound], Awaitable[None]]


class _Connection(asyncio.Protocol):
    """One TCP/TLS connection: feeds the session, keeps the inbox, wakes the waiters."""

    def __init__(self, link: BrokerLink, session: Session) -> None:
        self._link = link
        self._session = session
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._receive_max = session.options.receive_max
        self._max_unacked_bytes = link.settings.max_unacked_bytes
        self.keepalive = Keepalive(session.options.keepalive_s, self._loop.time())
        self.inbox: collections.deque[Inbound] = collections.deque()
        self.arrived = asyncio.Event()  # set when the inbox gets messages or the link is lost
        self.lost: LinkDown | None = None
        self.accepted: asyncio.Future[Accepted] = self._loop.create_future()
        self._answers: dict[int, asyncio.Future[Published | Subscribed]] = {}
        self._window_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._promised = 0  # freed window slots promised to woken waiters
        self._window_full = False
        self._overrun = False
        self._reading = True
        self._acks: list[bytes] = []
        self._flush_scheduled = False

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self.keepalive.received(self._loop.time())
        try:
            events = self._session.receive(data)
        except LinkDown as exc:
            if exc.reason == "packet_too_large":
                self._write(Session.refuse_too_large())
            self.close(exc)
            return
        inbox = self.inbox
        for event in events:
            if type(event) is Inbound:
                inbox.append(event)
            else:
                self._control(event)
        if inbox:
            self.arrived.set()
            self._check_window()

    def connection_lost(self, exc: Exception | None) -> None:
        detail = str(exc) if exc is not None else "closed by the broker"
        self._lose(LinkDown("connection_lost", detail))
        self._transport = None

    # --- events

    def _control(self, event: object) -> None:
        if isinstance(event, Published | Subscribed):
            self._link.count_answer(event)
            answer = self._answers.pop(event.packet_id, None)
            if answer is not None and not answer.done():
                answer.set_result(event)
            if isinstance(event, Published):
                self._wake_window_waiters()
        elif isinstance(event, Accepted):
            if not self.accepted.done():
                self.accepted.set_result(event)
        elif not isinstance(event, PingAnswered):
            raise AssertionError(f"unexpected event {event!r}")

    def _check_window(self) -> None:
        """Count the window filling; stop reading only if the broker overran it."""
        unacked = self._session.unacknowledged
        if not self._window_full and unacked >= self._receive_max:
            self._window_full = True
            self._link.count("broker_intake_pauses")
        if unacked > self._receive_max and not self._overrun:
            # Mosquitto 2.0.11 does this after a reconnect with a backlog (measured:
            # 6,000 with a window of 4,000). Tolerated; the inbox bound below holds.
            self._overrun = True
            self._link.count("broker_receive_max_overruns")
            log.warning(
                "%s broker sent more than our Receive Maximum (%d unacknowledged, limit %d)",
                self._link.settings.name,
                unacked,
                self._receive_max,
            )
        over = (
            len(self.inbox) > self._receive_max
            or self._session.unacknowledged_bytes > self._max_unacked_bytes
        )
        if self._reading and over and self._transport is not None:
            self._reading = False
            self._transport.pause_reading()
            self.keepalive.reading_paused()
            self._link.count("broker_read_pauses")

    def took_message(self) -> None:
        """The dispatcher took a message from the inbox."""
        if not self._reading:
            self._maybe_resume()

    def _maybe_resume(self) -> None:
        if (
            len(self.inbox) <= self._receive_max // 2
            and self._session.unacknowledged_bytes <= self._max_unacked_bytes // 2
        ):
            self._reading = True
            self.keepalive.reading_resumed(self._loop.time())
            if self._transport is not None:
                self._transport.resume_reading()

    # --- writing

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
            self.keepalive.sent(self._loop.time())

    def acknowledge(self, messages: Sequence[Inbound], *, now: bool) -> None:
        data = self._session.acknowledge(messages)
        if data:
            self._acks.append(data)
        if now:
            self._flush_acks()
        elif self._acks and not self._flush_scheduled:
            self._flush_scheduled = True  # single acks of one loop turn go out together
            self._loop.call_soon(self._flush_acks)
        if self._window_full and self._session.unacknowledged < self._receive_max:
            self._window_full = False
            self._link.count("broker_intake_resumes")
        if self._overrun and self._session.unacknowledged <= self._receive_max:
            self._overrun = False
        if not self._reading:
            self._maybe_resume()

    def _flush_acks(self) -> None:
        self._flush_scheduled = False
        if self._acks:
            data = b"".join(self._acks)
            self._acks.clear()
            self._write(data)

    def send_connect(self) -> None:
        self._write(self._session.connect())

    def ping(self) -> None:
        self._write(Session.ping())
        self.keepalive.pinged(self._loop.time())

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if qos == 0:
            self._write(self._session.publish(topic, payload, 0, retain)[1])
            return
        await self._window_slot()
        packet_id, data = self._session.publish(topic, payload, qos, retain)
        answer = await self._request(packet_id, data)
        assert isinstance(answer, Published)
        if answer.refused is not None:
            raise BrokerError(
                f"{self._link.settings.name} broker refused the publish to {topic!r}: "
                f"{answer.refused}"
            )

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> tuple[str, ...]:
        """Subscribe; returns the reason names of the filters the broker refused."""
        packet_id, data = self._session.subscribe(filters)
        answer = await self._request(packet_id, data)
        assert isinstance(answer, Subscribed)
        return answer.refused

    async def _request(self, packet_id: int, data: bytes) -> Published | Subscribed:
        if self.lost is not None:
            raise self.lost
        answer: asyncio.Future[Published | Subscribed] = self._loop.create_future()
        self._answers[packet_id] = answer
        self._write(data)
        try:
            return await answer
        finally:
            if self._answers.get(packet_id) is answer:
                del self._answers[packet_id]

    async def _window_slot(self) -> None:
        """Wait, in arrival order, until the broker's Receive Maximum has room for us.

        A slot freed by a PUBACK is promised to the first waiter (``_promised``)
        so that a publish arriving meanwhile cannot take it and overtake.
        """
        if not self._window_waiters and self._room():
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._window_waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter in self._window_waiters:
                self._window_waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._promised -= 1  # woken, then cancelled: pass the slot on
                self._wake_window_waiters()
            raise
        self._promised -= 1

    def _room(self) -> bool:
        return self._session.free_slots() > self._promised

    def _wake_window_waiters(self) -> None:
        while self._window_waiters and self._room():
            waiter = self._window_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._promised += 1

    # --- the end

    def close(self, reason: LinkDown) -> None:
        self._lose(reason)
        if self._transport is not None:
            self._transport.close()

    def goodbye(self) -> None:
        """A normal DISCONNECT (the broker keeps the session and the will), then close."""
        self._flush_acks()
        self._write(Session.disconnect())
        self.close(LinkDown("closed", "the gateway closed the link"))

    def _lose(self, reason: LinkDown) -> None:
        if self.lost is None:
            self.lost = reason
        self.arrived.set()
        if not self.accepted.done():
            self.accepted.set_exception(self.lost)
            self.accepted.exception()  # retrieved: the connect path reads self.lost
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(self.lost)
        self._answers.clear()
        while self._window_waiters:
            waiter = self._window_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(self.lost)


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
        self._connection: _Connection | None = None
        self._connections = 0
        self.connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()

    @property
    def is_connected(self) -> bool:
        return self.connected.is_set()

    async def wait_disconnected(self) -> None:
        await self._disconnected.wait()

    def count(self, metric: str, amount: int = 1, **labels: str) -> None:
        """Count one of the ``broker_*`` series (gateway/metrics.py) for this link."""
        self._counters.inc(metric, amount, link=self.settings.name, **labels)

    def count_answer(self, answer: Published | Subscribed) -> None:
        if isinstance(answer, Published):
            if answer.refused is not None:
                self.count("broker_refusals", packet="puback", reason=answer.refused)
        else:
            for reason in answer.refused:
                self.count("broker_refusals", packet="suback", reason=reason)

    async def run(self) -> None:
        """Connect, serve, reconnect: forever (until cancelled)."""
        attempt = 0
        name = self.settings.name
        while True:
            try:
                await self._serve_one_connection()
            except LinkDown as exc:
                self.count("broker_connection_errors")
                self.count("broker_link_down", reason=exc.reason)
                if exc.reason == "tls_untrusted":
                    self.count("broker_tls_refused")
                    log.error("%s broker refused: its certificate is not trusted: %s", name, exc)
                elif exc.reason == "tls_client_refused":
                    log.error("%s broker link down: %s", name, exc)
                else:
                    log.warning("%s broker link down: %s", name, exc)
                if self.connected.is_set():  # it was up: a new outage starts from short delays
                    attempt = 0
            finally:
                self.connected.clear()
                self._disconnected.set()
                self._connection = None
            delay = backoff_delay(attempt, cap_s=self.settings.backoff_cap_s)
            attempt += 1
            log.info("%s broker: reconnecting in %.1f s", name, delay)
            await asyncio.sleep(delay)

    async def _open(self) -> _Connection:
        s = self.settings
        self._connections += 1
        session = Session(
            SessionOptions(
                client_id=s.client_id,
                keepalive_s=s.keepalive_s,
                receive_max=s.receive_max,
                max_packet_size=s.max_packet_size,
                session_expiry_s=s.session_expiry_s,
                will=(s.will.topic, s.will.payload) if s.will is not None else None,
            ),
            self._connections,
        )
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, session), s.host, s.port, ssl=s.tls
                )
        except ssl.SSLCertVerificationError as exc:
            raise LinkDown("tls_untrusted", exc.verify_message or str(exc)) from exc
        except ssl.SSLError as exc:
            raise LinkDown("tls_failed", exc.reason or str(exc)) from exc
        except TimeoutError as exc:
            raise LinkDown("connect_timeout", f"{s.host}:{s.port}") from exc
        except OSError as exc:
            raise LinkDown("connect_failed", f"{s.host}:{s.port}: {exc.strerror or exc}") from exc
        return connection

    async def _serve_one_connection(self) -> None:
        s = self.settings
        connection = await self._open()
        keepalive = asyncio.create_task(self._keep_alive(connection), name=f"{s.name}-keepalive")
        try:
            connection.send_connect()
            try:
                async with asyncio.timeout(s.connect_timeout_s):
                    accepted = await connection.accepted
            except TimeoutError:
                raise LinkDown("connect_timeout", "no CONNACK") from None
            except LinkDown as exc:
                if s.tls is not None and exc.reason == "connection_lost":
                    # TLS 1.3: the broker checks our certificate after our side of the
                    # handshake is done, so its refusal shows as a connection closed
                    # before CONNACK, not as a TLS error.
                    raise LinkDown(
                        "tls_client_refused",
                        f"closed before answering CONNECT ({str(exc).partition(': ')[2]}): "
                        "it most likely "
                        "refused our client certificate (not signed by a CA it trusts, "
                        "expired, or revoked)",
                    ) from exc
                raise
            if accepted.server_keep_alive:  # the broker's word wins (MQTT 5, 3.2.2.3.14)
                connection.keepalive.interval_s = accepted.server_keep_alive
            self._connection = connection
            await self._announce_and_subscribe(connection, accepted)
            self._disconnected.clear()
            self.connected.set()
            await self._dispatch(connection)
        finally:
            keepalive.cancel()
            if connection.lost is None:
                connection.goodbye()

    async def _announce_and_subscribe(self, connection: _Connection, accepted: Accepted) -> None:
        s = self.settings
        try:
            async with asyncio.timeout(s.publish_timeout_s):
                if s.birth is not None:
                    await connection.publish(s.birth.topic, s.birth.payload, 1, True)
                if s.subscriptions:
                    refused = await connection.subscribe(s.subscriptions)
                    if refused:
                        log.error("%s broker refused subscriptions: %s", s.name, ", ".join(refused))
        except TimeoutError:
            raise LinkDown("connect_timeout", "no answer to the birth or subscriptions") from None
        except BrokerError as exc:
            raise LinkDown("connect_refused", str(exc)) from exc
        if accepted.session_expiry_s is not None:
            log.info("%s broker set our session expiry to %d s", s.name, accepted.session_expiry_s)
        log.info(
            "%s broker connected at %s:%d as %s (MQTT 5, session %s)",
            s.name,
            s.host,
            s.port,
            s.client_id,
            "resumed" if accepted.session_present else "new",
        )
        self.count("broker_connects")

    async def _keep_alive(self, connection: _Connection) -> None:
        loop = asyncio.get_running_loop()
        while connection.lost is None:
            action, at = connection.keepalive.next_action(loop.time())
            if action is Action.PING:
                connection.ping()
                continue
            if action is Action.GIVE_UP:
                self.count("broker_keepalive_timeouts")
                connection.close(LinkDown("keepalive_timeout", "no answer to PINGREQ"))
                return
            await asyncio.sleep(max(0.0, at - loop.time()))

    async def _dispatch(self, connection: _Connection) -> None:
        """Hand each message to the handler, in order, until the connection is lost."""
        inbox = connection.inbox
        handler = self._on_message
        while True:
            while inbox and connection.lost is None:
                message = inbox.popleft()
                connection.took_message()
                if handler is None:
                    self.ack(message)
                else:
                    await handler(message)
            if connection.lost is not None:
                raise connection.lost
            connection.arrived.clear()
            await connection.arrived.wait()

    def ack(self, message: Inbound) -> None:
        """Acknowledge ``message`` to the broker (after it is safely stored).

        A message that arrived on an earlier connection cannot be acknowledged
        any more; the broker redelivers it and the handler sees it again.
        """
        connection = self._connection
        if connection is not None and message.qos:
            connection.acknowledge((message,), now=False)

    def ack_all(self, messages: Sequence[Inbound]) -> None:
        """Acknowledge a batch of messages (after the transaction that holds them): one write."""
        connection = self._connection
        if connection is not None:
            connection.acknowledge(messages, now=True)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and, for QoS 1, wait for the broker's PUBACK.

        Raises BrokerError when not connected, when the broker refuses it (a
        PUBACK reason code) or when the PUBACK does not come in time.
        """
        connection = self._connection
        name = self.settings.name
        if connection is None or not self.connected.is_set():
            raise BrokerError(f"{name} broker is not connected")
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                await connection.publish(topic, payload, qos, retain)
        except TimeoutError:
            raise BrokerError(f"{name} broker publish timed out") from None
        except LinkDown as exc:
            raise BrokerError(f"{name} broker publish failed: {exc}") from exc

    async def disconnect(self) -> None:
        """Publish the offline status ourselves (a normal DISCONNECT sends no will)."""
        s = self.settings
        connection = self._connection
        if connection is None or s.will is None or not self.connected.is_set():
            return
        try:
            async with asyncio.timeout(2):
                await connection.publish(s.will.topic, s.will.payload, 1, True)
        except (TimeoutError, BrokerError) as exc:
            log.info("%s broker: could not publish offline status: %s", s.name, exc)
