"""The store side of enrollment: tokens, enrolled tablets, revoked serials.

Redemption is one write transaction (BEGIN IMMEDIATE): the token is checked,
the certificate issued and the token marked used together, so two tablets
racing with the same token cannot both get a certificate.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from gateway.errors import RejectedInput
from gateway.security.enrollment import (
    TokenRecord,
    check_device_id,
    check_redeemable,
    new_device_id,
    new_token_secret,
    token_hash,
)
from gateway.store.database import Database


@dataclass(frozen=True)
class TabletIdentity:
    """One enrolled tablet, as ``enroll list`` shows it."""

    device_id: str
    serial: int
    group: str
    enrolled: float
    not_after: float
    revoked: float | None
    revoke_confirmed: float | None = None  # when the broker was seen to enforce it

    @property
    def revocation_pending(self) -> bool:
        """Revoked in the store, but the broker was not seen to re-read its CRL and ACL."""
        return self.revoked is not None and self.revoke_confirmed is None


@dataclass(frozen=True)
class Redeemed:
    device_id: str
    group: str
    certificate: x509.Certificate


async def create_token(
    db: Database, *, group: str, ttl_s: float, now: float, device_id: str | None = None
) -> str:
    """Store a new token and return its secret (shown once, never stored)."""
    if device_id is not None:
        check_device_id(device_id)
    secret = new_token_secret()
    await db.execute(
        "INSERT INTO enrollment_token (token_hash, group_name, device_id, created, expires) "
        "VALUES (?, ?, ?, ?, ?)",
        (token_hash(secret), group, device_id, now, now + ttl_s),
    )
    return secret


async def redeem(
    db: Database, secret: str, now: float, issue: Callable[[str], x509.Certificate]
) -> Redeemed:
    """Check and use the token, issue the tablet's certificate with ``issue(device_id)``."""
    async with db.transaction() as conn:
        async with conn.execute(
            "SELECT token_hash, group_name, device_id, created, expires, redeemed "
            "FROM enrollment_token WHERE token_hash = ?",
            (token_hash(secret),),
        ) as cursor:
            row = await cursor.fetchone()
        record = check_redeemable(TokenRecord(*row) if row else None, now)
        device_id = record.device_id
        while device_id is None:
            candidate = new_device_id()
            async with conn.execute(
                "SELECT 1 FROM tablet_identity WHERE device_id = ?", (candidate,)
            ) as cursor:
                if await cursor.fetchone() is None:
                    device_id = candidate
        async with conn.execute(
            "SELECT revoked FROM tablet_identity WHERE device_id = ?", (device_id,)
        ) as cursor:
            existing = await cursor.fetchone()
        if existing is not None:
            state = "revoked" if existing[0] is not None else "already enrolled"
            raise RejectedInput("device_exists", f"device {device_id} is {state}; use a new id")
        certificate = issue(device_id)
        await conn.execute(
            "INSERT INTO tablet_identity (device_id, serial, group_name, enrolled, not_after) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                device_id,
                f"{certificate.serial_number:x}",
                record.group,
                now,
                certificate.not_valid_after_utc.timestamp(),
            ),
        )
        await conn.execute(
            "UPDATE enrollment_token SET redeemed = ?, device_id = ? WHERE token_hash = ?",
            (now, device_id, record.token_hash),
        )
    return Redeemed(device_id, record.group, certificate)


async def list_tablets(db: Database) -> list[TabletIdentity]:
    rows = await db.fetch_all(
        "SELECT device_id, serial, group_name, enrolled, not_after, revoked, revoke_confirmed "
        "FROM tablet_identity ORDER BY device_id"
    )
    return [TabletIdentity(r[0], int(r[1], 16), r[2], r[3], r[4], r[5], r[6]) for r in rows]


async def confirm_revocations(db: Database, reloaded_at: float) -> None:
    """The broker re-read the CRL and ACL at ``reloaded_at``: every revocation written
    before then is in force."""
    await db.execute(
        "UPDATE tablet_identity SET revoke_confirmed = ? "
        "WHERE revoked IS NOT NULL AND revoke_confirmed IS NULL AND revoked <= ?",
        (reloaded_at, reloaded_at),
    )


async def revoke(db: Database, device_id: str, now: float) -> TabletIdentity:
    """Mark the tablet revoked and list its serial in the CRL. Idempotent."""
    async with db.transaction() as conn:
        async with conn.execute(
            "SELECT device_id, serial, group_name, enrolled, not_after, revoked "
            "FROM tablet_identity WHERE device_id = ?",
            (device_id,),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise RejectedInput("unknown_device", f"no enrolled tablet {device_id!r}")
        revoked = row[5] if row[5] is not None else now
        await conn.execute(
            "UPDATE tablet_identity SET revoked = ? WHERE device_id = ?", (revoked, device_id)
        )
        await conn.execute(
            "INSERT OR IGNORE INTO revoked_serial (serial, revoked, device_id) VALUES (?, ?, ?)",
            (row[1], revoked, device_id),
        )
    return TabletIdentity(row[0], int(row[1], 16), row[2], row[3], row[4], revoked)


async def add_revoked_serial(db: Database, serial: int, now: float) -> None:
    """List a serial that belongs to no tablet (the reload probe) in the CRL."""
    await db.execute(
        "INSERT OR IGNORE INTO revoked_serial (serial, revoked) VALUES (?, ?)",
        (f"{serial:x}", now),
    )


async def revoked_serials(db: Database) -> list[tuple[int, dt.datetime]]:
    rows = await db.fetch_all("SELECT serial, revoked FROM revoked_serial ORDER BY revoked")
    return [(int(r[0], 16), dt.datetime.fromtimestamp(r[1], dt.UTC)) for r in rows]


async def revoked_devices(db: Database) -> list[str]:
    rows = await db.fetch_all(
        "SELECT device_id FROM tablet_identity WHERE revoked IS NOT NULL ORDER BY device_id"
    )
    return [str(r[0]) for r in rows]
