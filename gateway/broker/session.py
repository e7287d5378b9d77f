"""One MQTT 5 connection as a state machine without I/O (sans-I/O, as h11 is for HTTP).

:class:`Session` turns the bytes a broker sends into events and our requests
into the bytes to send; the asyncio protocol in ``gateway.broker.link`` only
moves those bytes. Packets are encoded and decoded by ``mqtt5`` (the Rust
codec aiomqtt 3 stands on); framing, flow control and the checks that keep
memory bounded are here:

- **Framing.** The fixed header (type and remaining length) is read here, so
  a packet's size is known from its first bytes: one larger than
  ``max_packet_size`` ends the connection (``packet_too_large``) before its
  body is buffered. A partial packet waits as a list of chunks, joined once.
- **Inbound window.** We send Receive Maximum in CONNECT; the broker may then
  have at most ``receive_max`` QoS 1 messages unacknowledged with us. The
  session counts them and their payload bytes (:attr:`Session.unacknowledged`,
  :attr:`Session.unacknowledged_bytes`); :meth:`acknowledge`
  returns the PUBACKs for a batch in one buffer. A QoS 2 message is a
  protocol error (we subscribe with QoS 1 at most, so a broker may not send one).
- **Outbound window.** The broker's Receive Maximum (CONNACK) bounds our own
  unacknowledged QoS 1 publishes: :meth:`free_slots` says how many more
  may go; packet ids are allocated here.

Errors: :class:`LinkDown` (a :class:`~gateway.errors.BrokerError`) with a
short stable ``reason`` ("packet_too_large", "protocol_error",
"connack_not_authorized", "disconnect_session_taken_over"...) used in logs
and counters. The codec raises ``ValueError``/``IndexError`` on a malformed
packet, and mqtt5 0.8.0 raises pyo3's ``PanicException`` (a BaseException)
on a string that is not UTF-8; Mosquitto checks UTF-8 before forwarding,
so a broker that sends one is broken: all three become ``protocol_error``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import mqtt5

from gateway.errors import BrokerError

MAX_PACKET_ID = 65_535
# The codec's packet classes by the type in the fixed header's high nibble.
_PUBLISH = 3


class LinkDown(BrokerError):
    """The connection cannot go on; ``reason`` is a short code for logs and counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message from the broker, tagged with the connection it arrived on."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    connection: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """The broker's CONNACK said yes."""

    session_present: bool
    receive_max: int  # how many of our QoS 1 publishes may be unacknowledged
    max_packet_size: int | None  # the largest packet the broker takes from us
    session_expiry_s: int | None  # set when the broker changed ours
    server_keep_alive: int | None  # set when the broker wants another keepalive


@dataclass(frozen=True, slots=True)
class Published:
    """The broker acknowledged our publish ``packet_id`` (``refused`` names a failure)."""

    packet_id: int
    refused: str | None


@dataclass(frozen=True, slots=True)
class Subscribed:
    """SUBACK: ``refused`` lists the reason names of the filters the broker refused."""

    packet_id: int
    refused: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PingAnswered:
    """PINGRESP."""


Event = Inbound | Accepted | Published | Subscribed | PingAnswered


def reason_name(code: enum.IntEnum) -> str:
    """``NOT_AUTHORIZED`` -> ``not_authorized``: a stable name for logs and counters.

    (The codec's reason codes are typed as IntEnum but are Rust enums: they
    have ``name`` and ``value`` and compare with ``==`` only.)
    """
    return code.name.lower()


def frame_length(data: bytes, start: int) -> tuple[int, int] | None:
    """(header length, body length) of the packet at ``start``, or None if incomplete."""
    length = 0
    shift = 0
    index = start + 1
    end = len(data)
    while index < end:
        byte = data[index]
        index += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return index - start, length
        shift += 7
        if shift > 21:
            raise LinkDown("protocol_error", "remaining length longer than 4 bytes")
    return None


@dataclass(frozen=True)
class SessionOptions:
    """What we ask of the broker in CONNECT."""

    client_id: str
    keepalive_s: int
    receive_max: int
    max_packet_size: int
    session_expiry_s: int
    will: tuple[str, bytes] | None = None  # retained, QoS 1


