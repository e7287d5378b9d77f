"""Benchmark: tablet states applied per second by the academy ingest, against PostgreSQL COPY.

S simulated gateways (one per school, T tablets each) publish valid upstream
batches (built with the gateway's own encoder, gateway.relay.wire, split at
``uplink.batch_max_bytes`` like the gateway's drain) to a real Mosquitto;
real ingest worker processes (``python -m gateway academy ingest``) apply
them to a private PostgreSQL cluster (fsync on). Payloads are built before
each phase, and sent by raw MQTT publishers in their own processes (QoS 1,
a window of unacknowledged packets), so the publishers are not the limit.

Phases, one after the other on the same machine:

1. 1 worker, then 2 workers, each on a fresh database and broker: round 1
   inserts every tablet (warm-up), the measured rounds update every tablet
   with a newer state (what a fleet does every 5 minutes). The rate is states
   applied / time from the first publish to the last commit;
2. the floor: the same rows (one round) loaded by PostgreSQL ``COPY`` alone
   into a table shaped like ``tablets``;
3. the console's overview with that many schools: p95 of its response time
   over HTTP on loopback, signed in (the page, 100 schools needing attention
   first, and its JSON twin; the larger is ``overview_p95_ms``).

CPU seconds per 1,000 states for the worker processes and for PostgreSQL
(the postmaster and its children) over the measured rounds. Last line: one
JSON object.

    python bench/academy_ingest.py [--schools 1000] [--tablets 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import relay_lab  # also puts the source tree on sys.path

from gateway.academy.ingest.apply import STAGING_COLUMNS
from gateway.academy.ingest.lab import line
from gateway.academy.ingest.upstream import StateRow, decode_upstream
from gateway.academy.store.database import migrate
from gateway.lab.academy_service import AcademyProcess, write_academy_config
from gateway.lab.mosquitto import STAND_IN_ACADEMY_CONFIG, MosquittoProcess
from gateway.lab.postgres import PostgresCluster
from gateway.relay.wire import fit_batch

PUBLISHERS = 2
INFLIGHT = 400
BATCH_MAX_BYTES = 64_000
OS_VERSIONS = ("13.1.2", "13.1.3", "14.0.1")


def build_round(schools: int, tablets: int, round_no: int) -> tuple[list[tuple[str, bytes]], int]:
    """Every gateway's upstream payloads for one round: a state per tablet, one summary."""
    rng = random.Random(round_no)
    payloads: list[tuple[str, bytes]] = []
    messages = 0
    base = round_no * (tablets + 10)
    now = time.time()
    for s in range(schools):
        school, gw = f"school-{s:05d}", f"gw-{s:05d}"
        up = f"schools/{school}/gateways/{gw}/up"
        lines = []
        for t in range(tablets):
            body = {
                "device_id": f"tab-{t:04d}",
                "seq": base + t,
                "ts": now + round_no,
                "battery_pct": rng.randint(5, 100),
                "charging": rng.random() < 0.2,
                "storage_free_mb": rng.randint(100, 20000),
                "storage_total_mb": 32000,
                "os_version": rng.choice(OS_VERSIONS),
                "apps": {"org.ent.classroom": rng.choice(("2.4.0", "2.5.1"))},
                "locked": False,
                "group": f"class-{t // 30:02d}",
                "content": [],
            }
            lines.append(line(school, gw, base + t + 1, "state", body))
        while lines:
            raw, count = fit_batch(lines, BATCH_MAX_BYTES)
            payloads.append((f"{up}/state", raw))
            lines = lines[count:]
        summary = {
            "at": now,
            "tablets": {"known": tablets, "online": tablets - rng.randint(0, 20)},
            "low_battery": {"count": rng.randint(0, 15), "devices": []},
            "storage_low": {"count": rng.randint(0, 5), "devices": []},
            "apps": {"out_of_date": {"org.ent.classroom": {"count": rng.randint(0, 50)}}},
            "cache": {"uplink_bytes_saved": rng.randint(0, 10**10)},
            "backlog": {
                "rows": rng.randint(0, 500),
                "bytes": 1000,
                "oldest_age_s": rng.random() * 600,
            },
        }
        payloads.append(
            (f"{up}/summary", line(school, gw, base + tablets + 5, "summary", summary).encode())
        )
        messages += tablets + 1
    return payloads, messages


