"""The files the school broker reads (CRL, ACL), and asking it to re-read them.

Mosquitto 2.0 reads ``crlfile`` and ``acl_file`` at start and again on
SIGHUP (checked against 2.0.11: a certificate listed in a new CRL is refused
after the reload, not before; connections already open stay open, but the
reloaded ACL applies to them at once). The gateway therefore writes both
files and then runs ``school_broker.reload_command`` (by default
``systemctl reload mosquitto.service``, whose ExecReload sends SIGHUP).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from gateway.broker.mosquitto_config import render_acl
from gateway.config import Config
from gateway.errors import SecurityError
from gateway.security import pki, registry
from gateway.security.identity import Identity, PkiPaths, ensure_identity, local_server_names
from gateway.security.keyfiles import write_public_file
from gateway.store.database import Database

log = logging.getLogger(__name__)

# OpenSSL refuses every client once the CRL's next update has passed; the
# gateway rewrites the CRL at each start and on every revocation.
CRL_DAYS = 5 * 365


def load_identity(config: Config) -> Identity:
    """Create or check the gateway's keys and certificates (first start makes them)."""
    g = config.gateway
    return ensure_identity(
        g.state_dir,
        school_id=g.school_id,
        gateway_id=g.gateway_id,
        names=local_server_names(config.school_broker.server_names),
    )


async def write_broker_files(config: Config, identity: Identity, db: Database) -> None:
    """Write the CRL and ACL from what the store knows is revoked."""
    now = dt.datetime.now(dt.UTC)
    crl = pki.build_crl(identity.issuer, await registry.revoked_serials(db), now, CRL_DAYS)
    paths = PkiPaths.under(config.gateway.state_dir)
    write_public_file(paths.crl, crl)
    acl = render_acl(config.gateway.gateway_id, await registry.revoked_devices(db))
    write_public_file(paths.acl, acl.encode())


async def prepare_broker_files(config: Config, db: Database) -> Identity:
    """Everything the secure broker config refers to, ready on disk."""
    identity = load_identity(config)
    await write_broker_files(config, identity, db)
    return identity


def prepare_broker_files_now(config: Config) -> Identity:
    """``prepare_broker_files`` for synchronous callers (``mosquitto-config``)."""

    async def prepare() -> Identity:
        db = await Database.open(config.gateway.state_dir / "gateway.db")
        try:
            return await prepare_broker_files(config, db)
        finally:
            await db.close()

    return asyncio.run(prepare())


async def reload_broker(config: Config) -> None:
    """Run ``school_broker.reload_command``; SecurityError if it fails."""
    command = config.school_broker.reload_command
    if not command:
        raise SecurityError("school_broker.reload_command is empty: cannot reload the broker")
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    except (OSError, TimeoutError) as exc:
        raise SecurityError(f"broker reload {' '.join(command)!r} failed: {exc}") from exc
    if process.returncode != 0:
        raise SecurityError(
            f"broker reload {' '.join(command)!r} exited with {process.returncode}: "
            f"{output.decode(errors='replace').strip()}"
        )
    log.info("asked the school broker to reload (%s)", " ".join(command))
