"""The school's X.509 in plain functions over values (no files, no sockets).

Keys are ECDSA P-256: every TLS stack a tablet or Mosquitto ships accepts
them, and they are quick to make on a Raspberry Pi. The school CA signs:

- the school broker's server certificate (SANs: the box's LAN addresses,
  loopback and its mDNS name),
- the gateway's own client certificate for the school broker
  (CN ``gateway-<gw>``, see :func:`gateway_common_name`),
- one client certificate per tablet (CN = the device id the gateway chose;
  the subject a tablet writes in its CSR is ignored),
- the certificate revocation list the broker checks.

Every function takes ``now`` so tests can pin the clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import RejectedInput, SecurityError

PrivateKey = ec.EllipticCurvePrivateKey
MAX_CSR_BYTES = 8192
GATEWAY_CN_PREFIX = "gateway-"


def gateway_common_name(gateway_id: str) -> str:
    """The CN (and broker user name) of the gateway's own client certificate."""
    return f"{GATEWAY_CN_PREFIX}{gateway_id}"


def new_private_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes, where: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SecurityError(f"{where}: not a PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SecurityError(f"{where}: expected an ECDSA key, got {type(key).__name__}")
    return key


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificate(pem: bytes, where: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise SecurityError(f"{where}: not a PEM certificate: {exc}") from exc


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex (what a QR code pins)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def common_name(cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def _name(cn: str, organization: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if organization:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(parts)


def _random_serial() -> int:
    # 159 bits: positive and within the 20 octets RFC 5280 allows.
    return secrets.randbits(159) | 1


def make_ca(key: PrivateKey, school_id: str, now: dt.datetime, days: int) -> x509.Certificate:
    """A self-signed CA for one school (path length 0: it signs only end entities)."""
    name = _name(f"School gateway CA {school_id}", school_id)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(_random_serial())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class Issuer:
    """The CA that signs: its certificate and key."""

    certificate: x509.Certificate
    key: PrivateKey


def _end_entity(
    issuer: Issuer,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    *,
    cn: str,
    now: dt.datetime,
    days: int,
    usage: x509.ObjectIdentifier,
) -> x509.CertificateBuilder:
    ca_public = issuer.key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(_random_serial())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), issuer.certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
    )


def issue_server_certificate(
    issuer: Issuer,
    public_key: ec.EllipticCurvePublicKey,
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    """The school broker's (and enrollment endpoint's) TLS server certificate."""
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    cn = dns_names[0] if dns_names else "school-gateway"
    builder = _end_entity(
        issuer, public_key, cn=cn, now=now, days=days, usage=ExtendedKeyUsageOID.SERVER_AUTH
    ).add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer.key, hashes.SHA256())


def issue_client_certificate(
    issuer: Issuer,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    *,
    cn: str,
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    """A client certificate whose CN is the broker user name (a device id or the gateway)."""
    builder = _end_entity(
        issuer, public_key, cn=cn, now=now, days=days, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    return builder.sign(issuer.key, hashes.SHA256())


def parse_csr(pem: bytes | str) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The public key of a tablet's CSR, or RejectedInput('malformed_csr', why).

    The CSR must be PEM, signed by its own key (proof of possession), and
    carry an ECDSA P-256/P-384 or RSA >= 2048 key. Its subject is ignored:
    the gateway names the device.
    """
    data = pem.encode() if isinstance(pem, str) else pem
    if len(data) > MAX_CSR_BYTES:
        raise RejectedInput("malformed_csr", f"csr_pem is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise RejectedInput(
            "malformed_csr", f"csr_pem is not a PEM certificate request: {exc}"
        ) from None
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, ValueError):
        valid = False
    if not valid:
        raise RejectedInput("malformed_csr", "csr_pem is not signed by its own key")
    try:
        key = csr.public_key()
    except ValueError as exc:
        raise RejectedInput("malformed_csr", f"csr_pem key cannot be read: {exc}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise RejectedInput("malformed_csr", f"csr_pem curve {key.curve.name} not accepted")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise RejectedInput("malformed_csr", f"csr_pem RSA key of {key.key_size} bits < 2048")
        return key
    raise RejectedInput("malformed_csr", f"csr_pem key type {type(key).__name__} not accepted")


def build_crl(
    issuer: Issuer, revoked: Iterable[tuple[int, dt.datetime]], now: dt.datetime, days: int
) -> bytes:
    """A PEM CRL listing ``(serial, revoked_at)``.

    OpenSSL refuses every client once a CRL's next update has passed, so the
    gateway writes a long one (``days``) and rewrites it at each start.
    """
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=days))
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    crl = builder.sign(issuer.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """True when ``ca`` signed ``cert`` (names and signature)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def covers(cert: x509.Certificate, dns_names: Iterable[str], ip_addresses: Iterable[str]) -> bool:
    """True when the certificate's SANs include every name and address given."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ip = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    wanted_ip = {str(ipaddress.ip_address(a)) for a in ip_addresses}
    return set(dns_names) <= have_dns and wanted_ip <= have_ip


def expires_within(cert: x509.Certificate, now: dt.datetime, days: int) -> bool:
    return cert.not_valid_after_utc - now < dt.timedelta(days=days)
