"""The academy uplink over mTLS: the academy CA is pinned, the gateway shows its certificate."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography import x509

from gateway.lab.mosquitto import MosquittoProcess
from gateway.lab.waiting import wait_until
from gateway.security import pki
from gateway.security.keyfiles import write_private_file, write_public_file

NOW = dt.datetime.now(dt.UTC)

ACADEMY_TLS_CONFIG = """\
# Stand-in academy broker with mTLS (tests only).
per_listener_settings false
allow_anonymous false
persistence false
log_dest stdout
log_type error
log_type warning
{user}
listener {{port}} 127.0.0.1
cafile {ca}
certfile {cert}
keyfile {key}
require_certificate true
use_identity_as_username true
"""


def new_ca(name: str) -> pki.Issuer:
    key = pki.new_private_key()
    return pki.Issuer(pki.make_ca(key, name, NOW, 30), key)


def academy_files(directory: Path, server_issuer: pki.Issuer, client_ca: pki.Issuer) -> str:
    """Server key/certificate from ``server_issuer``; the broker trusts ``client_ca``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = pki.new_private_key()
    cert = pki.issue_server_certificate(
        server_issuer,
        key.public_key(),
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
        now=NOW,
        days=30,
    )
    write_private_file(directory / "server.key", pki.private_key_pem(key))
    write_public_file(directory / "server.crt", pki.certificate_pem(cert))
    write_public_file(directory / "clients-ca.crt", pki.certificate_pem(client_ca.certificate))
    return ACADEMY_TLS_CONFIG.format(
        user="user root" if os.geteuid() == 0 else "",
        ca=directory / "clients-ca.crt",
        cert=directory / "server.crt",
        key=directory / "server.key",
    )


@pytest.fixture
async def academy_ca(secure_school, tmp_path) -> pki.Issuer:
    """The academy's CA, which signed the gateway's CSR (as provisioning would)."""
    ca = new_ca("academy")
    paths = secure_school.identity.paths
    csr = x509.load_pem_x509_csr(paths.gateway_csr.read_bytes())
    cert = pki.issue_client_certificate(
        ca,
        csr.public_key(),
        cn=pki.common_name(csr),
        now=NOW,
        days=30,  # type: ignore[arg-type]
    )
    write_public_file(paths.academy_client_cert, pki.certificate_pem(cert))
    write_public_file(tmp_path / "academy-ca.crt", pki.certificate_pem(ca.certificate))
    return ca


@pytest.fixture
async def tls_academy(tmp_path) -> AsyncIterator[Callable[..., MosquittoProcess]]:
    started: list[MosquittoProcess] = []

    async def start(config_text: str) -> MosquittoProcess:
        broker = MosquittoProcess(tmp_path / "academy-tls", config_text)
        await broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        await broker.stop()


class TestAcademyMutualTls:
    """Connected only when the academy's certificate chains to the pinned CA."""

    async def test_connects_with_its_certificate_to_the_pinned_academy(
        self, start_secure_gateway, secure_school, academy_ca, tls_academy, tmp_path
    ):
        broker = await tls_academy(academy_files(tmp_path / "academy", academy_ca, academy_ca))
        running = await start_secure_gateway(
            {"academy_broker": {"port": broker.port, "ca_file": str(tmp_path / "academy-ca.crt")}}
        )
        gateway = running.gateway
        assert await wait_until(lambda: gateway.academy_link.is_connected, 10)
        assert gateway.counters.get("broker_tls_refused", link="academy") == 0

    @pytest.mark.usefixtures("secure_school")
    async def test_refuses_an_academy_certificate_from_another_ca_and_keeps_trying(
        self, start_secure_gateway, academy_ca, tls_academy, tmp_path, caplog
    ):
        impostor = new_ca("impostor")
        broker = await tls_academy(academy_files(tmp_path / "academy", impostor, academy_ca))
        running = await start_secure_gateway(
            {"academy_broker": {"port": broker.port, "ca_file": str(tmp_path / "academy-ca.crt")}}
        )
        counters = running.gateway.counters
        assert await wait_until(lambda: counters.get("broker_tls_refused", link="academy") >= 2, 15)
        assert not running.gateway.academy_link.is_connected
        assert "academy broker refused: its certificate is not trusted" in caplog.text
        assert running.gateway.school_link.is_connected


class TestAcademyRefusesOurCertificate:
    """The academy does not trust our client certificate: the log says that, in one line."""

    async def test_says_the_client_certificate_was_refused(
        self, start_secure_gateway, academy_ca, tls_academy, tmp_path, caplog
    ):
        caplog.set_level(logging.INFO)
        # The broker's own certificate is fine; it trusts other clients than us.
        broker = await tls_academy(
            academy_files(tmp_path / "academy", academy_ca, new_ca("other-clients"))
        )
        running = await start_secure_gateway(
            {"academy_broker": {"port": broker.port, "ca_file": str(tmp_path / "academy-ca.crt")}}
        )
        counters = running.gateway.counters
        assert await wait_until(lambda: counters.get("broker_connection_errors") >= 1, 15)
        refused = [
            r.getMessage() for r in caplog.records if "academy broker link down" in r.getMessage()
        ]
        assert refused and "refused our client certificate" in refused[0], refused
        assert "Bad file descriptor" not in caplog.text
