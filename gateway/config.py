"""Configuration: one TOML file loaded into frozen dataclasses.

Every section and key is declared here with its type and default. An unknown
key, a wrong type, a value out of range or a missing required value stops
start-up with one ConfigError naming the key and the file. Ranges and
patterns live in each field's metadata (``min``, ``max``, ``pattern``).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ConfigError

ID_PATTERN = r"^[a-z0-9][a-z0-9-]{1,62}$"
_WINDOW = r"^([01]\d|2[0-3]):[0-5]\d-(([01]\d|2[0-3]):[0-5]\d|24:00)$"
DEFAULT_CONFIG_PATH = Path("/etc/school-gateway/gateway.toml")

_T = TypeVar("_T")


def _port(default: int) -> Any:
    return field(default=default, metadata={"min": 0, "max": 65535})


@dataclass(frozen=True)
class GatewaySection:
    """Who this box is and where it keeps its state."""

    school_id: str = field(metadata={"pattern": ID_PATTERN})
    gateway_id: str = field(metadata={"pattern": ID_PATTERN})
    state_dir: Path = Path("/var/lib/school-gateway")


@dataclass(frozen=True)
class SchoolBrokerSection:
    """The Mosquitto on this box that tablets talk to."""

    host: str = "127.0.0.1"
    port: int = _port(1883)
    keepalive_s: int = field(default=30, metadata={"min": 2, "max": 3600})
    # MQTT 5 Receive Maximum of the gateway's link: how many tablet messages
    # the broker may send it unacknowledged (they wait for the store's commit).
    receive_max: int = field(default=4_000, metadata={"min": 10, "max": 65_535})
    # How long the gateway waits for the broker's PUBACK of a command delivery.
    publish_timeout_s: float = field(default=10.0, metadata={"min": 0.1, "max": 300})
    # Per-client limits written into the generated Mosquitto config.
    max_inflight_messages: int = field(default=1000, metadata={"min": 1})
    max_queued_messages: int = field(default=100_000, metadata={"min": 100})
    # Security (docs/security.md): tablets connect with TLS and a client
    # certificate on tls_host:tls_port; host:port is the gateway's own listener.
    tls_host: str = "0.0.0.0"
    tls_port: int = _port(8883)
    server_names: tuple[str, ...] = ()  # extra DNS names for the server certificate
    reload_command: tuple[str, ...] = ("systemctl", "reload", "mosquitto.service")
    # DEVELOPMENT ONLY: an anonymous plain listener on 127.0.0.1 instead of TLS.
    lab_plain_listener: bool = False


@dataclass(frozen=True)
class AcademyBrokerSection:
    """The academy's MQTT broker, reached over the school's uplink."""

    host: str
    port: int = _port(1883)
    keepalive_s: int = field(default=60, metadata={"min": 5, "max": 3600})
    # mTLS: the academy CA to pin ("" = plain MQTT, development only), and the
    # gateway's certificate signed by the academy ("" = <state_dir>/pki/...).
    ca_file: str = ""
    cert_file: str = ""


@dataclass(frozen=True)
class UplinkSection:
    """What the gateway may send upstream, and how fast."""

    max_bytes_per_s: int = field(default=50_000, metadata={"min": 100})
    outbox_budget_bytes: int = field(default=2_000_000, metadata={"min": 10_000})
    batch_max_bytes: int = field(default=64_000, metadata={"min": 1_000})
    summary_interval_s: float = field(default=300.0, metadata={"min": 1})


@dataclass(frozen=True)
class TabletsSection:
    """Limits and thresholds for what tablets report."""

    max_report_bytes: int = field(default=16_384, metadata={"min": 256, "max": 262_144})
    # Per-tablet budget at the intake (token bucket over every message a tablet
    # publishes): beyond it, its messages are dropped at once and counted.
    max_messages_per_s: float = field(default=100.0, metadata={"min": 0.01})
    message_burst: int = field(default=1_000, metadata={"min": 1})
    low_battery_pct: int = field(default=20, metadata={"min": 0, "max": 100})
    low_storage_mb: int = field(default=500, metadata={"min": 0})
    required_apps: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpSection:
    """The LAN HTTP server: content for tablets, the local page, the admin API."""

    host: str = "0.0.0.0"
    port: int = _port(8080)


@dataclass(frozen=True)
class CacheSection:
    """The update cache on the box's disk."""

    quota_bytes: int = field(default=20_000_000_000, metadata={"min": 0})
    # The filesystem keeps max(min_free_bytes, min_free_percent of its size)
    # free: 64 MB on the image's 1 GiB data partition, 5 % of a larger disk.
    min_free_bytes: int = field(default=64_000_000, metadata={"min": 0})
    min_free_percent: float = field(default=5.0, metadata={"min": 0, "max": 90})
    prefetch_bytes_per_s: int = field(default=500_000, metadata={"min": 1_000})
    offpeak_windows: tuple[str, ...] = ("22:00-06:00",)
    # Shared uplink budget of every cache download; 0 = no limit.
    uplink_bytes_per_s: int = field(default=0, metadata={"min": 0})
    # Signed manifest fetched from here ("" = only delivered by command).
    manifest_url: str = ""
    manifest_refresh_s: float = field(default=3600.0, metadata={"min": 1})
    origin_connect_timeout_s: float = field(default=10.0, metadata={"min": 0.1})
    origin_read_timeout_s: float = field(default=30.0, metadata={"min": 0.1})
    # A download with no progress for this long fails (its partial file stays).
    origin_give_up_s: float = field(default=120.0, metadata={"min": 0})
    # How long a tablet's request waits for the origin to answer before a 503.
    origin_wait_s: float = field(default=10.0, metadata={"min": 0.1})
    retry_after_s: int = field(default=30, metadata={"min": 1})


