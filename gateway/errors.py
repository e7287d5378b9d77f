"""The gateway's one exception tree.

GatewayError
├── ConfigError      the config file is missing, malformed or names a bad key/value
├── StoreError       SQLite failed (disk full, corrupt file, migration error)
│   └── StoreUnavailable  the disk refuses writes now (full, I/O error): retry later
├── BrokerError      an MQTT broker is unreachable or refused us
├── UplinkError      the academy link or the origin cannot be used right now
├── SecurityError    keys, certificates or enrollment tokens are unusable
├── CacheError       the update cache cannot hold or complete an item (refused, corrupt)
├── SystemUpdateError  RAUC refused or failed (a bundle, an install, a slot mark)
└── RejectedInput    a payload from a tablet, the academy or the network is invalid

Library exceptions (aiomqtt.MqttError, sqlite3.Error, aiohttp.ClientError) are
translated into this tree at the adapter that calls the library.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration cannot be used; the message names the key and the file."""


class StoreError(GatewayError):
    """The SQLite store failed."""


class StoreUnavailable(StoreError):
    """The store cannot write right now (disk full, I/O error); the same write may work later."""


class BrokerError(GatewayError):
    """An MQTT broker could not be reached or refused an operation."""


class UplinkError(GatewayError):
    """The academy link or an origin server is not usable right now."""


class SecurityError(GatewayError):
    """A key, certificate or token is missing, unreadable or too widely readable."""


class CacheError(GatewayError):
    """The update cache refused an item or a download failed its hash check."""


class SystemUpdateError(GatewayError):
    """RAUC refused a bundle or failed; the message is RAUC's own, for the outcome record."""


class RejectedInput(GatewayError):
    """A payload was refused. ``reason`` is a short stable code used in counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
