"""How large an MQTT packet may be, decided once from the config.

The school broker's ``max_packet_size`` (the generated Mosquitto config)
and the Maximum Packet Size each link sends in CONNECT come from here, so a
100 MB publish from a tablet is refused by Mosquitto after its first bytes
(the tablet is disconnected) and never reaches the gateway's memory.

The largest legitimate payload on the school broker is a state report
(``tablets.max_report_bytes``), a result (4 KiB, ``commands/progress.py``)
or a command the gateway delivers: the envelope's fields plus the academy's
envelope itself (base64 payload, signature), at most about 3x
``commands.max_envelope_bytes``. The limit is twice the largest plus room
for topic, header and properties: a report a little over its limit still
reaches the gateway, which rejects it with a counter and a log line naming
the tablet; anything bigger is stopped at the broker.
"""

from __future__ import annotations

from gateway.config import Config

# Topic (at most ~100 bytes here), fixed header, packet id and MQTT 5 properties.
PACKET_OVERHEAD = 16 * 1024
RESULT_BYTES = 4 * 1024


def delivered_command_bytes(max_envelope_bytes: int) -> int:
    """The largest command message the gateway publishes to a tablet."""
    return 3 * max_envelope_bytes + 1024


def school_packet_limit(config: Config) -> int:
    """Bytes: the school broker's ``max_packet_size`` and the school link's."""
    largest = max(
        config.tablets.max_report_bytes,
        RESULT_BYTES,
        delivered_command_bytes(config.commands.max_envelope_bytes),
    )
    return 2 * largest + PACKET_OVERHEAD


def academy_packet_limit(config: Config, max_manifest_bytes: int) -> int:
    """Bytes: the largest packet the academy link takes (command envelopes, the manifest).

    ``max_manifest_bytes`` is the cache's limit for a signed manifest (passed in:
    the broker package does not import the cache).
    """
    largest = max(config.commands.max_envelope_bytes, max_manifest_bytes)
    return 2 * largest + PACKET_OVERHEAD
