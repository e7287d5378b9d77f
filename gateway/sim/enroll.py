"""A simulated tablet's enrollment: the same HTTPS exchange a real MDM agent makes.

From an enrollment URL (what the QR code holds: endpoint, token, CA
fingerprint) the tablet:

1. fetches the school CA from ``/enroll/ca.pem`` without trusting the
   connection, and keeps it only if its SHA-256 equals the fingerprint;
2. makes its own key (it never leaves the tablet) and a CSR;
3. POSTs token and CSR to ``/enroll`` over TLS verified with that CA;
4. keeps key (0600), certificate and CA in its own directory, and builds the
   TLS context it connects to the broker with.
"""

from __future__ import annotations

import hashlib
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from gateway.errors import RejectedInput, SecurityError
from gateway.security import pki
from gateway.security.keyfiles import write_private_file, write_public_file
from gateway.security.tls import client_context


@dataclass(frozen=True)
class TabletCredentials:
    """What a tablet keeps after enrolling."""

    device_id: str
    directory: Path
    broker_host: str
    broker_port: int

    def tls_context(self) -> ssl.SSLContext:
        d = self.directory
        return client_context(d / "ca.pem", d / "cert.pem", d / "key.pem")


def _split_url(url: str) -> tuple[str, str, str]:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    try:
        token, fingerprint = query["token"][0], query["ca_sha256"][0]
    except (KeyError, IndexError):
        raise SecurityError(f"enrollment URL {url!r} lacks token or ca_sha256") from None
    return f"{parts.scheme}://{parts.netloc}", token, fingerprint


def make_csr(key: pki.PrivateKey, name: str = "tablet") -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def fetch_pinned_ca(session: aiohttp.ClientSession, base: str, fingerprint: str) -> bytes:
    async with session.get(f"{base}/enroll/ca.pem", ssl=False) as response:
        pem = await response.read()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    if hashlib.sha256(der).hexdigest() != fingerprint.lower():
        raise SecurityError(f"{base} offered a CA that does not match the enrollment code")
    return pem


async def post_enrollment(
    session: aiohttp.ClientSession, base: str, ca_pem: bytes, body: dict[str, Any]
) -> dict[str, Any]:
    """POST /enroll over TLS verified with ``ca_pem``; RejectedInput on a refusal."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    async with session.post(f"{base}/enroll", json=body, ssl=context) as response:
        answer: dict[str, Any] = await response.json()
        if response.status != 200:
            raise RejectedInput(answer.get("error", "refused"), answer.get("detail", ""))
    return answer


def _keep(directory: Path, key: pki.PrivateKey, cert_pem: bytes, ca_pem: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_private_file(directory / "key.pem", pki.private_key_pem(key))
    write_public_file(directory / "cert.pem", cert_pem)
    write_public_file(directory / "ca.pem", ca_pem)


async def enroll_tablet(url: str, directory: Path) -> TabletCredentials:
    """Enroll through ``url`` and keep the credentials in ``directory``."""
    base, token, fingerprint = _split_url(url)
    key = pki.new_private_key()
    async with aiohttp.ClientSession() as session:
        ca_pem = await fetch_pinned_ca(session, base, fingerprint)
        answer = await post_enrollment(
            session, base, ca_pem, {"token": token, "csr_pem": make_csr(key)}
        )
    _keep(directory, key, answer["certificate_pem"].encode(), ca_pem)
    broker = answer["broker"]
    return TabletCredentials(answer["device_id"], directory, broker["host"], int(broker["port"]))
