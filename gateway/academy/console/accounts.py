"""The console's accounts and sessions in PostgreSQL (the web stack's two protocols).

gateway.web.accounts defines what the stack needs; this is the academy's
implementation on the ``accounts`` and ``sessions`` tables. Session tokens
are stored only as their SHA-256 (``token_sha256``). Admins manage accounts
from the console or ``python -m gateway academy account``; every change is
written to the audit log by the caller, in the same transaction.
"""

from __future__ import annotations

import datetime

import asyncpg

from gateway.academy.store.database import Conn
from gateway.errors import RejectedInput
from gateway.web.accounts import Account, RolePolicy, StoredSession
from gateway.web.passwords import hash_password, password_problem

ROLES = RolePolicy(("viewer", "operator", "admin"))
NAME_MAX = 64


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def check_name(name: str) -> str:
    name = name.strip()
    if not 0 < len(name) <= NAME_MAX or any(c.isspace() or not c.isprintable() for c in name):
        raise RejectedInput("bad_field", f"name: 1-{NAME_MAX} printable characters, no spaces")
    return name


class PostgresAccounts:
    """AccountStore + SessionStore on the academy's PostgreSQL (a connection pool)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def account(self, name: str) -> Account | None:
        row = await self._pool.fetchrow(
            "SELECT username, role, password_hash, disabled FROM accounts WHERE username = $1",
            name,
        )
        if row is None:
            return None
        return Account(row["username"], row["role"], row["password_hash"], row["disabled"])

    async def create_session(
        self, session: StoredSession, *, max_per_account: int, now: float
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM sessions WHERE expires_at <= $1", _utc(now))
            await conn.execute(
                "INSERT INTO sessions (token_sha256, username, csrf_token, created_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                session.token_hash,
                session.account,
                session.csrf_token,
                _utc(session.created),
                _utc(session.expires),
            )
            # Beyond the limit, the oldest sessions of this account end (decided).
            await conn.execute(
                "DELETE FROM sessions WHERE username = $1 AND token_sha256 NOT IN ("
                " SELECT token_sha256 FROM sessions WHERE username = $1"
                " ORDER BY created_at DESC LIMIT $2)",
                session.account,
                max_per_account,
            )

    async def session(self, token_hash: str) -> StoredSession | None:
        row = await self._pool.fetchrow(
            "SELECT token_sha256, username, csrf_token, created_at, expires_at FROM sessions"
            " WHERE token_sha256 = $1",
            token_hash,
        )
        if row is None:
            return None
        return StoredSession(
            token_hash=row["token_sha256"],
            account=row["username"],
            csrf_token=row["csrf_token"],
            created=row["created_at"].timestamp(),
            expires=row["expires_at"].timestamp(),
        )

    async def delete_session(self, token_hash: str) -> None:
        await self._pool.execute("DELETE FROM sessions WHERE token_sha256 = $1", token_hash)


async def set_account(
    conn: Conn, name: str, role: str, password: str | None, *, disabled: bool = False
) -> None:
    """Create ``name`` or change its role, password (when given) and state.

    Changing a password or disabling an account ends its sessions.
    """
    name = check_name(name)
    if role not in ROLES.ranked:
        raise RejectedInput("bad_field", f"role: one of {', '.join(ROLES.ranked)}")
    hashed = None
    if password is not None:
        problem = password_problem(password)
        if problem:
            raise RejectedInput("bad_field", f"password: {problem}")
        hashed = hash_password(password)
    existing = await conn.fetchval("SELECT 1 FROM accounts WHERE username = $1", name)
    if existing is None:
        if hashed is None:
            raise RejectedInput("missing_field", "password: a new account needs one")
        await conn.execute(
            "INSERT INTO accounts (username, password_hash, role, disabled)"
            " VALUES ($1, $2, $3, $4)",
            name,
            hashed,
            role,
            disabled,
        )
        return
    await conn.execute(
        "UPDATE accounts SET role = $2, disabled = $3,"
        " password_hash = coalesce($4, password_hash) WHERE username = $1",
        name,
        role,
        disabled,
        hashed,
    )
    if hashed is not None or disabled:
        await conn.execute("DELETE FROM sessions WHERE username = $1", name)


async def list_accounts(conn: Conn) -> list[dict[str, object]]:
    return [
        dict(r)
        for r in await conn.fetch(
            "SELECT username, role, disabled, created_at FROM accounts ORDER BY username"
        )
    ]
