"""Benchmark: how many state reports per second the gateway commits, against two subscribers.

1,000 tablets report as fast as they can (raw MQTT publishers in their own
processes, valid reports from the simulator's model, QoS 1) to a real school
Mosquitto, in three phases of the same run on the same broker, each with its
own warm-up and ``--seconds`` of measurement:

1. the floor: ``mosquitto_sub -q 1`` (the C client of Mosquitto's own
   project) writing to /dev/null; what it takes per second is read from the
   broker's ``$SYS/broker/publish/messages/sent`` (``sys_interval 1``, so each
   end of the window is known to a second);
2. the reference: a bare aiomqtt subscriber (QoS 1, its own process: the
   obvious Python alternative, doing nothing with what it receives) counts
   the reports it takes per second;
3. the gateway (``python -m gateway run``, a subprocess): reports committed
   per second, from its ``state_reports_stored`` counter (validated, in
   SQLite, acknowledged), its peak RSS and its CPU time per report.

The phases run one after the other so that neither takes CPU from the other
(the machine may have two cores for broker, publishers and consumer).
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
from typing import Any

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


def start_publishers(
    ctx: Any, host: str, port: int, tablets: int, duration_s: float
) -> tuple[list[Any], list[Any]]:
    published = [ctx.Value("q", 0) for _ in range(PUBLISHERS)]
    per = tablets // PUBLISHERS
    publishers = [
        ctx.Process(
            target=relay_lab.flat_out_publisher,
            args=(host, port, i * per, per, duration_s, published[i]),
        )
        for i in range(PUBLISHERS)
    ]
    for p in publishers:
        p.start()
    return publishers, published


async def sys_counter(host: str, port: int, topic: str) -> int:
    """The current value of one of the broker's retained ``$SYS`` counters."""
    process = await asyncio.create_subprocess_exec(
        "mosquitto_sub",
        "-h",
        host,
        "-p",
        str(port),
        "-t",
        topic,
        "-C",
        "1",
        "-W",
        "10",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    return int(out.split()[0])


async def c_floor_phase(ctx: Any, args: argparse.Namespace, host: str, port: int) -> dict[str, Any]:
    total_s = WARMUP_S + args.seconds + 1
    subscriptions = await sys_counter(host, port, "$SYS/broker/subscriptions/count")
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub",
        "-h",
        host,
        "-p",
        str(port),
        "-q",
        "1",
        "-i",
        "bench-c-floor",
        "-t",
        "tablets/+/state",
        stdout=asyncio.subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while await sys_counter(host, port, "$SYS/broker/subscriptions/count") <= subscriptions:
        assert time.monotonic() < deadline, "mosquitto_sub did not subscribe"
        await asyncio.sleep(0.2)  # polled with a deadline: the broker's $SYS ticks each second
    publishers, published = start_publishers(ctx, host, port, args.tablets, total_s)
    await asyncio.sleep(WARMUP_S)  # benchmark warm-up (not a test)
    sent_topic = "$SYS/broker/publish/messages/sent"
    t1, sent1 = time.time(), await sys_counter(host, port, sent_topic)
    cpu1 = cpu_seconds(psutil.Process(sub.pid))
    await asyncio.sleep(args.seconds)  # the measured window
    t2, sent2 = time.time(), await sys_counter(host, port, sent_topic)
    cpu2 = cpu_seconds(psutil.Process(sub.pid))
    for p in publishers:
        p.join(60)
    sub.terminate()
    await sub.wait()
    rate = (sent2 - sent1) / (t2 - t1)
    return {
        "rate": rate,
        "cpu_us": (cpu2 - cpu1) * 1e6 / max(1.0, rate * (t2 - t1)),
        "published": sum(v.value for v in published),
    }


async def bare_phase(ctx: Any, args: argparse.Namespace, host: str, port: int) -> dict[str, Any]:
    ready, per_second = ctx.Event(), ctx.Queue()
    total_s = WARMUP_S + args.seconds + 1
    bare = ctx.Process(
        target=relay_lab.bare_subscriber, args=(host, port, total_s + 2, ready, per_second)
    )
    bare.start()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, ready.wait, 30)
    publishers, published = start_publishers(ctx, host, port, args.tablets, total_s)
    await asyncio.sleep(WARMUP_S)  # benchmark warm-up (not a test)
    t1, cpu1 = time.time(), cpu_seconds(psutil.Process(bare.pid))
    await asyncio.sleep(args.seconds)  # the measured window
    t2, cpu2 = time.time(), cpu_seconds(psutil.Process(bare.pid))
    counts = await loop.run_in_executor(None, per_second.get, True, 120)
    for p in publishers:
        p.join(60)
    bare.join(30)
    seconds = range(int(t1) + 1, int(t2))  # whole seconds inside the window
    rate = sum(counts.get(s, 0) for s in seconds) / max(1, len(seconds))
    return {
        "rate": rate,
        "cpu_us": (cpu2 - cpu1) * 1e6 / max(1.0, rate * (t2 - t1)),
        "published": sum(v.value for v in published),
    }


