"""One guest connection of QEMU's user network, relayed to a port on the host's loopback.

QEMU runs ``guestfwd=tcp:10.0.2.100:PORT-cmd:python3 vm_relay.py 127.0.0.1 PORT`` once per
connection the guest opens to 10.0.2.100:PORT, with the connection as stdin/stdout/stderr
(one socket). This relays it to HOST:PORT until both directions are closed. A chardev
(``...-tcp:127.0.0.1:PORT``) would not do: QEMU opens it once at start and shares it
between every guest connection, so a reconnecting MQTT client or a second download breaks.

Nothing is written to stderr: it is the guest's connection.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys


def relay(guest: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways; pass each side's end of stream on as a half close."""
    selector = selectors.DefaultSelector()
    peers = {guest: upstream, upstream: guest}
    for side in peers:
        selector.register(side, selectors.EVENT_READ)
    open_sides = 2
    while open_sides:
        for key, _ in selector.select():
            side: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                data = side.recv(65536)
            except OSError:
                data = b""
            if data:
                peers[side].sendall(data)
                continue
            selector.unregister(side)
            open_sides -= 1
            with contextlib.suppress(OSError):
                peers[side].shutdown(socket.SHUT_WR)


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    guest = socket.socket(fileno=os.dup(0))
    quiet = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(quiet, fd)
    try:
        upstream = socket.create_connection((host, port), timeout=10)
    except OSError:
        return 1  # the guest sees the connection closed, as a refused one
    upstream.settimeout(None)
    try:
        relay(guest, upstream)
    except OSError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
