"""Render the school broker's Mosquitto config from config/mosquitto.conf.template.

Two shapes, both plain functions over the gateway config:

- **secure** (the default, production): no anonymous access. A TLS listener
  on the LAN (``school_broker.tls_host:tls_port``) where a tablet must show a
  certificate from the school CA; its CN is its user name *and* its client
  id (``use_identity_as_username`` + ``use_username_as_clientid``), so a
  tablet can neither act as another nor kick another off. A second TLS
  listener on loopback (``school_broker.host:port``) for the gateway's own
  client, with its ``gateway-<gw>`` certificate; there the client id is free
  so the gateway can take over a revoked tablet's session. Both check the
  CRL. The ACL (gateway.security.broker_files.render_acl) gives each tablet
  its own topics only.
- **lab plain listener** (``school_broker.lab_plain_listener = true``, for
  tests, the demo and benchmarks only): one anonymous plain listener bound to
  127.0.0.1, no TLS, no ACL. Refused on any other address.
"""

from __future__ import annotations

import pwd
import sys
from pathlib import Path

from gateway.broker.limits import school_packet_limit
from gateway.config import Config, check_lab_plain_listener
from gateway.errors import ConfigError
from gateway.security.identity import PkiPaths

TEMPLATE_NAME = "mosquitto.conf.template"

_TLS_FILES = """\
cafile {ca}
certfile {cert}
keyfile {key}
crlfile {crl}
require_certificate true
use_identity_as_username true
tls_version tlsv1.2"""

_SECURE_LISTENERS = """\
# The gateway's own client: loopback, its gateway-<gw> certificate.
listener {port} {host}
{tls}

# Tablets on the LAN: a certificate from the school CA is the only way in,
# and its CN is both the user name and the client id.
listener {tls_port} {tls_host}
{tls}
use_username_as_clientid true

acl_file {acl}
"""

_LAB_LISTENER = """\
# DEVELOPMENT ONLY (school_broker.lab_plain_listener): anonymous plain MQTT on loopback.
listener {port} {host}
"""


def find_template() -> Path:
    """The template in the source tree, or where the wheel installed it."""
    candidates = [
        Path(__file__).resolve().parents[2] / "config" / TEMPLATE_NAME,
        Path(sys.prefix) / "share" / "school-gateway" / TEMPLATE_NAME,
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(f"Mosquitto template {TEMPLATE_NAME} not found in {candidates}")


def render_mosquitto_config(
    config: Config, template: Path | None = None, *, broker_user: str | None = None
) -> str:
    """The broker config text for ``config``'s school broker.

    ``broker_user`` writes Mosquitto's ``user`` option; the lab passes "root"
    when it runs as root, since Mosquitto reads the TLS files after dropping
    to its own user, which cannot enter a test's private temporary directory.
    """
    check_lab_plain_listener(config.school_broker, config.source)
    text = (template or find_template()).read_text()
    broker = config.school_broker
    if broker.lab_plain_listener:
        listeners = _LAB_LISTENER.format(host=broker.host, port=broker.port)
    else:
        pki = PkiPaths.under(config.gateway.state_dir)
        tls = _TLS_FILES.format(
            ca=pki.ca_cert, cert=pki.server_cert, key=pki.server_key, crl=pki.crl
        )
        listeners = _SECURE_LISTENERS.format(
            host=broker.host,
            port=broker.port,
            tls_host=broker.tls_host,
            tls_port=broker.tls_port,
            tls=tls,
            acl=pki.acl,
        )
    return text.format(
        allow_anonymous="true" if broker.lab_plain_listener else "false",
        max_inflight_messages=broker.max_inflight_messages,
        max_queued_messages=broker.max_queued_messages,
        max_packet_size=school_packet_limit(config),
        persistence_dir=config.gateway.state_dir / "mosquitto",
        user=f"user {broker_user}\n" if broker_user else "",
        listeners=listeners,
    )


def state_dir_owner(config: Config) -> str | None:
    """The user owning the state directory: the one Mosquitto must run as.

    Mosquitto started as root drops to its ``user`` (by default ``mosquitto``)
    before it reads the TLS key, CRL and ACL, which only the gateway's user may
    read; started by systemd as that user (the drop-in), the option is moot.
    """
    try:
        return pwd.getpwuid(config.gateway.state_dir.stat().st_uid).pw_name
    except (OSError, KeyError):
        return None


def write_mosquitto_config(config: Config, output: Path, *, broker_user: str | None = None) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    (config.gateway.state_dir / "mosquitto").mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    tmp.write_text(render_mosquitto_config(config, broker_user=broker_user))
    tmp.replace(output)
