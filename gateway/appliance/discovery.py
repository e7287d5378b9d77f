"""Announce the gateway on the school LAN with mDNS / DNS-SD (zeroconf).

Tablets and the admin's laptop find the box as a ``_school-gateway._tcp``
service without knowing its address; the TXT record says which school and
gateway it is, the MQTT broker port and the update cache URL.

``gateway_properties`` and ``build_service_info`` are pure; the
announcement itself is one task, ``announce_until_cancelled``, that
registers the service, answers queries until it is cancelled, then says
goodbye. mDNS is a convenience: if it cannot start (port 5353 unusable, no
multicast), the failure is logged and the task returns, so the rest of the
gateway keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence

from zeroconf import Error as ZeroconfError
from zeroconf import InterfaceChoice, IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

logger = logging.getLogger(__name__)

SERVICE_TYPE = "_school-gateway._tcp.local."
TXT_VERSION = "1"
# RFC 6763: an instance name is at most 63 bytes, a TXT entry at most 255.
MAX_INSTANCE_BYTES = 63
MAX_TXT_ENTRY_BYTES = 255


def gateway_properties(
    *, school_id: str, gateway_id: str, broker_port: int, cache_url: str
) -> dict[str, str]:
    """The TXT record of a gateway announcement."""
    return {
        "txtvers": TXT_VERSION,
        "school_id": school_id,
        "gateway_id": gateway_id,
        "broker_port": str(broker_port),
        "cache_url": cache_url,
    }


def host_label(name: str) -> str:
    """A DNS host label from an instance name: lowercase letters, digits and '-'."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:MAX_INSTANCE_BYTES]
    return label.strip("-") or "school-gateway"


def build_service_info(
    name: str, port: int, addresses: Sequence[str], properties: Mapping[str, str]
) -> ServiceInfo:
    """The DNS-SD records for instance ``name`` serving on ``port`` at ``addresses``.

    Raises ValueError naming the part that does not fit DNS-SD's limits.
    """
    instance = name.strip()
    if not instance or len(instance.encode("utf-8")) > MAX_INSTANCE_BYTES:
        raise ValueError(f"instance name must be 1-{MAX_INSTANCE_BYTES} bytes, got {name!r}")
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, got {port}")
    if not addresses:
        raise ValueError("at least one address is needed")
    for key, value in properties.items():
        if len(key.encode()) + 1 + len(value.encode()) > MAX_TXT_ENTRY_BYTES:
            raise ValueError(f"TXT entry {key!r} is longer than {MAX_TXT_ENTRY_BYTES} bytes")
    return ServiceInfo(
        SERVICE_TYPE,
        f"{instance}.{SERVICE_TYPE}",
        port=port,
        properties=dict(properties),
        server=f"{host_label(instance)}.local.",
        parsed_addresses=list(addresses),
    )


async def announce_until_cancelled(
    name: str,
    port: int,
    addresses: Sequence[str],
    properties: Mapping[str, str],
    *,
    interfaces: Sequence[str] | None = None,
) -> None:
    """Announce the service and answer mDNS queries until cancelled.

    ``interfaces`` are the local addresses to speak mDNS on; by default the
    announced ``addresses`` themselves, so nothing listens beyond the LAN
    interfaces the gateway was configured for.
    """
    info = build_service_info(name, port, addresses, properties)
    bind = list(interfaces) if interfaces is not None else list(addresses)
    ip_version = IPVersion.All if any(":" in a for a in bind) else IPVersion.V4Only
    try:
        zeroconf = AsyncZeroconf(interfaces=bind or InterfaceChoice.All, ip_version=ip_version)
    except (OSError, ZeroconfError) as exc:
        logger.error("mDNS announcement disabled: cannot open mDNS sockets: %s", exc)
        return
    registered = False
    try:
        try:
            announcement = await zeroconf.async_register_service(info, allow_name_change=True)
            registered = True
            await announcement
        except (OSError, ZeroconfError) as exc:
            logger.error("mDNS announcement of %r failed: %s", info.name, exc)
            return
        logger.info("mDNS: announced %s on port %d at %s", info.name, port, ", ".join(addresses))
        await asyncio.Event().wait()
    finally:
        await _close(zeroconf, info if registered else None)


async def _close(zeroconf: AsyncZeroconf, info: ServiceInfo | None) -> None:
    # Goodbye packets tell browsers the box left; a failed goodbye is only
    # logged so it never masks the cancellation that brought us here.
    if info is not None:
        try:
            goodbye = await zeroconf.async_unregister_service(info)
            await goodbye
        except (OSError, ZeroconfError, KeyError) as exc:
            logger.debug("mDNS goodbye for %s failed: %s", info.name, exc)
    await zeroconf.async_close()
