"""The systemd notification protocol (``sd_notify``), written out by hand.

systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for an
abstract socket) to a ``Type=notify`` service; the service sends newline
separated ``KEY=VALUE`` datagrams to it: ``READY=1`` once it serves,
``STOPPING=1`` on shutdown, ``STATUS=...`` for ``systemctl status`` and
``WATCHDOG=1`` at least once per ``WatchdogSec`` (passed as ``WATCHDOG_USEC``).

Outside systemd (tests, a developer's shell) every call is a no-op that
returns False, so the daemon calls these unconditionally.

The watchdog pings are sent from the event loop itself (``run_watchdog`` is a
task, not a thread): a loop blocked by a stuck callback stops the pings and
systemd restarts the service, which is the point of the watchdog.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

logger = logging.getLogger(__name__)


def notify_address(environ: Mapping[str, str]) -> str | None:
    """The socket address to send to, from ``NOTIFY_SOCKET``; None when unset.

    ``@name`` names a Linux abstract socket, spelt with a leading NUL byte.
    """
    value = environ.get("NOTIFY_SOCKET", "")
    if not value or not value.startswith(("/", "@")):
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


def watchdog_interval_from(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings: half of ``WATCHDOG_USEC``, as ``sd_watchdog_enabled`` advises.

    None when the watchdog is off, the value is not a positive integer, or
    ``WATCHDOG_PID`` names another process (the variable was inherited).
    """
    usec_text = environ.get("WATCHDOG_USEC", "")
    try:
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid is not None:
        try:
            if int(watchdog_pid) != pid:
                return None
        except ValueError:
            return None
    return usec / 1_000_000 / 2


def notify(message: str) -> bool:
    """Send one notification (e.g. ``"READY=1"``); True when systemd got it.

    Never raises: without ``NOTIFY_SOCKET`` it returns False, and a send
    that fails is logged and returns False. The socket is non-blocking, so a
    full receive queue never stalls the event loop.
    """
    address = notify_address(os.environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(message.encode("utf-8"), address)
    except OSError as exc:
        logger.warning("systemd notify %r to %r failed: %s", message, address, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings for this process, or None when systemd set no watchdog."""
    return watchdog_interval_from(os.environ, os.getpid())


async def run_watchdog(interval: float) -> None:
    """Send ``WATCHDOG=1`` every ``interval`` seconds from the event loop, until cancelled."""
    if interval <= 0:
        raise ValueError(f"watchdog interval must be positive, got {interval!r}")
    logger.info("systemd watchdog: pinging every %.1f s", interval)
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
