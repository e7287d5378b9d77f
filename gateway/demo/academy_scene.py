"""The demo's academy: more schools, the ingest into PostgreSQL, and the console.

Beside the demo's own school (its gateway runs in the demo's process), two
more schools each run their own Mosquitto, a gateway process and simulated
tablets (gateway.lab.academy_schools). All three gateways report to the one
academy broker; an ingest worker applies what they relay to a private
PostgreSQL cluster (gateway.lab.postgres) and the console serves it on
loopback, with a demo account whose password is printed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from pathlib import Path
from typing import Any

import asyncpg

from gateway.academy.config import AcademyConfig, academy_config_from_mapping
from gateway.academy.console.accounts import set_account
from gateway.academy.console.app import run_console
from gateway.academy.ingest.worker import IngestWorker
from gateway.academy.signing import generate_key_pair
from gateway.academy.store.database import migrate
from gateway.lab.academy_schools import SchoolSite, start_schools
from gateway.lab.mosquitto import free_port
from gateway.lab.postgres import PostgresCluster

log = logging.getLogger(__name__)

CONSOLE_KEY_ID = "academy-console-demo"
DEMO_ACCOUNT = "demo"
MORE_SCHOOLS = 2


class AcademyScene:
    """The academy side of the demo (start, figures, stop)."""

    def __init__(self, workdir: Path, academy_port: int, *, tablets: int) -> None:
        self.workdir = workdir
        self.academy_port = academy_port
        self.tablets = tablets
        self.password = secrets.token_urlsafe(12)
        self.cluster: PostgresCluster | None = None
        self.config: AcademyConfig | None = None
        self.schools: list[SchoolSite] = []
        self.public_key = ""
        self.key_path: Path | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._figures: dict[str, Any] = {}

    @property
    def login(self) -> tuple[str, str]:
        return DEMO_ACCOUNT, self.password

    @property
    def url(self) -> str:
        assert self.config is not None
        return f"http://{self.config.console.host}:{self.config.console.port}/"

    def prepare_key(self) -> dict[str, str]:
        """The console's signing key; the gateways are enrolled with its public half."""
        self.key_path, self.public_key = generate_key_pair(self.workdir / "academy-keys")
        return {CONSOLE_KEY_ID: self.public_key}

    async def start(self, school_keys: dict[str, str]) -> None:
        self.cluster = PostgresCluster()
        await asyncio.to_thread(self.cluster.start)
        admin = await asyncpg.connect(self.cluster.dsn())
        await admin.execute("CREATE DATABASE academy")
        await admin.close()
        dsn = self.cluster.dsn("academy")
        await migrate(dsn)
        self.config = academy_config_from_mapping(
            {
                "database": {"dsn": dsn},
                "broker": {"host": "127.0.0.1", "port": self.academy_port},
                "ingest": {"batch_window_s": 0.05},
                "console": {
                    "host": "127.0.0.1",
                    "port": free_port(),
                    "key_file": str(self.key_path),
                    "key_id": CONSOLE_KEY_ID,
                    "secure_cookies": False,
                },
            }
        )
        conn = await asyncpg.connect(dsn)
        try:
            await set_account(conn, DEMO_ACCOUNT, "admin", self.password)
        finally:
            await conn.close()
        worker = IngestWorker(self.config, 1)
        self._tasks.append(asyncio.create_task(worker.run(), name="academy-ingest"))
        started = asyncio.Event()
        self._tasks.append(
            asyncio.create_task(run_console(self.config, started), name="academy-console")
        )
        await asyncio.wait_for(started.wait(), 30)
        self.schools = await start_schools(
            self.workdir / "schools",
            self.academy_port,
            school_keys,
            count=MORE_SCHOOLS,
            tablets=self.tablets,
        )

    async def refresh(self) -> None:
        """Read the academy's figures from the store (the summary line's academy part)."""
        if self.config is None:
            return
        try:
            conn = await asyncpg.connect(self.config.database.dsn, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return
        try:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM schools) AS schools,"
                " (SELECT count(*) FROM gateways WHERE online) AS gateways_online,"
                " (SELECT count(*) FROM tablets) AS tablets,"
                " (SELECT count(*) FROM summaries) AS summaries,"
                " (SELECT coalesce(sum((counters->>'ingest_states_applied')::bigint), 0)"
                "  FROM ingest_workers) AS states_applied,"
                " (SELECT coalesce(sum((counters->>'ingest_duplicates')::bigint), 0)"
                "  FROM ingest_workers) AS duplicates,"
                " (SELECT count(*) FROM command_results) AS command_results"
            )
        finally:
            await conn.close()
        if row is not None:
            self._figures = {f"academy_{k}": int(v) for k, v in dict(row).items()}

    def figures(self) -> dict[str, Any]:
        return dict(self._figures)

    def lines(self) -> list[str]:
        f = self._figures
        return [
            f"  console   {self.url} (sign in as {DEMO_ACCOUNT} / {self.password})",
            f"  academy   store: {f.get('academy_schools', 0)} schools, "
            f"{f.get('academy_gateways_online', 0)} gateways online, "
            f"{f.get('academy_tablets', 0)} tablets, "
            f"{f.get('academy_states_applied', 0)} states applied",
        ]

    async def stop(self) -> None:
        for site in self.schools:
            with contextlib.suppress(Exception):
                await site.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)
