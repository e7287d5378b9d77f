"""TLS contexts for the gateway's own MQTT clients (school broker, academy uplink)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from gateway.config import Config
from gateway.errors import SecurityError
from gateway.security.identity import PkiPaths
from gateway.security.keyfiles import check_private_file

log = logging.getLogger(__name__)


def client_context(ca_file: Path, cert_file: Path | None, key_file: Path) -> ssl.SSLContext:
    """Verify the server against ``ca_file`` only (pinned), present our certificate."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise SecurityError(f"cannot load CA certificate {ca_file}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        check_private_file(key_file)
        try:
            context.load_cert_chain(str(cert_file), str(key_file))
        except (OSError, ssl.SSLError) as exc:
            raise SecurityError(f"cannot load {cert_file} with {key_file}: {exc}") from exc
    return context


def school_broker_context(config: Config) -> ssl.SSLContext | None:
    """The gateway's client on the school broker: its gateway-<gw> certificate."""
    if config.school_broker.lab_plain_listener:
        return None
    paths = PkiPaths.under(config.gateway.state_dir)
    return client_context(paths.ca_cert, paths.gateway_school_cert, paths.gateway_key)


def academy_context(config: Config) -> ssl.SSLContext | None:
    """mTLS to the academy, its CA pinned; None (plain MQTT) when no CA is configured."""
    academy = config.academy_broker
    if not academy.ca_file:
        log.warning("academy_broker.ca_file is empty: the uplink is NOT encrypted (development)")
        return None
    paths = PkiPaths.under(config.gateway.state_dir)
    cert = Path(academy.cert_file) if academy.cert_file else paths.academy_client_cert
    if not cert.exists():
        log.error(
            "academy client certificate %s is missing: have the academy sign %s; "
            "connecting without a client certificate until then",
            cert,
            paths.gateway_csr,
        )
        return client_context(Path(academy.ca_file), None, paths.gateway_key)
    return client_context(Path(academy.ca_file), cert, paths.gateway_key)
