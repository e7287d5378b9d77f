"""``python -m gateway enroll new|list|revoke``: tablet enrollment for the operator.

Run these as the gateway's own user (``sudo -u school-gateway ...``): they
read the CA key and write the store in the state directory.

    enroll new [--group CLASSROOM] [--device-id ID] [--ttl S]
        a one-time token, printed as text, as an enrollment URL and as a QR code
    enroll list
        enrolled tablets, with revocations
    enroll revoke DEVICE
        revoke the tablet's certificate (CRL), reload the broker, close its session
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import time
from pathlib import Path
from typing import Any

from gateway.config import Config, add_config_argument, load_config
from gateway.health.box import lan_addresses
from gateway.security import registry
from gateway.security.broker_files import load_identity
from gateway.security.enrollment import enrollment_url
from gateway.security.revocation import revoke_tablet
from gateway.store.database import DATABASE_FILE, Database


def register(commands: Any, default_config: Path) -> None:
    """Add ``enroll`` and its subcommands to the top-level parser's subparsers."""
    enroll = commands.add_parser("enroll", help="enroll, list and revoke tablets")
    actions = enroll.add_subparsers(dest="enroll_command", required=True, metavar="ACTION")

    new = actions.add_parser("new", help="make a one-time enrollment token")
    new.add_argument("--group", default="", help="classroom the tablet belongs to")
    new.add_argument("--device-id", default=None, help="name the tablet (default: generated)")
    new.add_argument("--ttl", type=int, default=None, help="seconds the token stays valid")
    new.set_defaults(handler=_cmd_new)

    listing = actions.add_parser("list", help="enrolled tablets")
    listing.set_defaults(handler=_cmd_list)

    revoke = actions.add_parser("revoke", help="revoke a tablet and close its session")
    revoke.add_argument("device_id")
    revoke.set_defaults(handler=_cmd_revoke)
    add_config_argument(enroll, new, listing, revoke)


def _advertised_host(config: Config) -> str:
    if config.enrollment.advertised_host:
        return config.enrollment.advertised_host
    if config.enrollment.host not in ("0.0.0.0", "::"):
        return config.enrollment.host
    addresses = lan_addresses()
    return addresses[0] if addresses else "127.0.0.1"


def qr_text(data: str) -> str:
    """The QR code of ``data`` drawn with block characters for a terminal."""
    import qrcode

    code = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_M)
    code.add_data(data)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue()


async def _new(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    identity = load_identity(config)
    ttl = args.ttl or config.enrollment.token_ttl_s
    db = await Database.open(config.gateway.state_dir / DATABASE_FILE)
    try:
        now = time.time()
        secret = await registry.create_token(
            db, group=args.group, ttl_s=ttl, now=now, device_id=args.device_id
        )
    finally:
        await db.close()
    url = enrollment_url(
        _advertised_host(config), config.enrollment.port, secret, identity.ca_fingerprint
    )
    expires = dt.datetime.fromtimestamp(now + ttl, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    group = args.group or "no group"
    print(f"enrollment token ({group}; single use; expires {expires}):")
    print(f"  {secret}")
    print(f"enrollment URL (the QR code below holds it):\n  {url}")
    print(qr_text(url))
    return 0


async def _list(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    db = await Database.open(config.gateway.state_dir / DATABASE_FILE)
    try:
        tablets = await registry.list_tablets(db)
    finally:
        await db.close()

    def day(ts: float) -> str:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")

    print(f"{len(tablets)} enrolled tablets")
    for t in tablets:
        state = "active"
        if t.revoked is not None:
            state = f"REVOKED {day(t.revoked)}"
        if t.revocation_pending:
            state += " PENDING: the broker has not reloaded; run `enroll revoke` again"
        print(f"  {t.device_id:<24} {t.group or '-':<12} enrolled {day(t.enrolled)}  {state}")
    return 0


async def _revoke(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    identity = load_identity(config)
    db = await Database.open(config.gateway.state_dir / DATABASE_FILE)
    try:
        result = await revoke_tablet(config, identity, db, args.device_id)
    finally:
        await db.close()
    print(f"revoked {result.device_id} (certificate serial {result.serial:x})")
    reloaded = "yes" if result.broker_reloaded else "NO"
    if result.reload_error:
        reloaded += f" ({result.reload_error})"
    print(f"  broker reloaded the CRL and ACL: {reloaded}")
    print(f"  tablet session closed: {'yes' if result.session_closed else 'NO'}")
    if not result.broker_reloaded:
        print(
            "  PENDING: the tablet can still connect until the broker reloads; fix the "
            "reload (school_broker.reload_command) and run this command again"
        )
    return 0 if result.broker_reloaded and result.session_closed else 1


def _cmd_new(args: argparse.Namespace) -> int:
    return asyncio.run(_new(args))


def _cmd_list(args: argparse.Namespace) -> int:
    return asyncio.run(_list(args))


def _cmd_revoke(args: argparse.Namespace) -> int:
    return asyncio.run(_revoke(args))
