"""The academy's fixtures: one private PostgreSQL cluster for the session, a fresh
database per test (migrated), and helpers to build upstream payloads with the
gateway's own encoder."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.academy.config import AcademyConfig, academy_config_from_mapping
from gateway.academy.store.database import migrate
from gateway.lab.postgres import PostgresCluster

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A private cluster (initdb + pg_ctl, Unix socket only), stopped after the session."""
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
async def academy_dsn(postgres: PostgresCluster) -> AsyncIterator[str]:
    """A new, migrated database for this test; dropped after it."""
    name = f"academy_test_{next(_databases)}"
    admin = await asyncpg.connect(postgres.dsn())
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    dsn = postgres.dsn(name)
    await migrate(dsn)
    yield dsn
    admin = await asyncpg.connect(postgres.dsn())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def db(academy_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(academy_dsn)
    yield conn
    await conn.close()


def academy_tables(dsn: str, broker_port: int, **sections: dict[str, Any]) -> dict[str, Any]:
    tables: dict[str, Any] = {
        "database": {"dsn": dsn},
        "broker": {"host": "127.0.0.1", "port": broker_port},
        "ingest": {"workers": 1, "batch_window_s": 0.02},
        "console": {"key_file": "/nonexistent", "secure_cookies": False},
    }
    for name, values in sections.items():
        tables.setdefault(name, {}).update(values)
    return tables


def academy_config(dsn: str, broker_port: int, **sections: dict[str, Any]) -> AcademyConfig:
    return academy_config_from_mapping(
        academy_tables(dsn, broker_port, **sections), source=Path("<test>")
    )


async def until(db: asyncpg.Connection, query: str, expected: Any, within_s: float = 20) -> Any:
    """Poll ``query`` until it returns ``expected`` (or the deadline); its last value."""
    value: Any = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        value = await db.fetchval(query)
        if value == expected:
            return value
        await asyncio.sleep(0.05)
    return value
