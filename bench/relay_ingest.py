"""Benchmark: how many state reports per second the gateway commits, against a bare subscriber.

1,000 tablets report as fast as they can for 30 s (raw paho publishers in
their own processes, valid reports, QoS 1) on a real school Mosquitto. In the
same run, on the same broker, the gateway (a subprocess) and a bare aiomqtt
subscriber (QoS 1, its own process: the obvious alternative, doing nothing
with what it receives) take the same stream. Compared over the same
wall-clock window (after a warm-up): reports committed per second by the
gateway (its ``state_reports_stored`` counter, i.e. validated, in SQLite,
acknowledged) and reports received per second by the bare subscriber.
Last line: one JSON object.

    python bench/relay_ingest.py [--tablets 1000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import psutil
import relay_lab  # also puts the source tree on sys.path

from gateway.broker.mosquitto_config import render_mosquitto_config
from gateway.config import config_from_mapping
from gateway.lab.gateway_process import GatewayProcess
from gateway.lab.mosquitto import STAND_IN_ACADEMY_CONFIG, MosquittoProcess, free_port

PUBLISHERS = 2
WARMUP_S = 3.0


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def run(args: argparse.Namespace, work: Path) -> dict[str, object]:
    state_dir = work / "state"
    school_port = free_port()
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
    school_conf = render_mosquitto_config(config_from_mapping(table))
    async with (
        MosquittoProcess(work / "school", school_conf, port=school_port) as school,
        MosquittoProcess(work / "academy", STAND_IN_ACADEMY_CONFIG) as academy,
    ):
        table["academy_broker"]["port"] = academy.port
        gateway = GatewayProcess(table, work / "gw")
        await gateway.start()
        await gateway.wait_connected()
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        per_second = ctx.Queue()
        total_s = WARMUP_S + args.seconds + 1
        bare = ctx.Process(
            target=relay_lab.bare_subscriber,
            args=(school.host, school.port, total_s + 2, ready, per_second),
        )
        bare.start()
        await asyncio.get_running_loop().run_in_executor(None, ready.wait, 30)
        published = [ctx.Value("q", 0) for _ in range(PUBLISHERS)]
        per = args.tablets // PUBLISHERS
        publishers = [
            ctx.Process(
                target=relay_lab.flat_out_publisher,
                args=(school.host, school.port, i * per, per, total_s, published[i]),
            )
            for i in range(PUBLISHERS)
        ]
        for p in publishers:
            p.start()
        await asyncio.sleep(WARMUP_S)  # benchmark warm-up (not a test)
        status = await gateway.status()
        assert status is not None
        t1, stored1 = time.time(), status["counters"].get("state_reports_stored", 0)
        gw_proc, bare_proc = psutil.Process(gateway.pid), psutil.Process(bare.pid)
        gw_cpu1, bare_cpu1 = cpu_seconds(gw_proc), cpu_seconds(bare_proc)
        peak_rss = 0
        while time.time() < t1 + args.seconds:
            peak_rss = max(peak_rss, gateway.io_and_memory()["rss"])
            await asyncio.sleep(0.5)
        status = await gateway.status()
        assert status is not None
        t2, stored2 = time.time(), status["counters"].get("state_reports_stored", 0)
        gw_cpu = cpu_seconds(gw_proc) - gw_cpu1
        bare_cpu = cpu_seconds(bare_proc) - bare_cpu1
        peak_rss = max(peak_rss, gateway.io_and_memory()["rss"])
        counts = await asyncio.get_running_loop().run_in_executor(None, per_second.get, True, 120)
        for p in publishers:
            p.join(60)
        bare.join(30)
        await gateway.stop()
    # Whole seconds inside [t1, t2) for the reference.
    seconds = range(int(t1) + 1, int(t2))
    bare_rate = sum(counts.get(s, 0) for s in seconds) / max(1, len(seconds))
    gateway_rate = (stored2 - stored1) / (t2 - t1)
    bare_count = sum(counts.get(s, 0) for s in seconds)
    return {
        "tablets": args.tablets,
        "seconds": round(t2 - t1, 1),
        "gateway_reports_per_s": round(gateway_rate),
        "bare_reports_per_s": round(bare_rate),
        "ratio": round(gateway_rate / bare_rate, 3) if bare_rate else None,
        "gateway_rss_mb": round(peak_rss / 1e6, 1),
        "reports_published": sum(v.value for v in published),
        # CPU time per report (user + system) over the same window: what a free core would do.
        "gateway_cpu_us_per_report": round(gw_cpu * 1e6 / max(1, stored2 - stored1), 1),
        "bare_cpu_us_per_report": round(bare_cpu * 1e6 / max(1, bare_count), 1),
        "gateway_reports_per_cpu_s": round((stored2 - stored1) / gw_cpu) if gw_cpu else None,
        "bare_reports_per_cpu_s": round(bare_count / bare_cpu) if bare_cpu else None,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tablets", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="relay-ingest-", dir="/var/tmp"))
    print(json.dumps(asyncio.run(run(args, work))))


if __name__ == "__main__":
    main()