@dataclass(frozen=True)
class CommandsSection:
    """Signed commands from the academy."""

    academy_keys: dict[str, str] = field(default_factory=dict)
    max_envelope_bytes: int = field(default=16_384, metadata={"min": 256})
    clock_skew_s: int = field(default=300, metadata={"min": 0})
    max_ttl_s: int = field(default=30 * 86_400, metadata={"min": 60})
    max_unfinished_commands: int = field(default=1_000, metadata={"min": 1})
    redeliver_after_s: float = field(default=300.0, metadata={"min": 1})
    retention_s: float = field(default=7 * 86_400.0, metadata={"min": 0})


@dataclass(frozen=True)
class EnrollmentSection:
    """The HTTPS endpoint where tablets redeem enrollment tokens."""

    host: str = "0.0.0.0"
    port: int = _port(8443)
    token_ttl_s: int = field(default=3600, metadata={"min": 60})
    certificate_days: int = field(default=730, metadata={"min": 1, "max": 3650})
    advertised_host: str = ""  # broker host told to tablets; "" = the address they reached


@dataclass(frozen=True)
class DiscoverySection:
    """mDNS/DNS-SD announcement of the box on the LAN (``_school-gateway._tcp``).

    Off unless configured: the shipped config/gateway.toml turns it on for the
    box; development and test configs stay quiet on the network.
    """

    enabled: bool = False


@dataclass(frozen=True)
class EscrowSection:
    """Identity escrow to the academy (gateway.security.escrow); off while no key is set."""

    academy_public_key: str = ""  # base64 X25519 public key (python -m gateway escrow keygen)
    interval_s: float = field(default=86_400.0, metadata={"min": 60})
    check_s: float = field(default=60.0, metadata={"min": 1})


@dataclass(frozen=True)
class TechniciansSection:
    """Who may log in to the box over SSH (read by the image's provisioning step).

    The gateway itself does not use it; it is declared so the provisioning
    file, which is also the gateway's config, may carry it.
    """

    ssh_keys: tuple[str, ...] = ()  # OpenSSH public key lines; none = no SSH at all


@dataclass(frozen=True)
class ConsoleSection:
    """The school's own web console on the HTTP port (gateway/school_console)."""

    enabled: bool = True
    # True when the console is reached through TLS: cookies then never travel in clear.
    secure_cookies: bool = False
    session_lifetime_s: float = field(default=12 * 3600.0, metadata={"min": 60})
    # The first IT-contact account: from provisioning (an scrypt hash, see
    # docs/operations.md), else a one-time set-up code shown by `status`.
    first_it_contact: str = field(
        default="informatique", metadata={"pattern": r"^[a-z0-9._-]{2,40}$"}
    )
    first_it_password_hash: str = ""
    # Folders a USB stick may be imported from (the page refuses any other path).
    import_roots: tuple[str, ...] = ("/media", "/mnt")


@dataclass(frozen=True)
class SystemUpdateSection:
    """A/B system updates with RAUC (gateway/sysupdate, docs/operations.md).

    The gateway reads the files below and writes an install request; the
    privileged helper and the boot health check (``system-update install`` /
    ``health-check``, run as root by their systemd units) read the same keys.
    """

    enabled: bool = True
    # When a fetched, verified bundle may be installed (local time, "HH:MM-HH:MM",
    # may wrap past midnight): the box reboots right after a successful install.
    window: str = field(default="02:00-05:00", metadata={"pattern": _WINDOW})
    check_interval_s: float = field(default=60.0, metadata={"min": 1, "max": 3600})
    version_file: Path = Path("/usr/lib/school-gateway/system-version")
    rauc_system_conf: Path = Path("/etc/rauc/system.conf")
    keyring: Path = Path("/etc/rauc/keyring.pem")
    rauc_command: tuple[str, ...] = ("rauc",)
    reboot_command: tuple[str, ...] = ("systemctl", "reboot")
    # After an install: [] = the image's /usr/lib/school-gateway/reboot-into-update when it
    # exists (a Pi boots the new slot once with tryboot), else reboot_command.
    reboot_into_update_command: tuple[str, ...] = ()
    # The first boot of a new slot must be healthy within this long, else mark-bad + reboot.
    health_deadline_s: float = field(default=300.0, metadata={"min": 5, "max": 3600})
    # An install tried this many times (power cuts, failed reboots) is not tried again.
    max_attempts: int = field(default=3, metadata={"min": 1, "max": 20})