def raw_publisher(
    host: str, port: int, name: str, payloads: list[tuple[str, bytes]], acked: Any
) -> None:
    """QoS 1 publishes on one socket, up to INFLIGHT unacknowledged (relay_lab's packets)."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connect = relay_lab._utf8("MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big")
    sock.sendall(relay_lab._packet(0x10, connect + relay_lab._utf8(name)))
    reader = relay_lab._AckReader()
    sent = mid = 0
    while reader.acks < len(payloads):
        room = min(INFLIGHT - (sent - reader.acks), len(payloads) - sent)
        if room > 0:
            packets = []
            for topic, raw in payloads[sent : sent + min(room, 50)]:
                mid = mid % 65_535 + 1
                packets.append(
                    relay_lab._packet(0x32, relay_lab._utf8(topic) + mid.to_bytes(2, "big") + raw)
                )
            sock.sendall(b"".join(packets))
            sent += len(packets)
        data = sock.recv(65_536)
        if not data:
            raise RuntimeError("the broker closed the publisher's connection")
        reader.feed(data)
        acked.value = reader.acks
    sock.sendall(bytes([0xE0, 0]))
    sock.close()


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def postgres_processes(pg: PostgresCluster) -> list[psutil.Process]:
    pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    main = psutil.Process(pid)
    return [main, *main.children(recursive=True)]


async def applied_messages(conn: asyncpg.Connection) -> int:
    value = await conn.fetchval(
        "SELECT coalesce(sum((counters->>'ingest_messages')::bigint), 0) FROM ingest_workers"
    )
    return int(value)


async def run_phase(
    args: argparse.Namespace, pg: PostgresCluster, work: Path, workers: int, rounds: list[Any]
) -> dict[str, Any]:
    name = f"bench_{workers}w"
    admin = await asyncpg.connect(pg.dsn())
    await admin.execute(f"DROP DATABASE IF EXISTS {name}")
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    dsn = pg.dsn(name)
    await migrate(dsn)
    ctx = multiprocessing.get_context("spawn")
    async with MosquittoProcess(work / f"broker-{workers}", STAND_IN_ACADEMY_CONFIG) as broker:
        tables = {
            "database": {"dsn": dsn},
            "broker": {"host": broker.host, "port": broker.port},
            "ingest": {"workers": workers},
            "console": {"secure_cookies": False},
        }
        config = write_academy_config(tables, work / f"academy-{workers}.toml")
        procs = [AcademyProcess.worker(config, work, i) for i in range(1, workers + 1)]
        for proc in procs:
            await proc.start_connected(60)
        conn = await asyncpg.connect(dsn)
        worker_ps = [psutil.Process(p.pid) for p in procs]
        measured = {"states": 0, "seconds": 0.0, "worker_cpu": 0.0, "pg_cpu": 0.0}
        expected = 0
        for number, (payloads, messages) in enumerate(rounds):
            expected += messages
            pg_ps = postgres_processes(pg)
            cpu_w, cpu_pg = cpu_seconds(worker_ps), cpu_seconds(pg_ps)
            acked = [ctx.Value("q", 0) for _ in range(PUBLISHERS)]
            slices = [payloads[i::PUBLISHERS] for i in range(PUBLISHERS)]
            pubs = [
                ctx.Process(
                    target=raw_publisher,
                    args=(
                        broker.host,
                        broker.port,
                        f"pub-{workers}-{number}-{i}",
                        slices[i],
                        acked[i],
                    ),
                )
                for i in range(PUBLISHERS)
            ]
            for p in pubs:
                p.start()
            started = time.perf_counter()
            deadline = started + args.timeout
            while time.perf_counter() < deadline:
                if await applied_messages(conn) >= expected:
                    break
                await asyncio.sleep(0.2)  # polling the workers' committed counters
            elapsed = time.perf_counter() - started
            for p in pubs:
                p.join(60)
            pg_ps = postgres_processes(pg)
            if number >= 1 or len(rounds) == 1:  # round 0 inserts (warm-up) when there are more
                measured["states"] += messages - args.schools  # states only, not the summaries
                measured["seconds"] += elapsed
                measured["worker_cpu"] += cpu_seconds(worker_ps) - cpu_w
                measured["pg_cpu"] += cpu_seconds(pg_ps) - cpu_pg
            print(
                f"phase {workers} worker(s), round {number}: {messages} messages in {elapsed:.1f} s",
                flush=True,
            )
        batches, taken = await conn.fetchrow(
            "SELECT coalesce(sum((counters->>'ingest_batches')::bigint), 0)::bigint,"
            " coalesce(sum((counters->>'ingest_payloads')::bigint), 0)::bigint FROM ingest_workers"
        )
        seen = await conn.fetchval("SELECT count(*) FROM upstream_seen")
        over = await conn.fetchval("SELECT count(*) FROM tablets WHERE applied > $1", len(rounds))
        under = await conn.fetchval("SELECT count(*) FROM tablets WHERE applied < $1", len(rounds))
        tablets = await conn.fetchval("SELECT count(*) FROM tablets")
        await conn.close()
        for proc in procs:
            await proc.stop()
    states = measured["states"]
    return {
        "dsn": dsn,
        "rate": states / measured["seconds"] if measured["seconds"] else 0.0,
        "worker_cpu_per_1000": measured["worker_cpu"] * 1000 / max(1, states),
        "pg_cpu_per_1000": measured["pg_cpu"] * 1000 / max(1, states),
        "lost": max(0, expected - seen) + under + (args.schools * args.tablets - tablets),
        "applied_twice": over + max(0, seen - expected),
        "payloads_per_batch": taken / max(1, batches),
    }


async def copy_floor(
    pg: PostgresCluster, dsn: str, payloads: list[tuple[str, bytes]]
) -> dict[str, Any]:
    """The same state rows loaded by COPY alone into a table shaped like ``tablets``."""
    records = []
    for topic, raw in payloads:
        for row in decode_upstream(topic, raw, max_payload_bytes=10**7).rows:
            if isinstance(row, StateRow):
                records.append(
                    (
                        row.school_id,
                        row.device_id,
                        row.gateway_id,
                        row.seq,
                        row.reported_at,
                        row.battery_pct,
                        row.charging,
                        row.storage_free_mb,
                        row.storage_total_mb,
                        row.os_version,
                        row.group_name,
                        row.locked,
                        row.report_json,
                    )
                )
    conn = await asyncpg.connect(dsn)
    await conn.execute("DROP TABLE IF EXISTS copy_floor")
    await conn.execute("CREATE TABLE copy_floor (LIKE tablets INCLUDING ALL)")
    columns = ("school_id", "device_id", "gateway_id", "seq", "reported_at", *STAGING_COLUMNS[5:])
    pg_ps = postgres_processes(pg)
    cpu = cpu_seconds(pg_ps)
    started = time.perf_counter()
    await conn.execute("ALTER TABLE copy_floor ALTER COLUMN received_at SET DEFAULT now()")
    await conn.copy_records_to_table("copy_floor", records=records, columns=columns)
    elapsed = time.perf_counter() - started
    pg_cpu = cpu_seconds(postgres_processes(pg)) - cpu
    await conn.execute("DROP TABLE copy_floor")
    await conn.close()
    return {"rate": len(records) / elapsed, "pg_cpu_per_1000": pg_cpu * 1000 / len(records)}


async def overview_p95(dsn: str, samples: int) -> dict[str, float]:
    """p95 of the console's overview over HTTP: the page (100 schools, needing attention
    first) and its JSON twin, signed in, on loopback; and of the query alone."""
    import aiohttp
    from aiohttp import web

    from gateway.academy.config import academy_config_from_mapping
    from gateway.academy.console.accounts import set_account
    from gateway.academy.console.app import build_app
    from gateway.academy.store.database import create_pool
    from gateway.academy.views import overview
    from gateway.lab.mosquitto import free_port

    conn = await asyncpg.connect(dsn)
    await set_account(conn, "bench", "viewer", "a bench password")
    query_ms = []
    for _ in range(samples):
        started = time.perf_counter()
        await overview(conn)
        query_ms.append((time.perf_counter() - started) * 1000)
    await conn.close()
    port = free_port()
    config = academy_config_from_mapping(
        {"database": {"dsn": dsn}, "console": {"port": port, "secure_cookies": False}}
    )
    pool = await create_pool(dsn, size=4)
    runner = web.AppRunner(build_app(config, pool), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    timings: dict[str, list[float]] = {"/": [], "/api/overview": []}
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(f"{url}/signin") as page:
                token = re.search(r'name="csrf_token" value="([^"]+)"', await page.text()).group(1)
            async with http.post(
                f"{url}/signin",
                data={"name": "bench", "password": "a bench password", "csrf_token": token},
            ) as signed:
                assert signed.status == 200, signed.status
            for _ in range(samples):
                for path, times in timings.items():
                    started = time.perf_counter()
                    async with http.get(f"{url}{path}") as response:
                        await response.read()
                        assert response.status == 200, (path, response.status)
                    times.append((time.perf_counter() - started) * 1000)
    finally:
        await runner.cleanup()
        await pool.close()

    def p95(values: list[float]) -> float:
        return statistics.quantiles(values, n=20)[-1]

    return {
        "page": p95(timings["/"]),
        "api": p95(timings["/api/overview"]),
        "query": p95(query_ms),
    }


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    build_started = time.perf_counter()
    rounds = [build_round(args.schools, args.tablets, r) for r in range(args.rounds)]
    print(
        f"built {sum(len(p) for p, _ in rounds)} payloads in {time.perf_counter() - build_started:.1f} s",
        flush=True,
    )
    with PostgresCluster() as pg:
        one = await run_phase(args, pg, work, 1, rounds)
        two = await run_phase(args, pg, work, 2, rounds)
        floor = await copy_floor(pg, two["dsn"], rounds[-1][0])
        p95 = await overview_p95(two["dsn"], args.overview_samples)
    return {
        "schools": args.schools,
        "tablets": args.schools * args.tablets,
        "rounds": args.rounds,
        "states_per_s_1_worker": round(one["rate"]),
        "states_per_s_2_workers": round(two["rate"]),
        "copy_floor_states_per_s": round(floor["rate"]),
        "ratio_to_copy": round(two["rate"] / floor["rate"], 3),
        "two_vs_one": round(two["rate"] / one["rate"], 3) if one["rate"] else None,
        "worker_cpu_s_per_1000_states_1_worker": round(one["worker_cpu_per_1000"], 3),
        "worker_cpu_s_per_1000_states_2_workers": round(two["worker_cpu_per_1000"], 3),
        "postgres_cpu_s_per_1000_states_1_worker": round(one["pg_cpu_per_1000"], 3),
        "postgres_cpu_s_per_1000_states_2_workers": round(two["pg_cpu_per_1000"], 3),
        "postgres_cpu_s_per_1000_states_copy": round(floor["pg_cpu_per_1000"], 3),
        # The same CPU figures in microseconds per state, one decimal.
        "worker_cpu_us_per_state_2_workers": round(two["worker_cpu_per_1000"] * 1000, 1),
        "postgres_cpu_us_per_state_2_workers": round(two["pg_cpu_per_1000"] * 1000, 1),
        "postgres_cpu_us_per_state_copy": round(floor["pg_cpu_per_1000"] * 1000, 1),
        "payloads_per_batch_1_worker": round(one["payloads_per_batch"], 1),
        "payloads_per_batch_2_workers": round(two["payloads_per_batch"], 1),
        "overview_p95_ms": round(max(p95["page"], p95["api"]), 1),
        "overview_page_p95_ms": round(p95["page"], 1),
        "overview_api_p95_ms": round(p95["api"], 1),
        "overview_query_p95_ms": round(p95["query"], 1),
        "lost": one["lost"] + two["lost"],
        "applied_twice": one["applied_twice"] + two["applied_twice"],
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schools", type=int, default=1000)
    parser.add_argument("--tablets", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2, help="round 1 inserts; the others update")
    parser.add_argument("--timeout", type=float, default=600.0, help="per round")
    parser.add_argument("--overview-samples", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="academy-ingest-", dir="/var/tmp"))
    print(json.dumps(asyncio.run(run(args, work))))


if __name__ == "__main__":
    main()
