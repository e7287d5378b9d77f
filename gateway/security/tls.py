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


def academy_client_cert(config: Config) -> Path:
    """Where the gateway's academy-signed certificate is (``academy_broker.cert_file``)."""
    cert_file = config.academy_broker.cert_file
    return (
        Path(cert_file)
        if cert_file
        else PkiPaths.under(config.gateway.state_dir).academy_client_cert
    )


def missing_academy_cert(config: Config) -> str | None:
    """Why the uplink cannot connect yet (its client certificate is missing), or None.

    The academy broker requires the certificate (mTLS): connecting without it
    only fails in the TLS handshake, with errors that do not name the cause.
    """
    if not config.academy_broker.ca_file:
        return None
    cert = academy_client_cert(config)
    if cert.exists():
        return None
    csr = PkiPaths.under(config.gateway.state_dir).gateway_csr
    return f"no academy client certificate: have the academy sign {csr} and install it as {cert}"


def academy_context(config: Config) -> ssl.SSLContext | None:
    """mTLS to the academy, its CA pinned; None (plain MQTT) when no CA is configured.

    SecurityError when the client certificate is missing (:func:`missing_academy_cert`).
    """
    academy = config.academy_broker
    if not academy.ca_file:
        log.warning("academy_broker.ca_file is empty: the uplink is NOT encrypted (development)")
        return None
    missing = missing_academy_cert(config)
    if missing is not None:
        raise SecurityError(missing)
    paths = PkiPaths.under(config.gateway.state_dir)
    return client_context(Path(academy.ca_file), academy_client_cert(config), paths.gateway_key)
