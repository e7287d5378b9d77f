"""The upstream wire format: envelopes and compressed batches (no I/O).

Every upstream message is one JSON object (docs/protocol.md, "Upstream
messages"):

    {"school_id": ..., "gateway_id": ..., "seq": 1234, "kind": "state", "body": {...}}

An MQTT payload on ``.../up/<kind>`` holds either

* one message: the JSON object itself (first byte ``{``), or
* a batch: a zlib stream (RFC 1950, first byte ``0x78``) of UTF-8 JSON
  lines, one message per line, in sequence order.

``decode_payload`` reads both; academy developers can use it as it is, or
``python -m gateway decode`` on the command line.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

from gateway.errors import RejectedInput

COMPRESSION_LEVEL = 6
MAX_DECODED_BYTES = 64 * 1024 * 1024


def envelope_line(*, school_id: str, gateway_id: str, seq: int, kind: str, body_json: str) -> str:
    """One upstream message as a JSON line; ``body_json`` is inserted as it is stored."""
    return (
        f'{{"school_id":{json.dumps(school_id)},"gateway_id":{json.dumps(gateway_id)},'
        f'"seq":{int(seq)},"kind":{json.dumps(kind)},"body":{body_json}}}'
    )


def encode_batch(lines: Sequence[str]) -> bytes:
    """The payload for ``lines``: the message itself if there is one, else a zlib batch."""
    if len(lines) == 1:
        return lines[0].encode()
    return zlib.compress("\n".join(lines).encode(), COMPRESSION_LEVEL)


def fit_batch(lines: Sequence[str], max_bytes: int) -> tuple[bytes, int]:
    """The largest leading run of ``lines`` whose payload fits ``max_bytes``.

    Returns (payload, how many lines it holds). One line always goes, even
    when it alone is larger (it was accepted into the outbox; refusing it
    here would block the queue for ever).
    """
    count = len(lines)
    while True:
        payload = encode_batch(lines[:count])
        if len(payload) <= max_bytes or count == 1:
            return payload, count
        # Shrink in proportion to the overshoot, a little more to converge fast.
        count = max(1, min(count - 1, int(count * max_bytes / len(payload) * 0.9)))


def payload_text(payload: bytes) -> bytes:
    """The JSON lines of one MQTT payload: the message itself, or the batch inflated."""
    if not payload:
        raise RejectedInput("empty", "upstream payload is empty")
    if payload[:1] == b"{":
        return payload
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(payload, MAX_DECODED_BYTES)
    except zlib.error as exc:
        raise RejectedInput("not_batch", f"payload is neither JSON nor zlib: {exc}") from exc
    if inflater.unconsumed_tail:
        raise RejectedInput("too_large", f"batch inflates beyond {MAX_DECODED_BYTES}")
    return text


def decode_payload(payload: bytes) -> list[dict[str, Any]]:
    """The upstream messages in one MQTT payload (single message or batch)."""
    text = payload_text(payload)
    messages: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            value = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RejectedInput("not_json", f"line {number} is not JSON: {exc}") from exc
        if not isinstance(value, dict) or not {"gateway_id", "seq", "kind"} <= value.keys():
            raise RejectedInput("bad_field", f"line {number} is not an upstream message")
        messages.append(value)
    return messages
