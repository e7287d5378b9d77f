"""The gateway's keys and certificates in ``<state_dir>/pki``, made at first start.

    ca.key / ca.crt                    the school CA (signs everything below)
    server.key / server.crt            the school broker's and enrollment endpoint's TLS identity
    gateway.key                        the gateway's own identity key
    gateway-school.crt                 its client certificate for the school broker (school CA)
    gateway.csr                        its request for the academy to sign (provisioning)
    academy-client.crt                 what the academy signed (academy CA; delivered, not made)
    crl.pem, acl                       written by gateway.security.broker_files

Private keys are written 0600 and checked on every start: a key that others
can read stops the gateway with SecurityError. The server certificate is
re-issued when it no longer covers the box's addresses or nears expiry
(the caller then reloads the broker). ``ensure_identity`` is idempotent.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from gateway.health.box import lan_addresses
from gateway.security import pki
from gateway.security.keyfiles import (
    check_private_file,
    read_private_file,
    write_private_file,
    write_public_file,
)

log = logging.getLogger(__name__)

CA_DAYS = 20 * 365
SERVER_DAYS = 3 * 365
GATEWAY_CLIENT_DAYS = 10 * 365
RENEW_WITHIN_DAYS = 60


@dataclass(frozen=True)
class PkiPaths:
    """Where each file lives under ``<state_dir>/pki``."""

    root: Path

    @classmethod
    def under(cls, state_dir: Path) -> PkiPaths:
        return cls(state_dir / "pki")

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def gateway_key(self) -> Path:
        return self.root / "gateway.key"

    @property
    def gateway_school_cert(self) -> Path:
        return self.root / "gateway-school.crt"

    @property
    def gateway_csr(self) -> Path:
        return self.root / "gateway.csr"

    @property
    def academy_client_cert(self) -> Path:
        return self.root / "academy-client.crt"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    @property
    def acl(self) -> Path:
        return self.root / "acl"


@dataclass(frozen=True)
class ServerNames:
    """What the server certificate must cover."""

    dns: tuple[str, ...]
    ips: tuple[str, ...]


def server_names(
    hostname: str, addresses: Sequence[str], extra_names: Sequence[str] = ()
) -> ServerNames:
    """The SANs for the box: loopback, its LAN addresses, ``<host>.local`` (mDNS), extras."""
    host = hostname.split(".", maxsplit=1)[0].lower() or "school-gateway"
    dns = ["localhost", f"{host}.local", *extra_names]
    ips = ["127.0.0.1", *addresses]
    return ServerNames(tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips)))


def local_server_names(extra_names: Sequence[str] = ()) -> ServerNames:
    return server_names(socket.gethostname(), lan_addresses(), extra_names)


@dataclass(frozen=True)
class Identity:
    """The loaded identity, and whether the broker must reload its certificate."""

    paths: PkiPaths
    issuer: pki.Issuer
    ca_fingerprint: str
    server_reissued: bool


def _load_or_make_key(path: Path, *, group_may_read: bool = False) -> pki.PrivateKey:
    if path.exists():
        pem = read_private_file(path, group_may_read=group_may_read)
        return pki.load_private_key(pem, str(path))
    key = pki.new_private_key()
    write_private_file(path, pki.private_key_pem(key))
    log.info("created private key %s (mode 600)", path)
    return key


def _academy_csr(key: pki.PrivateKey, school_id: str, gateway_id: str) -> bytes:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{school_id}-{gateway_id}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, school_id),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def ensure_identity(
    state_dir: Path,
    *,
    school_id: str,
    gateway_id: str,
    names: ServerNames,
    now: dt.datetime | None = None,
) -> Identity:
    """Create what is missing, check what exists; return the loaded identity."""
    now = now or dt.datetime.now(dt.UTC)
    paths = PkiPaths.under(state_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.root.chmod(0o750)

    ca_key = _load_or_make_key(paths.ca_key)
    if paths.ca_cert.exists():
        ca_cert = pki.load_certificate(paths.ca_cert.read_bytes(), str(paths.ca_cert))
    else:
        ca_cert = pki.make_ca(ca_key, school_id, now, CA_DAYS)
        write_public_file(paths.ca_cert, pki.certificate_pem(ca_cert))
        log.info("created the school CA %s", paths.ca_cert)
    issuer = pki.Issuer(ca_cert, ca_key)

    server_key = _load_or_make_key(paths.server_key, group_may_read=True)
    reissue = True
    if paths.server_cert.exists():
        current = pki.load_certificate(paths.server_cert.read_bytes(), str(paths.server_cert))
        reissue = (
            not pki.issued_by(current, ca_cert)
            or not pki.covers(current, names.dns, names.ips)
            or pki.expires_within(current, now, RENEW_WITHIN_DAYS)
        )
    if reissue:
        server_cert = pki.issue_server_certificate(
            issuer,
            server_key.public_key(),
            dns_names=names.dns,
            ip_addresses=names.ips,
            now=now,
            days=SERVER_DAYS,
        )
        write_public_file(paths.server_cert, pki.certificate_pem(server_cert))
        log.info("issued the broker's server certificate for %s", ", ".join(names.dns + names.ips))

    gateway_key = _load_or_make_key(paths.gateway_key)
    if not paths.gateway_school_cert.exists():
        client = pki.issue_client_certificate(
            issuer,
            gateway_key.public_key(),
            cn=pki.gateway_common_name(gateway_id),
            now=now,
            days=GATEWAY_CLIENT_DAYS,
        )
        write_public_file(paths.gateway_school_cert, pki.certificate_pem(client))
    if not paths.gateway_csr.exists():
        write_public_file(paths.gateway_csr, _academy_csr(gateway_key, school_id, gateway_id))
    for private in (paths.ca_key, paths.gateway_key):
        check_private_file(private)
    check_private_file(paths.server_key, group_may_read=True)
    return Identity(paths, issuer, pki.fingerprint(ca_cert), reissue)
