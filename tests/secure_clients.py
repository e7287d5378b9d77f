"""Tablets with certificates, for the security tests (helpers, not tests)."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import aiomqtt

from gateway.security import pki
from gateway.security.keyfiles import write_private_file, write_public_file
from gateway.security.tls import client_context


def issue_tablet_files(issuer: pki.Issuer, device_id: str, directory: Path) -> Path:
    """Key and certificate for ``device_id`` signed by ``issuer``, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = pki.new_private_key()
    cert = pki.issue_client_certificate(
        issuer, key.public_key(), cn=device_id, now=dt.datetime.now(dt.UTC), days=30
    )
    write_private_file(directory / f"{device_id}.key", pki.private_key_pem(key))
    write_public_file(directory / f"{device_id}.crt", pki.certificate_pem(cert))
    return directory


def tablet_context(ca_file: Path, directory: Path, device_id: str | None) -> ssl.SSLContext:
    """Trust ``ca_file``; present ``device_id``'s certificate (None: no certificate)."""
    if device_id is None:
        return client_context(ca_file, None, directory / "none.key")
    return client_context(ca_file, directory / f"{device_id}.crt", directory / f"{device_id}.key")


def tablet_client(
    port: int, context: ssl.SSLContext | None, identifier: str, **kwargs: object
) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", port, identifier=identifier, tls_context=context, timeout=5, **kwargs
    )  # type: ignore[arg-type]


def other_ca(school_id: str = "elsewhere") -> pki.Issuer:
    key = pki.new_private_key()
    return pki.Issuer(pki.make_ca(key, school_id, dt.datetime.now(dt.UTC), 30), key)
