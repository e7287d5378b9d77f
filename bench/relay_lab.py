"""Shared parts of the relay benchmarks: raw publishers, a bare subscriber, helpers.

The Python simulator (one aiomqtt client per tablet) cannot publish tens of
thousands of reports per second on its own, so the benchmarks use lighter
publishers: one connection per process publishing valid state reports
(docs/protocol.md) on the topics of many tablets, QoS 1, from the same
TabletModel the simulator uses. ``paced_publisher`` is a paho client;
``flat_out_publisher`` writes MQTT packets itself, for the ingest rate. They
run in their own processes (multiprocessing, spawn) so that the gateway
subprocess is measured alone.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402

from gateway.sim.model import TabletModel, device_id_for, group_for  # noqa: E402

INFLIGHT = 1_000


def _client(host: str, port: int, name: str) -> paho.Client:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name, clean_session=True)
    client.max_inflight_messages_set(INFLIGHT)
    client.max_queued_messages_set(INFLIGHT * 4)
    client.connect(host, port, keepalive=60)
    client.loop_start()
    return client


def _publish(client: paho.Client, topic: str, payload: bytes) -> paho.MQTTMessageInfo:
    while True:
        info = client.publish(topic, payload, qos=1)
        if info.rc == paho.MQTT_ERR_SUCCESS:
            return info
        if info.rc != paho.MQTT_ERR_QUEUE_SIZE:
            raise RuntimeError(f"publish failed: {paho.error_string(info.rc)}")
        time.sleep(0.001)  # the publisher's own window is full


def models(first: int, count: int) -> list[TabletModel]:
    return [
        TabletModel.create(device_id_for("tab", i), group_for(i), seed=i)
        for i in range(first, first + count)
    ]


def paced_publisher(  # noqa: PLR0917 - a multiprocessing target takes positional args
    host: str,
    port: int,
    first: int,
    count: int,
    reports_per_tablet: int,
    sim_start: float,
    sim_interval_s: float,
    allowed: Any,
    published: Any,
    published_bytes: Any,
) -> None:
    """One report per tablet per simulated interval; never more than ``allowed`` in total.

    ``allowed`` (set by the benchmark from the gateway's committed count) keeps
    the school broker's per-client queue from overflowing: "as fast as the
    gateway takes them".
    """
    client = _client(host, port, f"bench-pub-{first}")
    tablets = models(first, count)
    last: paho.MQTTMessageInfo | None = None
    sent = size = 0
    for minute in range(reports_per_tablet):
        for model in tablets:
            while published.value >= allowed.value:
                time.sleep(0.005)
            model.advance()
            report = model.report(sim_start + minute * sim_interval_s + model.rng.uniform(0, 50))
            payload = json.dumps(report, separators=(",", ":")).encode()
            last = _publish(client, f"tablets/{model.device_id}/state", payload)
            sent += 1
            size += len(payload)
            if sent % 200 == 0:
                with published.get_lock():
                    published.value += 200
                with published_bytes.get_lock():
                    published_bytes.value += size
                size = 0
    if last is not None:
        last.wait_for_publish(60)
    with published.get_lock():
        published.value += sent % 200
    with published_bytes.get_lock():
        published_bytes.value += size
    client.loop_stop()
    client.disconnect()


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _remaining_length(len(body)) + body


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


class _AckReader:
    """Counts the PUBACKs in what the broker sends (CONNACK and PINGRESP are skipped)."""

    def __init__(self) -> None:
        self.pending = b""
        self.acks = 0

    def feed(self, data: bytes) -> None:
        buf = self.pending + data
        pos = 0
        while len(buf) - pos >= 2:
            length, shift, i = 0, 0, pos + 1
            while i < len(buf):
                length |= (buf[i] & 0x7F) << shift
                shift += 7
                i += 1
                if not buf[i - 1] & 0x80:
                    break
            else:
                break  # the length is not complete yet
            if i + length > len(buf):
                break
            if buf[pos] >> 4 == 4:  # PUBACK
                self.acks += 1
            elif buf[pos] >> 4 == 2 and buf[i + 1] != 0:  # CONNACK refused
                raise RuntimeError(f"broker refused the publisher: CONNACK code {buf[i + 1]}")
            pos = i + length
        self.pending = buf[pos:]


def flat_out_publisher(  # noqa: PLR0917 - a multiprocessing target
    host: str, port: int, first: int, count: int, duration_s: float, published: Any
) -> None:
    """Every tablet reports again as soon as the broker takes it, for ``duration_s``.

    A raw MQTT 3.1.1 client on one socket: valid state reports from the
    simulator's TabletModel, QoS 1, up to ``INFLIGHT`` unacknowledged, several
    PUBLISH packets per send. paho costs ~60 us per publish in Python, which
    on two cores would make the publishers, not the gateway, the limit.
    """
    tablets = models(first, count)
    topics = [_utf8(f"tablets/{model.device_id}/state") for model in tablets]
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connect = _utf8("MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big")
    sock.sendall(_packet(0x10, connect + _utf8(f"bench-flat-{first}")))
    reader = _AckReader()
    deadline = time.monotonic() + duration_s
    sent = mid = 0
    index = 0
    while time.monotonic() < deadline:
        room = INFLIGHT - (sent - reader.acks)
        if room > 0:
            packets = []
            for _ in range(min(room, 100)):
                model, topic = tablets[index], topics[index]
                index = (index + 1) % count
                model.advance()
                payload = json.dumps(model.report(time.time()), separators=(",", ":")).encode()
                mid = mid % 65_535 + 1
                packets.append(_packet(0x32, topic + mid.to_bytes(2, "big") + payload))
            sock.sendall(b"".join(packets))
            sent += len(packets)
            flags = socket.MSG_DONTWAIT
        else:
            flags = 0  # the window is full: wait for acknowledgements
        try:
            data = sock.recv(65_536, flags)
        except BlockingIOError:
            data = None
        if data == b"":
            raise RuntimeError("the broker closed the publisher's connection")
        if data:
            reader.feed(data)
        published.value = reader.acks
    sock.sendall(bytes([0xE0, 0]))  # DISCONNECT
    sock.close()


def bare_subscriber(host: str, port: int, duration_s: float, ready: Any, per_second: Any) -> None:
    """The reference: a plain aiomqtt subscriber (QoS 1) counting state reports per second."""
    import asyncio

    import aiomqtt

    async def main() -> None:
        counts: dict[int, int] = {}
        # aiomqtt's queue is unbounded by default: it never discards, so what
        # is counted is what the subscriber takes.
        async with aiomqtt.Client(host, port, identifier="bench-bare") as client:
            await client.subscribe("tablets/+/state", qos=1)
            ready.set()
            try:
                async with asyncio.timeout(duration_s):
                    async for _message in client.messages:
                        second = int(time.time())
                        counts[second] = counts.get(second, 0) + 1
            except TimeoutError:
                pass
        per_second.put(counts)

    asyncio.run(main())