class Session:
    """The protocol state of one connection: bytes in, events and bytes out."""

    def __init__(self, options: SessionOptions, connection: int) -> None:
        self.options = options
        self.connection = connection
        self.accepted: Accepted | None = None
        # Inbound QoS 1 messages not acknowledged yet: packet id -> payload bytes.
        self._unacked: dict[int, int] = {}
        self.unacknowledged_bytes = 0
        self._pending: list[bytes] = []  # a partial packet, in chunks
        self._pending_bytes = 0
        self._needed = 0  # bytes the partial packet needs in all (0: header incomplete)
        self._outbound: set[int] = set()  # our QoS 1 publishes awaiting PUBACK
        self._subscribing: set[int] = set()  # our SUBSCRIBEs awaiting SUBACK
        self._next_id = 0
        self._broker_receive_max = MAX_PACKET_ID
        self._broker_max_packet: int | None = None

    # --- what we send

    def connect(self) -> bytes:
        o = self.options
        will = None
        if o.will is not None:
            topic, payload = o.will
            will = mqtt5.Will(topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE, retain=True)
        return mqtt5.ConnectPacket(
            o.client_id,
            clean_start=False,
            will=will,
            keep_alive=o.keepalive_s,
            session_expiry_interval=o.session_expiry_s,
            receive_max=o.receive_max,
            max_packet_size=o.max_packet_size,
        ).write()

    @property
    def unacknowledged(self) -> int:
        """Inbound QoS 1 messages the broker still counts against our Receive Maximum."""
        return len(self._unacked)

    def acknowledge(self, messages: Iterable[Inbound]) -> bytes:
        """The PUBACKs for ``messages`` of this connection, in one buffer (b"" if none)."""
        unacked = self._unacked
        packets = []
        freed = 0
        for message in messages:
            if message.connection == self.connection:
                size = unacked.pop(message.mid, None)
                if size is not None:
                    freed += size
                    packets.append(mqtt5.PubAckPacket(message.mid).write())
        self.unacknowledged_bytes -= freed
        return b"".join(packets)

    def free_slots(self) -> int:
        """How many more QoS 1 publishes fit in the broker's Receive Maximum now."""
        return self._broker_receive_max - len(self._outbound)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> tuple[int, bytes]:
        """(packet id, bytes) of a publish; the id is 0 for QoS 0. Mind ``free_slots``."""
        packet_id = None
        if qos:
            if qos != 1:
                raise ValueError("the link publishes with QoS 0 or 1")
            packet_id = self._allocate()
        data = mqtt5.PublishPacket(
            topic, payload, qos=mqtt5.QoS(qos), retain=retain, packet_id=packet_id
        ).write()
        limit = self._broker_max_packet
        if limit is not None and len(data) > limit:
            if packet_id is not None:
                self._outbound.discard(packet_id)
            raise BrokerError(
                f"publish to {topic!r} is {len(data)} bytes; the broker takes at most {limit}"
            )
        return packet_id or 0, data

    def subscribe(self, filters: Sequence[tuple[str, int]]) -> tuple[int, bytes]:
        packet_id = self._allocate()
        self._outbound.discard(packet_id)  # a SUBACK does not count against the window
        self._subscribing.add(packet_id)
        topic_filters = [mqtt5.TopicFilter(f, max_qos=mqtt5.QoS(qos)) for f, qos in filters]
        return packet_id, mqtt5.SubscribePacket(packet_id, topic_filters).write()

    def _allocate(self) -> int:
        for _ in range(MAX_PACKET_ID):
            self._next_id = self._next_id % MAX_PACKET_ID + 1
            if self._next_id not in self._outbound and self._next_id not in self._subscribing:
                self._outbound.add(self._next_id)
                return self._next_id
        raise BrokerError("no free packet id")  # cannot happen below the broker's window

    @staticmethod
    def ping() -> bytes:
        return mqtt5.PingReqPacket().write()

    @staticmethod
    def disconnect() -> bytes:
        """A normal DISCONNECT: the broker keeps the session and does not send the will."""
        return mqtt5.DisconnectPacket().write()

    @staticmethod
    def refuse_too_large() -> bytes:
        return mqtt5.DisconnectPacket(
            reason_code=mqtt5.DisconnectReasonCode.PACKET_TOO_LARGE
        ).write()

    # --- what we receive

    def receive(self, data: bytes) -> list[Event]:
        """Parse every whole packet in ``data`` (and what waited before it)."""
        if self._pending:
            self._pending.append(data)
            self._pending_bytes += len(data)
            if self._pending_bytes < self._needed:
                return []
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = self._needed = 0
        events: list[Event] = []
        try:
            start = self._parse(data, events)
        except (ValueError, IndexError) as exc:
            raise LinkDown("protocol_error", f"malformed packet from the broker: {exc}") from exc
        except BaseException as exc:  # pyo3's PanicException: see the module docstring
            if type(exc).__name__ != "PanicException":
                raise
            raise LinkDown("protocol_error", f"undecodable packet from the broker: {exc}") from exc
        if start < len(data):
            rest = data[start:]
            self._pending.append(rest)
            self._pending_bytes = len(rest)
        return events

    def _parse(self, data: bytes, events: list[Event]) -> int:
        """Append the events of the whole packets in ``data``; return where the rest starts.

        The hot path (one PUBLISH after another, ~14,000/s) is written out inline.
        """
        read = mqtt5.read
        view = memoryview(data)
        size = len(data)
        limit = self.options.max_packet_size
        unacked = self._unacked
        connection = self.connection
        append = events.append
        start = 0
        while size - start >= 2:
            length_byte = data[start + 1]
            if length_byte < 0x80:  # remaining length in one byte
                total = 2 + length_byte
            else:
                frame = frame_length(data, start)
                if frame is None:
                    break
                total = frame[0] + frame[1]
            if total > limit:
                raise LinkDown(
                    "packet_too_large", f"the broker sent a {total}-byte packet, limit {limit}"
                )
            end = start + total
            if end > size:
                self._needed = total
                break
            packet = read(view[start:end])[0]
            if data[start] >> 4 == _PUBLISH:
                assert isinstance(packet, mqtt5.PublishPacket)
                payload = packet.payload
                mid = packet.packet_id or 0
                qos = packet.qos.value  # the codec's enums compare with == only: use the int
                if qos == 1:
                    size_now = len(payload)
                    self.unacknowledged_bytes += size_now - unacked.get(mid, 0)
                    unacked[mid] = size_now
                elif qos:
                    raise LinkDown("protocol_error", "QoS 2 message on a QoS 1 subscription")
                append(Inbound(packet.topic, payload, qos, packet.retain, mid, connection))
            else:
                append(self._control(packet))
            start = end
        return start

    def _control(self, packet: object) -> Event:
        if isinstance(packet, mqtt5.PubAckPacket):
            self._outbound.discard(packet.packet_id)
            code = packet.reason_code
            refused = reason_name(code) if code.value >= 0x80 else None
            return Published(packet.packet_id, refused)
        if isinstance(packet, mqtt5.PingRespPacket):
            return PingAnswered()
        if isinstance(packet, mqtt5.SubAckPacket):
            self._subscribing.discard(packet.packet_id)
            failures = tuple(reason_name(c) for c in packet.reason_codes if c.value >= 0x80)
            return Subscribed(packet.packet_id, failures)
        if isinstance(packet, mqtt5.ConnAckPacket):
            return self._connack(packet)
        if isinstance(packet, mqtt5.DisconnectPacket):
            detail = packet.reason_str or "no reason given"
            raise LinkDown(f"disconnect_{reason_name(packet.reason_code)}", detail)
        raise LinkDown("protocol_error", f"unexpected {type(packet).__name__} from the broker")

    def _connack(self, packet: mqtt5.ConnAckPacket) -> Accepted:
        if self.accepted is not None:
            raise LinkDown("protocol_error", "a second CONNACK")
        if packet.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
            detail = packet.reason_str or "no reason given"
            raise LinkDown(f"connack_{reason_name(packet.reason_code)}", detail)
        self._broker_receive_max = packet.receive_max
        self._broker_max_packet = packet.max_packet_size
        self.accepted = Accepted(
            session_present=packet.session_present,
            receive_max=packet.receive_max,
            max_packet_size=packet.max_packet_size,
            session_expiry_s=packet.session_expiry_interval,
            server_keep_alive=packet.server_keep_alive,
        )
        return self.accepted
