"""Connecting to the academy's PostgreSQL, and what its errors mean (asyncpg edge).

asyncpg's and the socket's exceptions are translated here into StoreError;
``is_transient`` says which ones are worth retrying (the server restarting,
a dropped connection, a deadlock or serialization failure between two
workers) rather than a defect in what we sent.
"""

from __future__ import annotations

import logging
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from gateway.academy.store.migrations import apply_migrations
from gateway.errors import StoreError

log = logging.getLogger(__name__)

# A connection of its own, or one borrowed from the console's pool.
Conn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

# What a connection or a statement may raise that is about the database, not us.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # asyncpg's protocol left mid-operation by a dropped connection (seen during
    # pg_ctl restart -m immediate): the connection is thrown away and made again.
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

_RETRY_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "57P01",  # admin_shutdown (pg_ctl stop/restart -m fast)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, recovering)
    "53300",  # too_many_connections
}


# The errors a worker catches around PostgreSQL: the library's, and ours from connect().
RETRYABLE_CATCH: tuple[type[BaseException], ...] = (StoreError, *DATABASE_ERRORS)


def is_transient(exc: BaseException | None) -> bool:
    """True when trying again later may succeed (server down or restarting, lock conflict)."""
    if isinstance(exc, StoreError):
        return is_transient(exc.__cause__)
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return True
    if isinstance(exc, asyncpg.InternalClientError):
        return True
    if isinstance(exc, asyncpg.PostgresConnectionError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None)
        return state in _RETRY_SQLSTATES or str(state).startswith("08")
    return False


async def connect(dsn: str, *, timeout_s: float = 10.0) -> asyncpg.Connection:
    """One connection, or StoreError naming the database."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=timeout_s)
    except DATABASE_ERRORS as exc:
        raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
    return conn


async def create_pool(dsn: str, *, size: int, timeout_s: float = 10.0) -> asyncpg.Pool:
    """A connection pool for the console, or StoreError."""
    try:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=size, timeout=timeout_s)
    except DATABASE_ERRORS as exc:
        raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
    return pool


async def migrate(dsn: str, *, timeout_s: float = 10.0) -> list[int]:
    """Apply the schema migrations (gateway.academy.store.migrations); return those applied."""
    conn = await connect(dsn, timeout_s=timeout_s)
    try:
        applied = await apply_migrations(conn)
    except DATABASE_ERRORS as exc:
        raise StoreError(f"schema migration failed: {exc}") from exc
    finally:
        await conn.close()
    if applied:
        log.info("academy store: applied migrations %s", applied)
    return applied
