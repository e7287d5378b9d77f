"""Academy ingest under faults: workers SIGKILLed mid-flood, PostgreSQL restarted under load.

Real Mosquitto, real PostgreSQL, real worker processes
(``python -m gateway academy ingest``). Every state message of the flood
goes to its own tablet, so "applied exactly once" is visible row by row:
one tablet row per state with ``applied = 1``, one summary per summary,
one rejection row per rejection (that table has no unique key: only the
dedup on (school, gateway, seq) keeps a redelivery out).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import pytest

from gateway.academy.ingest.lab import line, payload, state_body
from gateway.lab.academy_service import AcademyProcess, write_academy_config
from gateway.lab.mosquitto import MosquittoProcess
from gateway.lab.postgres import PostgresCluster
from tests.academy.conftest import academy_tables

GATEWAYS = 8
BATCHES = 30
STATES_PER_BATCH = 40


def flood() -> tuple[list[tuple[str, bytes]], dict[str, int]]:
    """The flood's payloads, interleaved across gateways, and how many of each kind."""
    per_gateway: list[list[tuple[str, bytes]]] = []
    totals = {"state": 0, "summary": 0, "rejection": 0}
    for g in range(GATEWAYS):
        school, gw = f"school-{g:03d}", f"gw-{g:03d}"
        up = f"schools/{school}/gateways/{gw}/up"
        seq = 0
        payloads = []
        for b in range(BATCHES):
            lines = []
            for _ in range(STATES_PER_BATCH):
                seq += 1
                lines.append(
                    line(school, gw, seq, "state", state_body(f"tab-{seq:06d}", ts=float(seq)))
                )
            payloads.append((f"{up}/state", payload(lines)))
            totals["state"] += len(lines)
            if b % 5 == 0:
                seq += 1
                body = {
                    "at": float(seq),
                    "tablets": {"known": seq, "online": 1},
                    "backlog": {"rows": b},
                }
                payloads.append(
                    (f"{up}/summary", payload([line(school, gw, seq, "summary", body)]))
                )
                totals["summary"] += 1
                seq += 1
                rejection = {
                    "reason": "expired",
                    "detail": "",
                    "command_id": None,
                    "envelope_sha256": "",
                    "at": 1.0,
                }
                payloads.append(
                    (f"{up}/rejection", payload([line(school, gw, seq, "rejection", rejection)]))
                )
                totals["rejection"] += 1
        per_gateway.append(payloads)
    interleaved = [p for batch in zip(*per_gateway, strict=True) for p in batch]
    return interleaved, totals


async def flood_with_faults(
    broker: MosquittoProcess,
    payloads: list[tuple[str, bytes]],
    fractions: tuple[float, ...],
    fault: Callable[[int], Awaitable[None]],
) -> None:
    """Publish the flood; at each fraction of it, the moment the broker has taken the
    payloads before it (the workers still busy applying them), ``fault(n)``.

    Faults are not timed against the ingest: as fast as it is, each one happens,
    mid-flood, and the rest of the flood follows it.
    """
    cuts = [int(len(payloads) * f) for f in fractions]
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="flood", max_inflight_messages=200
    ) as client:
        start = 0
        for number, cut in enumerate([*cuts, len(payloads)]):
            for topic, raw in payloads[start:cut]:
                await client.publish(topic, raw, qos=1)
            start = cut
            if cut < len(payloads):
                await fault(number)


async def fetch_value(dsn: str, query: str) -> Any:
    """One value, or None while PostgreSQL is restarting."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return None
    try:
        return await conn.fetchval(query)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


async def seen_reaches(dsn: str, count: int, within_s: float, workers: list[AcademyProcess]) -> int:
    """Wait until ``count`` messages are applied; fail at once if a worker died on its own."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    value = 0
    while loop.time() < deadline:
        crashed = [w for w in workers if not w.running]
        assert not crashed, "\n".join(
            f"{w.name} exited; its last lines:\n" + "\n".join(list(w.lines)[-40:]) for w in crashed
        )
        value = await fetch_value(dsn, "SELECT count(*) FROM upstream_seen") or value
        if value >= count:
            return value
        await asyncio.sleep(0.05)
    return value


@pytest.fixture
async def workers(
    tmp_path: Path, academy_dsn: str, academy_broker: MosquittoProcess
) -> AsyncIterator[list[AcademyProcess]]:
    """Two ingest worker processes on one shared subscription, both subscribed."""
    config = write_academy_config(
        academy_tables(
            academy_dsn, academy_broker.port, ingest={"workers": 2, "batch_max_payloads": 20}
        ),
        tmp_path / "academy.toml",
    )
    processes = [AcademyProcess.worker(config, tmp_path, i) for i in (1, 2)]
    for process in processes:
        await process.start_connected()
    yield processes
    for process in processes:
        await process.stop()


async def assert_exactly_once(dsn: str, totals: dict[str, int]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM tablets") == totals["state"]
        assert await conn.fetchval("SELECT max(applied) FROM tablets") == 1
        assert await conn.fetchval("SELECT count(*) FROM summaries") == totals["summary"]
        rejections = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT (gateway_id, seq)) AS distinct_n FROM rejections"
        )
        assert (rejections["n"], rejections["distinct_n"]) == (totals["rejection"],) * 2
        # Each gateway's latest summary figures are those of its highest seq.
        assert await conn.fetchval("SELECT min(backlog_rows) FROM gateways") == BATCHES - 5
    finally:
        await conn.close()


@pytest.mark.slow
class TestIngestFaults:
    """Nothing lost and nothing applied twice, whatever dies."""

    async def test_worker_killed_repeatedly_during_a_flood(
        self, workers: list[AcademyProcess], academy_broker: MosquittoProcess, academy_dsn: str
    ) -> None:
        payloads, totals = flood()
        total = sum(totals.values())
        victim = workers[0]

        async def kill(_: int) -> None:
            await victim.kill()
            await victim.start_connected()

        await flood_with_faults(academy_broker, payloads, (0.15, 0.35, 0.55, 0.75), kill)
        assert await seen_reaches(academy_dsn, total, 120, workers) == total
        await assert_exactly_once(academy_dsn, totals)
        assert victim.starts == 5

    async def test_postgresql_restarted_under_load(
        self,
        workers: list[AcademyProcess],
        academy_broker: MosquittoProcess,
        academy_dsn: str,
        postgres: PostgresCluster,
    ) -> None:
        payloads, totals = flood()
        total = sum(totals.values())

        async def restart(number: int) -> None:
            await asyncio.to_thread(postgres.restart, ("fast", "immediate")[number])

        await flood_with_faults(academy_broker, payloads, (0.2, 0.5), restart)
        assert await seen_reaches(academy_dsn, total, 120, workers) == total
        await assert_exactly_once(academy_dsn, totals)
        assert all(w.running for w in workers)
        assert sum(w.count("PostgreSQL") for w in workers) >= 1  # they saw it go, and waited