@dataclass(frozen=True)
class Config:
    """The whole configuration, one field per TOML table."""

    gateway: GatewaySection
    academy_broker: AcademyBrokerSection
    school_broker: SchoolBrokerSection = field(default_factory=SchoolBrokerSection)
    uplink: UplinkSection = field(default_factory=UplinkSection)
    tablets: TabletsSection = field(default_factory=TabletsSection)
    http: HttpSection = field(default_factory=HttpSection)
    cache: CacheSection = field(default_factory=CacheSection)
    commands: CommandsSection = field(default_factory=CommandsSection)
    enrollment: EnrollmentSection = field(default_factory=EnrollmentSection)
    discovery: DiscoverySection = field(default_factory=DiscoverySection)
    escrow: EscrowSection = field(default_factory=EscrowSection)
    technicians: TechniciansSection = field(default_factory=TechniciansSection)
    console: ConsoleSection = field(default_factory=ConsoleSection)
    system_update: SystemUpdateSection = field(default_factory=SystemUpdateSection)
    source: Path = field(default=Path("<memory>"), metadata={"internal": True})


def add_config_argument(group: argparse.ArgumentParser, *actions: argparse.ArgumentParser) -> None:
    """``--config FILE`` on a command and on each of its actions.

    ``enroll --config F new`` and ``enroll new --config F`` both work, like
    every other command's ``--config`` after its name; given twice, the one
    nearer the end wins.
    """
    group.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help=f"gateway config file (default {DEFAULT_CONFIG_PATH})",
    )
    for action in actions:
        action.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="same")


def load_config(path: Path) -> Config:
    """Read and validate ``path``; raise ConfigError naming the key and file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return config_from_mapping(table, source=path)


def config_from_mapping(table: dict[str, Any], *, source: Path = Path("<memory>")) -> Config:
    """Build a Config from already-parsed TOML (used by tests and the demo)."""
    config = _build(Config, table, prefix="", source=source)
    check_lab_plain_listener(config.school_broker, source)
    return dataclasses.replace(config, source=source)


def check_lab_plain_listener(broker: SchoolBrokerSection, source: Path) -> None:
    """The anonymous lab listener is refused anywhere but loopback."""
    if broker.lab_plain_listener and broker.host not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigError(
            f"{source}: school_broker.lab_plain_listener is for development only and "
            f"needs school_broker.host = 127.0.0.1, got {broker.host!r}"
        )


def _build(cls: type[_T], table: Any, *, prefix: str, source: Path) -> _T:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{where}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in table:
        if key not in known or known[key].metadata.get("internal"):
            raise ConfigError(f"{source}: unknown key {prefix}{key}")
    values: dict[str, Any] = {}
    for name, spec in known.items():
        if spec.metadata.get("internal"):
            continue
        key = f"{prefix}{name}"
        if name not in table:
            no_default = (
                spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
            )
            if no_default:
                if dataclasses.is_dataclass(hints[name]):
                    values[name] = _build(hints[name], {}, prefix=f"{key}.", source=source)
                    continue
                raise ConfigError(f"{source}: missing required key {key}")
            continue
        values[name] = _convert(hints[name], table[name], key=key, source=source)
        _check_range(spec, values[name], key=key, source=source)
    return cls(**values)


def _convert(kind: Any, value: Any, *, key: str, source: Path) -> Any:
    def wrong(expected: str) -> ConfigError:
        return ConfigError(
            f"{source}: {key} must be {expected}, got {type(value).__name__} {value!r}"
        )

    if dataclasses.is_dataclass(kind):
        return _build(kind, value, prefix=f"{key}.", source=source)  # type: ignore[arg-type]
    if kind is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise wrong("a path string")
        return Path(value)
    origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong("a list of strings")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise wrong("a table of strings")
        return dict(value)
    if isinstance(kind, types.UnionType):  # pragma: no cover - no optional keys yet
        raise wrong(str(kind))
    raise ConfigError(f"{source}: {key} has an unsupported type {kind!r}")  # pragma: no cover


def _check_range(spec: dataclasses.Field[Any], value: Any, *, key: str, source: Path) -> None:
    low = spec.metadata.get("min")
    high = spec.metadata.get("max")
    if low is not None and value < low:
        raise ConfigError(f"{source}: {key} must be >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{source}: {key} must be <= {high}, got {value!r}")
    pattern = spec.metadata.get("pattern")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise ConfigError(f"{source}: {key} must match {pattern}, got {value!r}")


def build_dataclass(cls: type[_T], table: dict[str, Any], *, source: Path) -> _T:
    """Build any config dataclass tree with the same rules (the academy's config uses it)."""
    return _build(cls, table, prefix="", source=source)


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a table, or ConfigError naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