async def gateway_phase(
    ctx: Any, args: argparse.Namespace, table: dict[str, Any], work: Path
) -> dict[str, Any]:
    host, port = table["school_broker"]["host"], table["school_broker"]["port"]
    gateway = GatewayProcess(table, work / "gw")
    await gateway.start()
    await gateway.wait_connected()
    total_s = WARMUP_S + args.seconds + 1
    publishers, published = start_publishers(ctx, host, port, args.tablets, total_s)
    await asyncio.sleep(WARMUP_S)  # benchmark warm-up (not a test)
    status = await gateway.status()
    assert status is not None
    t1, stored1 = time.time(), status["counters"].get("state_reports_stored", 0)
    gw_proc = psutil.Process(gateway.pid)
    cpu1 = cpu_seconds(gw_proc)
    peak_rss = 0
    while time.time() < t1 + args.seconds:
        peak_rss = max(peak_rss, gateway.io_and_memory()["rss"])
        await asyncio.sleep(0.5)
    status = await gateway.status()
    assert status is not None
    t2, stored2 = time.time(), status["counters"].get("state_reports_stored", 0)
    cpu = cpu_seconds(gw_proc) - cpu1
    peak_rss = max(peak_rss, gateway.io_and_memory()["rss"])
    for p in publishers:
        p.join(60)
    await gateway.stop()
    stored = stored2 - stored1
    return {
        "rate": stored / (t2 - t1),
        "cpu_us": cpu * 1e6 / max(1, stored),
        "rss": peak_rss,
        "published": sum(v.value for v in published),
    }


async def run(args: argparse.Namespace, work: Path) -> dict[str, object]:
    school_port = free_port()
    table = {
        "gateway": {
            "school_id": "bench-school",
            "gateway_id": "gw-bench",
            "state_dir": str(work / "state"),
        },
        "school_broker": {"host": "127.0.0.1", "port": school_port, "lab_plain_listener": True},
        "academy_broker": {"host": "127.0.0.1", "port": 0},
        "http": {"host": "127.0.0.1", "port": free_port()},
    }
    # $SYS counters each second: the floor phase reads what the broker sent.
    school_conf = render_mosquitto_config(config_from_mapping(table)) + "sys_interval 1\n"
    ctx = multiprocessing.get_context("spawn")
    async with (
        MosquittoProcess(work / "school", school_conf, port=school_port) as school,
        MosquittoProcess(work / "academy", STAND_IN_ACADEMY_CONFIG) as academy,
    ):
        table["academy_broker"]["port"] = academy.port
        floor = await c_floor_phase(ctx, args, school.host, school.port)
        bare = await bare_phase(ctx, args, school.host, school.port)
        gw = await gateway_phase(ctx, args, table, work)
    return {
        "tablets": args.tablets,
        "seconds": args.seconds,
        "gateway_reports_per_s": round(gw["rate"]),
        "bare_reports_per_s": round(bare["rate"]),
        "ratio": round(gw["rate"] / bare["rate"], 3) if bare["rate"] else None,
        "c_floor_reports_per_s": round(floor["rate"]),
        "ratio_to_c_floor": round(gw["rate"] / floor["rate"], 3) if floor["rate"] else None,
        "gateway_rss_mb": round(gw["rss"] / 1e6, 1),
        "reports_published_gateway_phase": gw["published"],
        "reports_published_bare_phase": bare["published"],
        "reports_published_c_floor_phase": floor["published"],
        # CPU time (user + system) per report in the window: what one free core would do.
        "gateway_cpu_us_per_report": round(gw["cpu_us"], 1),
        "bare_cpu_us_per_report": round(bare["cpu_us"], 1),
        "c_floor_cpu_us_per_report": round(floor["cpu_us"], 1),
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
