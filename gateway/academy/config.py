"""The academy service's configuration: ``config/academy.toml`` into frozen dataclasses.

Same rules as the gateway's config (gateway.config): every key declared here
with its type, default and range; an unknown key, a wrong type or a value
out of range stops start-up with one ConfigError naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import build_dataclass, read_toml
from gateway.errors import ConfigError


@dataclass(frozen=True)
class DatabaseSection:
    """The academy's PostgreSQL (asyncpg DSN)."""

    dsn: str = "postgresql://academy@/academy?host=/var/run/postgresql"
    console_pool_size: int = field(default=4, metadata={"min": 1, "max": 100})
    connect_timeout_s: float = field(default=10.0, metadata={"min": 0.1})


@dataclass(frozen=True)
class BrokerSection:
    """The academy broker the gateways relay to (one node of a cluster is enough)."""

    host: str = "127.0.0.1"
    port: int = field(default=1883, metadata={"min": 1, "max": 65535})
    keepalive_s: int = field(default=60, metadata={"min": 5, "max": 3600})
    # Every worker joins this shared-subscription group: $share/<group>/...
    share_group: str = field(default="academy-ingest", metadata={"pattern": r"^[A-Za-z0-9_-]+$"})
    # Worker n connects as "<client_id_prefix>-<n>" with a persistent session.
    client_id_prefix: str = field(
        default="academy-ingest", metadata={"pattern": r"^[A-Za-z0-9_.-]{1,40}$"}
    )
    # TLS to the broker ("" = plain MQTT, development only).
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class IngestSection:
    """The ingest workers."""

    workers: int = field(default=2, metadata={"min": 1, "max": 64})
    # MQTT payloads waiting in one worker (after the link's own inbox). At the
    # bound the worker stops reading the socket; the broker keeps the rest.
    queue_payloads: int = field(default=2_000, metadata={"min": 10})
    # One transaction takes up to this many payloads, or what arrived within the window.
    batch_max_payloads: int = field(default=400, metadata={"min": 1})
    batch_window_s: float = field(default=0.05, metadata={"min": 0})
    # A payload larger than this is refused (counted, logged, acknowledged).
    max_payload_bytes: int = field(default=1_048_576, metadata={"min": 1024})
    # How long (upstream_seen) keys are kept to drop duplicates by (school, gateway, seq).
    dedup_window_s: float = field(default=14 * 86_400.0, metadata={"min": 3600})
    # A dead worker is started again after a capped, jittered delay.
    restart_backoff_cap_s: float = field(default=30.0, metadata={"min": 0.1})


@dataclass(frozen=True)
class RetentionSection:
    """What the service prunes, and how often."""

    summaries_s: float = field(default=30 * 86_400.0, metadata={"min": 3600})
    refused_payloads_s: float = field(default=7 * 86_400.0, metadata={"min": 3600})
    prune_interval_s: float = field(default=600.0, metadata={"min": 1})
    # A gateway not heard from for this long counts as offline in the overview
    # even if its retained status still says online.
    gateway_silent_s: float = field(default=900.0, metadata={"min": 10})


@dataclass(frozen=True)
class ConsoleSection:
    """The web console and its JSON API."""

    host: str = "127.0.0.1"
    port: int = field(default=8090, metadata={"min": 0, "max": 65535})
    # The academy's Ed25519 private key (PEM, mode 0600): commands are signed
    # with it on the server; it is never shown.
    key_file: Path = Path("/etc/school-academy/academy-ed25519.pem")
    key_id: str = "academy-1"
    # Cookies get the Secure flag (set it when the console is behind TLS).
    secure_cookies: bool = True
    session_ttl_s: float = field(default=8 * 3600.0, metadata={"min": 60})
    default_ttl_s: int = field(default=86_400, metadata={"min": 60})
    max_ttl_s: int = field(default=30 * 86_400, metadata={"min": 60})
    language: str = field(default="fr", metadata={"pattern": r"^(fr|en)$"})


@dataclass(frozen=True)
class AcademyConfig:
    """The whole academy configuration, one field per TOML table."""

    database: DatabaseSection = field(default_factory=DatabaseSection)
    broker: BrokerSection = field(default_factory=BrokerSection)
    ingest: IngestSection = field(default_factory=IngestSection)
    retention: RetentionSection = field(default_factory=RetentionSection)
    console: ConsoleSection = field(default_factory=ConsoleSection)
    source: Path = field(default=Path("<memory>"), metadata={"internal": True})


def academy_config_from_mapping(
    table: dict[str, Any], *, source: Path = Path("<memory>")
) -> AcademyConfig:
    config = build_dataclass(AcademyConfig, table, source=source)
    return dataclasses.replace(config, source=source)


def load_academy_config(path: Path) -> AcademyConfig:
    """Read and validate ``path``; raise ConfigError naming the key and file."""
    return academy_config_from_mapping(read_toml(path), source=path)


def broker_tls(config: AcademyConfig) -> ssl.SSLContext | None:
    """TLS to the academy broker when ``broker.ca_file`` is set (client cert optional)."""
    broker = config.broker
    if not broker.ca_file:
        return None
    try:
        context = ssl.create_default_context(cafile=broker.ca_file)
        if broker.cert_file:
            context.load_cert_chain(broker.cert_file, broker.key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{config.source}: broker TLS files: {exc}") from exc
    return context
