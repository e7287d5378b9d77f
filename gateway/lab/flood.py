"""A flooding tablet: one MQTT connection publishing junk as fast as it can (tests, benchmarks).

``python -m gateway.lab.flood HOST PORT DEVICE [--topic TOPIC]`` connects
with client id DEVICE and publishes malformed state reports (QoS 1) on
``tablets/DEVICE/state`` (within a tablet's ACL) in a tight loop, writing
MQTT packets itself (no client library in the way) and discarding what the
broker sends back. It prints ``published <n>`` about every 10,000 messages
and runs until killed.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading

BATCH = 1_000
REPORT_EVERY = 10_000


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


def connect_packet(client_id: str) -> bytes:
    # MQTT 3.1.1, clean session, keepalive 60 s.
    return _packet(0x10, _utf8("MQTT") + bytes([4, 0x02, 0, 60]) + _utf8(client_id))


def publish_batch(topic: str, payload: bytes, first_id: int, count: int) -> bytes:
    """``count`` QoS 1 PUBLISH packets with packet ids from ``first_id`` (1..65535, wrapping)."""
    name = _utf8(topic)
    packets = []
    for i in range(count):
        packet_id = (first_id + i - 1) % 65_535 + 1
        packets.append(_packet(0x32, name + packet_id.to_bytes(2, "big") + payload))
    return b"".join(packets)


def _discard(sock: socket.socket) -> None:
    try:
        while sock.recv(65_536):
            pass
    except OSError:
        pass


def flood(host: str, port: int, device: str, topic: str) -> None:
    sock = socket.create_connection((host, port))
    sock.sendall(connect_packet(device))
    threading.Thread(target=_discard, args=(sock,), daemon=True).start()
    payload = b'{"device_id": "' + device.encode() + b'", "seq": "not a number"'
    sent = 0
    next_report = REPORT_EVERY
    while True:
        sock.sendall(publish_batch(topic, payload, sent % 65_535 + 1, BATCH))
        sent += BATCH
        if sent >= next_report:
            print(f"published {sent}", flush=True)
            next_report += REPORT_EVERY


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A flooding tablet (tests, benchmarks).")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("device")
    parser.add_argument("--topic", default=None, help="default: tablets/DEVICE/state")
    args = parser.parse_args(argv)
    try:
        flood(args.host, args.port, args.device, args.topic or f"tablets/{args.device}/state")
    except (OSError, KeyboardInterrupt) as exc:
        print(f"flood stopped: {exc}", file=sys.stderr)


if __name__ == "__main__":
    main()
