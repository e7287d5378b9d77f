"""Benchmark: 24 simulated hours offline, then the link returns.

300 simulated tablets, one report a minute each, 24 simulated hours
(432,000 reports, simulated timestamps) published to a real school
Mosquitto as fast as the gateway (a subprocess, `python -m gateway run`)
takes them, while the academy broker is unreachable (a TCP proxy in front
of it is not listening). A command result is put in the outbox every 1,000
reports (the command flow's `enqueue`, from a second connection). Then the
proxy listens again and the outbox drains.

Measured: outbox peak bytes (the gateway's own budget accounting), bytes
that crossed the proxy towards the academy after reconnect (everything: MQTT
framing, birth message, pings), their ratio to the report bytes published,
drain seconds, disk bytes written by the gateway process per report
(/proc/<pid>/io write_bytes, from start of publishing to the last commit),
results lost. Last line: one JSON object.

    python bench/relay_offline.py [--tablets 300] [--hours 24]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

import relay_lab  # also puts the source tree on sys.path

from gateway.broker.mosquitto_config import render_mosquitto_config
from gateway.config import config_from_mapping
from gateway.lab.academy import AcademyListener
from gateway.lab.gateway_process import GatewayProcess
from gateway.lab.mosquitto import STAND_IN_ACADEMY_CONFIG, MosquittoProcess, free_port
from gateway.lab.proxy import LinkProxy
from gateway.lab.waiting import wait_until
from gateway.relay import outbox
from gateway.relay.wire import decode_payload
from gateway.store.database import Database

WINDOW = 50_000  # reports published ahead of the gateway's commits (broker queue is 100,000)
PUBLISHERS = 2


async def enqueue_result(db_path: Path, command_id: str) -> None:
    db = await Database.open(db_path)
    try:
        async with db.transaction() as conn:
            await outbox.enqueue(conn, "result", {"command_id": command_id, "status": "done"})
    finally:
        await db.close()


async def run(args: argparse.Namespace, work: Path) -> dict[str, object]:
    state_dir = work / "state"
    school_port, academy_port = free_port(), free_port()
    table = {
        "gateway": {
            "school_id": "bench-school",
            "gateway_id": "gw-bench",
            "state_dir": str(state_dir),
        },
        "school_broker": {"host": "127.0.0.1", "port": school_port, "lab_plain_listener": True},
        "academy_broker": {"host": "127.0.0.1", "port": 0},
        "http": {"host": "127.0.0.1", "port": free_port()},
    }
    school_conf = render_mosquitto_config(
        config_from_mapping({**table, "academy_broker": {"host": "x"}})
    )
    reports_per_tablet = args.hours * 60
    total = args.tablets * reports_per_tablet
    async with (
        MosquittoProcess(work / "school", school_conf, port=school_port) as school,
        MosquittoProcess(work / "academy", STAND_IN_ACADEMY_CONFIG, port=academy_port) as academy,
        LinkProxy(academy.host, academy.port) as proxy,
    ):
        proxy.cut()  # the academy is unreachable from the start
        table["academy_broker"]["port"] = proxy.port
        listener = AcademyListener(academy.host, academy.port, limit=10_000_000)
        listener_task = asyncio.create_task(listener.run())
        await asyncio.wait_for(listener.subscribed.wait(), 10)
        gateway = GatewayProcess(table, work / "gw")
        await gateway.start()
        for _ in range(600):  # the school link, within 30 s
            if (s := await gateway.status()) and s["brokers"]["school"]:
                break
            await asyncio.sleep(0.05)

        ctx = multiprocessing.get_context("spawn")
        allowed = ctx.Value("q", WINDOW)
        published = ctx.Value("q", 0)
        published_bytes = ctx.Value("q", 0)
        per = args.tablets // PUBLISHERS
        sim_start = 1_764_000_000.0
        io_before = gateway.io_and_memory()
        started = time.monotonic()
        publishers = [
            ctx.Process(
                target=relay_lab.paced_publisher,
                args=(
                    school.host,
                    school.port,
                    i * per,
                    per if i < PUBLISHERS - 1 else args.tablets - i * per,
                    reports_per_tablet,
                    sim_start,
                    60.0,
                    allowed,
                    published,
                    published_bytes,
                ),
            )
            for i in range(PUBLISHERS)
        ]
        for p in publishers:
            p.start()
        peak_bytes = 0
        peak_rss = 0
        results: list[str] = []
        stored = 0
        while stored < total:
            status = await gateway.status()
            if status is None:
                await asyncio.sleep(0.1)
                continue
            stored = status["counters"].get("state_reports_stored", 0)
            allowed.value = stored + WINDOW
            peak_bytes = max(peak_bytes, status["outbox"]["bytes"], status["outbox"]["peak_bytes"])
            peak_rss = max(peak_rss, gateway.io_and_memory()["rss"])
            while len(results) < stored // 1000:
                command_id = f"cmd-{len(results)}"
                await enqueue_result(state_dir / "gateway.db", command_id)
                results.append(command_id)
            if not any(p.is_alive() for p in publishers) and published.value < total:
                raise RuntimeError("publishers died")
            await asyncio.sleep(0.2)
        ingest_s = time.monotonic() - started
        io_after = gateway.io_and_memory()
        for p in publishers:
            p.join(60)
        status = await gateway.status()
        assert status is not None
        backlog_before = status["outbox"]
        peak_bytes = max(peak_bytes, backlog_before["peak_bytes"])

        # The link returns.
        up_before = proxy.bytes_up
        drain_start = time.monotonic()
        await proxy.restore()

        def drained() -> bool:
            return listener.total > 0 and latest_count(listener) == args.tablets

        connections = proxy.connections
        await wait_until(lambda: proxy.connections > connections, 120, step_s=0.01)
        reconnect_s = time.monotonic() - drain_start
        await wait_until(drained, 600, step_s=0.05)
        while True:
            status = await gateway.status()
            if status and status["outbox"]["rows"] == 0:
                break
            await asyncio.sleep(0.05)
        drain_s = time.monotonic() - drain_start
        upstream_bytes = proxy.bytes_up - up_before
        view = dedup(listener)
        got_results = {m["body"]["command_id"] for m in view if m["kind"] == "result"}
        latest = {}
        for m in view:
            if m["kind"] == "state":
                latest[m["body"]["device_id"]] = max(
                    latest.get(m["body"]["device_id"], 0), m["body"]["seq"]
                )
        await gateway.stop()
        listener_task.cancel()
        return {
            "reports_published": published.value,
            "report_bytes_published": published_bytes.value,
            "reports_stored": stored,
            "ingest_seconds": round(ingest_s, 1),
            "outbox_peak_bytes": peak_bytes,
            "outbox_rows_before_reconnect": backlog_before["rows"],
            "upstream_bytes": upstream_bytes,
            "upstream_payload_bytes": listener.total_bytes,
            "upstream_ratio": round(upstream_bytes / published_bytes.value, 6),
            "drain_seconds": round(drain_s, 2),
            "reconnect_seconds": round(reconnect_s, 2),
            "drain_after_reconnect_seconds": round(drain_s - reconnect_s, 2),
            "disk_bytes_per_report": round(
                (io_after["write_bytes"] - io_before["write_bytes"]) / total, 1
            ),
            "write_syscall_bytes_per_report": round(
                (io_after["wchar"] - io_before["wchar"]) / total, 1
            ),
            "gateway_peak_rss_mb": round(peak_rss / 1e6, 1),
            "results_enqueued": len(results),
            "results_lost": len(set(results) - got_results),
            "tablets_latest_at_academy": sum(1 for v in latest.values() if v == reports_per_tablet),
        }


def dedup(listener: AcademyListener) -> list[dict]:
    seen, view = set(), []
    for r in list(listener.messages):
        if "/up/" in r.topic:
            for m in decode_payload(r.payload):
                if (m["gateway_id"], m["seq"]) not in seen:
                    seen.add((m["gateway_id"], m["seq"]))
                    view.append(m)
    return view


def latest_count(listener: AcademyListener) -> int:
    return len({m["body"]["device_id"] for m in dedup(listener) if m["kind"] == "state"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tablets", type=int, default=300)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="relay-offline-", dir="/var/tmp"))
    figures = asyncio.run(run(args, work))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
