"""What the web stack needs from a console's storage, and the role rule.

The stack knows nothing of SQLite or PostgreSQL: the box keeps its accounts
and sessions in the gateway's SQLite file, the academy in PostgreSQL, and each
implements the two small protocols below. Session tokens never reach storage:
the browser holds a random token, storage holds its SHA-256.

Roles are ranked: a console names its roles lowest first (the box: teacher,
then IT contact; the academy: viewer, operator, admin) and a page that
requires a role admits every role ranked at or above it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import ConfigError


@dataclass(frozen=True)
class Account:
    """A person who may sign in. ``password_hash`` is in gateway.web.passwords' format."""

    name: str
    role: str
    password_hash: str
    disabled: bool = False


@dataclass(frozen=True)
class StoredSession:
    """A signed-in browser as storage keeps it."""

    token_hash: str  # SHA-256 hex of the cookie's token; the token itself is never stored
    account: str
    csrf_token: str  # the synchronizer token every state-changing form carries
    created: float
    expires: float


@dataclass(frozen=True)
class Principal:
    """Who is making this request (set by the stack's middleware)."""

    name: str
    role: str
    csrf_token: str
    token_hash: str


class AccountStore(Protocol):
    async def account(self, name: str) -> Account | None:
        """The account called ``name`` (exact match), or None."""
        ...


class SessionStore(Protocol):
    async def create_session(
        self, session: StoredSession, *, max_per_account: int, now: float
    ) -> None:
        """Store ``session``; drop expired ones and, beyond ``max_per_account`` for its
        account, the oldest (decided: a new sign-in ends the oldest session)."""
        ...

    async def session(self, token_hash: str) -> StoredSession | None:
        """The session with this token hash, or None (expired ones may be returned)."""
        ...

    async def delete_session(self, token_hash: str) -> None: ...


def new_token() -> str:
    """A random token for a cookie or a form (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class RolePolicy:
    """Roles lowest first; :meth:`allows` is the one rule every page check uses."""

    ranked: Sequence[str]

    def __post_init__(self) -> None:
        if not self.ranked or len(set(self.ranked)) != len(self.ranked):
            raise ConfigError(f"roles must be distinct and non-empty: {list(self.ranked)}")

    def allows(self, role: str, required: str) -> bool:
        """True when ``role`` may open what ``required`` guards (unknown roles: never)."""
        if required not in self.ranked:
            raise ConfigError(f"unknown role required by a page: {required!r}")
        if role not in self.ranked:
            return False
        return self.ranked.index(role) >= self.ranked.index(required)
