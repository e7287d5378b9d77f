"""Revoke a tablet: its certificate goes in the CRL, its session is closed.

Steps, each for a reason found in Mosquitto 2.0.11's behaviour:

1. The store marks the tablet revoked and lists its serial (one transaction).
2. The CRL and ACL are rewritten; the revoked tablet's ACL entry is
   ``topic deny #``, which Mosquitto checks before any other rule.
3. The broker is reloaded (SIGHUP): only then does it read the new CRL (new
   TLS handshakes with the certificate fail) and the new ACL (which applies
   at once to connections already open).
4. The gateway waits until the reload really happened: with the revocation it
   also revoked a throwaway *probe* certificate, and polls until a
   connection with the probe is refused. Only then is the revocation marked
   confirmed in the store; until then ``enroll list`` shows it PENDING, and
   running ``enroll revoke`` again retries (it is idempotent).
5. It closes the tablet's session by taking over its client id on the
   gateway's loopback listener (client ids are free there) with a clean
   session: the broker drops the tablet's connection, sends its last will and
   forgets its queued messages. The tablet's reconnect then fails the TLS
   handshake. Doing this after step 4 matters: before the reload the tablet
   could simply reconnect.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from gateway.config import Config
from gateway.errors import SecurityError
from gateway.security import pki, registry
from gateway.security.broker_files import reload_broker, write_broker_files
from gateway.security.identity import Identity, PkiPaths
from gateway.security.keyfiles import write_private_file, write_public_file
from gateway.security.probe import ACCEPTED, connect_outcome
from gateway.security.tls import client_context, school_broker_context
from gateway.store.database import Database

log = logging.getLogger(__name__)

PROBE_CN_PREFIX = "gateway-reload-probe-"


@dataclass(frozen=True)
class Revocation:
    """What ``enroll revoke`` reports."""

    device_id: str
    serial: int
    broker_reloaded: bool
    session_closed: bool
    reload_error: str | None = None  # why the broker could not be reloaded


async def revoke_tablet(
    config: Config, identity: Identity, db: Database, device_id: str, *, within_s: float = 10.0
) -> Revocation:
    """Revoke ``device_id`` (RejectedInput if unknown); see the module docstring."""
    now = time.time()
    tablet = await registry.revoke(db, device_id, now)
    probe = _ProbeCertificate.make(identity, PkiPaths.under(config.gateway.state_dir))
    await registry.add_revoked_serial(db, probe.serial, now)
    await write_broker_files(config, identity, db)
    log.info("revoked tablet %s (certificate serial %x)", device_id, tablet.serial)
    error: str | None = None
    try:
        await reload_broker(config)
        reloaded = await _wait_until_probe_refused(config, probe, within_s)
    except SecurityError as exc:
        error, reloaded = str(exc), False
    finally:
        probe.remove()
    if not reloaded:
        log.error(
            "revocation of %s PENDING: the school broker did not reload within %.0f s%s; "
            "the tablet can still connect and publish until it does",
            device_id,
            within_s,
            f" ({error})" if error else "",
        )
        # Closing the session now would only make the tablet reconnect.
        return Revocation(device_id, tablet.serial, False, False, error)
    await registry.confirm_revocations(db, now)
    closed = await close_session(config, device_id)
    return Revocation(device_id, tablet.serial, reloaded, closed)


@dataclass(frozen=True)
class _ProbeCertificate:
    serial: int
    paths: PkiPaths
    name: str

    @classmethod
    def make(cls, identity: Identity, paths: PkiPaths) -> _ProbeCertificate:
        key = pki.new_private_key()
        name = f"{PROBE_CN_PREFIX}{secrets.token_hex(4)}"
        cert = pki.issue_client_certificate(
            identity.issuer, key.public_key(), cn=name, now=dt.datetime.now(dt.UTC), days=1
        )
        probe = cls(cert.serial_number, paths, name)
        write_private_file(probe.key_file, pki.private_key_pem(key))
        write_public_file(probe.cert_file, pki.certificate_pem(cert))
        return probe

    @property
    def key_file(self) -> Path:
        return self.paths.root / f"{self.name}.key"

    @property
    def cert_file(self) -> Path:
        return self.paths.root / f"{self.name}.crt"

    def context(self) -> ssl.SSLContext:
        return client_context(self.paths.ca_cert, self.cert_file, self.key_file)

    def remove(self) -> None:
        self.key_file.unlink(missing_ok=True)
        self.cert_file.unlink(missing_ok=True)


async def _wait_until_probe_refused(
    config: Config, probe: _ProbeCertificate, within_s: float
) -> bool:
    if config.school_broker.lab_plain_listener:
        return False  # no TLS, no CRL: nothing to wait for
    broker = config.school_broker
    context = probe.context()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        outcome = await connect_outcome(broker.host, broker.port, context, probe.name)
        if outcome != ACCEPTED:
            return True
        await asyncio.sleep(0.05)
    return False


async def close_session(config: Config, device_id: str) -> bool:
    """Take over ``device_id``'s client id with a clean session, then leave."""
    broker = config.school_broker
    try:
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            identifier=device_id,
            clean_session=True,
            tls_context=school_broker_context(config),
            timeout=10,
        ):
            pass
    except aiomqtt.MqttError as exc:
        log.error("could not close the session of %s: %s", device_id, exc)
        return False
    log.info("closed the broker session of %s", device_id)
    return True
