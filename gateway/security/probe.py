"""Does the broker accept this connection? One MQTT CONNECT, answered or refused.

aiomqtt reports a broker that drops a connection before CONNACK only as a
timeout; the revocation check and the security tests need the real answer
fast, so this speaks just enough MQTT 3.1.1 itself: ``connect_packet`` is
pure, ``connect_outcome`` sends it and reads the reply.
"""

from __future__ import annotations

import asyncio
import ssl
import struct

ACCEPTED = "accepted"


def connect_packet(client_id: str, keepalive_s: int = 30) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and no credentials."""
    ident = client_id.encode()
    body = (
        (struct.pack("!H", 4) + b"MQTT" + bytes([4, 0x02]) + struct.pack("!H", keepalive_s))
        + struct.pack("!H", len(ident))
        + ident
    )
    if len(body) > 127:
        raise ValueError("client id too long for this probe")
    return bytes([0x10, len(body)]) + body


def read_connack(reply: bytes) -> str:
    """``accepted``, ``refused rc=N``, or ``closed`` for what the broker sent back."""
    if len(reply) < 4 or reply[0] != 0x20:
        return "closed"
    return ACCEPTED if reply[3] == 0 else f"refused rc={reply[3]}"


async def connect_outcome(
    host: str, port: int, context: ssl.SSLContext | None, client_id: str, within_s: float = 5
) -> str:
    """Connect, send CONNECT, return what :func:`read_connack` makes of the reply."""
    try:
        async with asyncio.timeout(within_s):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if context else None
            )
            try:
                writer.write(connect_packet(client_id))
                await writer.drain()
                reply = await reader.read(4)
            finally:
                writer.close()
    except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
        return f"closed ({type(exc).__name__})"
    except TimeoutError:
        return "no answer"
    return read_connack(reply)
