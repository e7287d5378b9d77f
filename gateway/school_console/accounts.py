"""Console accounts and sessions in the gateway's SQLite file (migration 7).

Implements gateway.web.accounts' AccountStore and SessionStore for the box,
plus what the accounts page does: list, create, change a password, change a
teacher's groups, delete. Two roles: ``teacher`` and ``it`` (the IT contact).
Deleting an account or changing its password ends its sessions.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.errors import RejectedInput
from gateway.store.database import Database
from gateway.web.accounts import Account, RolePolicy, StoredSession

TEACHER = "teacher"
IT_CONTACT = "it"
ROLES = RolePolicy((TEACHER, IT_CONTACT))
ACCOUNT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,39}")
GROUP_NAME_MAX = 64
MAX_GROUPS = 50
MAX_ACCOUNTS = 500


@dataclass(frozen=True)
class ConsoleAccount:
    """An account as the accounts page shows it (never the hash)."""

    name: str
    role: str
    groups: tuple[str, ...]
    created: float
    created_by: str


def check_account_name(name: str) -> str:
    if not ACCOUNT_NAME.fullmatch(name):
        raise RejectedInput(
            "bad_name", "a name is 2-40 characters: a-z, 0-9, dot, dash, underscore"
        )
    return name


def parse_groups(text: str) -> tuple[str, ...]:
    """Groups typed as "5A, 5B" (commas or new lines) -> ("5A", "5B")."""
    groups = []
    for part in re.split(r"[,\n]", text):
        group = part.strip()
        if not group:
            continue
        if len(group) > GROUP_NAME_MAX or not group.isprintable():
            raise RejectedInput("bad_group", f"group {group[:40]!r} is too long or not printable")
        if group not in groups:
            groups.append(group)
    if len(groups) > MAX_GROUPS:
        raise RejectedInput("bad_group", f"at most {MAX_GROUPS} groups per account")
    return tuple(groups)


class ConsoleAccounts:
    """The box's AccountStore and SessionStore (see the module doc)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # --- AccountStore / SessionStore (gateway.web.accounts)

    async def account(self, name: str) -> Account | None:
        row = await self._db.fetch_one(
            "SELECT name, role, password_hash, disabled FROM console_account WHERE name = ?",
            (name,),
        )
        return Account(row[0], row[1], row[2], bool(row[3])) if row else None

    async def create_session(
        self, session: StoredSession, *, max_per_account: int, now: float
    ) -> None:
        async with self._db.transaction() as conn:
            await conn.execute("DELETE FROM console_session WHERE expires <= ?", (now,))
            await conn.execute(
                "INSERT INTO console_session (token_hash, account, csrf_token, created, expires) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    session.token_hash,
                    session.account,
                    session.csrf_token,
                    session.created,
                    session.expires,
                ),
            )
            # Decided at the bound: a new sign-in ends the account's oldest sessions.
            await conn.execute(
                "DELETE FROM console_session WHERE account = ? AND token_hash NOT IN "
                "(SELECT token_hash FROM console_session WHERE account = ? "
                "ORDER BY created DESC LIMIT ?)",
                (session.account, session.account, max_per_account),
            )

    async def session(self, token_hash: str) -> StoredSession | None:
        row = await self._db.fetch_one(
            "SELECT token_hash, account, csrf_token, created, expires FROM console_session "
            "WHERE token_hash = ?",
            (token_hash,),
        )
        return StoredSession(row[0], row[1], row[2], row[3], row[4]) if row else None

    async def delete_session(self, token_hash: str) -> None:
        await self._db.execute("DELETE FROM console_session WHERE token_hash = ?", (token_hash,))

    # --- the accounts page

    async def groups_of(self, name: str) -> frozenset[str]:
        row = await self._db.fetch_one("SELECT groups FROM console_account WHERE name = ?", (name,))
        return frozenset(json.loads(row[0])) if row else frozenset()

    async def list_accounts(self) -> list[ConsoleAccount]:
        rows = await self._db.fetch_all(
            "SELECT name, role, groups, created, created_by FROM console_account "
            "ORDER BY role DESC, name"
        )
        return [ConsoleAccount(r[0], r[1], tuple(json.loads(r[2])), r[3], r[4]) for r in rows]

    async def it_contacts(self) -> int:
        row = await self._db.fetch_one(
            "SELECT count(*) FROM console_account WHERE role = ? AND disabled = 0", (IT_CONTACT,)
        )
        return int(row[0]) if row else 0

    async def create(
        self,
        name: str,
        role: str,
        password_hash: str,
        groups: Iterable[str] = (),
        *,
        created_by: str,
        now: float | None = None,
    ) -> None:
        check_account_name(name)
        if role not in ROLES.ranked:
            raise RejectedInput("bad_role", f"role must be one of {list(ROLES.ranked)}")
        async with self._db.transaction() as conn:
            async with conn.execute(
                "SELECT count(*), sum(name = ?) FROM console_account", (name,)
            ) as cur:
                count, same = await cur.fetchone() or (0, 0)
            if same:
                raise RejectedInput("name_taken", f"an account called {name!r} exists already")
            if count >= MAX_ACCOUNTS:
                raise RejectedInput("too_many", f"at most {MAX_ACCOUNTS} accounts")
            await conn.execute(
                "INSERT INTO console_account (name, role, password_hash, groups, created, "
                "created_by) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    name,
                    role,
                    password_hash,
                    json.dumps(sorted(set(groups))),
                    now if now is not None else time.time(),
                    created_by,
                ),
            )

    async def set_password(self, name: str, password_hash: str) -> None:
        async with self._db.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE console_account SET password_hash = ? WHERE name = ?",
                (password_hash, name),
            )
            if cursor.rowcount == 0:
                raise RejectedInput("unknown_account", f"no account called {name!r}")
            await conn.execute("DELETE FROM console_session WHERE account = ?", (name,))

    async def set_groups(self, name: str, groups: Iterable[str]) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                "UPDATE console_account SET groups = ? WHERE name = ?",
                (json.dumps(sorted(set(groups))), name),
            )

    async def delete(self, name: str) -> None:
        """Delete ``name`` and its sessions; the last IT contact cannot be deleted."""
        async with self._db.transaction() as conn:
            async with conn.execute(
                "SELECT role, (SELECT count(*) FROM console_account WHERE role = ?) "
                "FROM console_account WHERE name = ?",
                (IT_CONTACT, name),
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                raise RejectedInput("unknown_account", f"no account called {name!r}")
            if row[0] == IT_CONTACT and row[1] <= 1:
                raise RejectedInput("last_it_contact", "the last IT contact cannot be deleted")
            await conn.execute("DELETE FROM console_session WHERE account = ?", (name,))
            await conn.execute("DELETE FROM console_account WHERE name = ?", (name,))
