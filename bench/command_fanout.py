"""Command fan-out: one signed command to 1,000 online tablets, results back at the academy.

    python bench/command_fanout.py [--tablets 1000] [--repeat 1]

Real parts: two Mosquitto brokers (the school's, generated from the gateway
config, and a stand-in academy broker), the gateway as a subprocess
(``python -m gateway run``), 1,000 simulated tablets (one MQTT client each)
in this process, answering through gateway.sim.commands.

gateway: the academy publishes one signed ``lock`` for all tablets; the
clock stops when the academy broker has delivered all 1,000 ``done``
results to an academy listener.

floor (same run, same brokers, same tablet clients): a bare client publishes
1,000 delivery messages (QoS 1) to the tablets' command topics, collects the
1,000 replies from the school broker, and forwards each one (QoS 1) to the
academy broker; the clock stops when the academy listener has all 1,000.
That is the gateway's path with no verification, no durability and no
bookkeeping.

The last line is JSON: tablets, results, gateway_seconds, floor_seconds,
ratio (gateway / floor; target <= 1.2), plus the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import topics
from gateway.broker.mosquitto_config import render_mosquitto_config
from gateway.config import config_from_mapping
from gateway.lab.academy import AcademyListener
from gateway.lab.commands import AcademySigner, academy_view
from gateway.lab.gateway_process import GatewayProcess
from gateway.lab.mosquitto import (
    STAND_IN_ACADEMY_CONFIG,
    MosquittoProcess,
    free_port,
)
from gateway.lab.waiting import wait_until
from gateway.sim.commands import SimulatedCommands
from gateway.sim.fleet import Fleet, FleetSettings

SCHOOL = "school-bench"
log = logging.getLogger("bench")


async def floor_run(school: MosquittoProcess, academy_port: int, fleet: Fleet, tag: str) -> float:
    """Bare client: 1,000 deliveries out, 1,000 replies back, forwarded to the academy."""
    n = len(fleet.tablets)
    listener = AcademyListener("127.0.0.1", academy_port, topic_filter=f"floor/{tag}/#")
    listener_task = asyncio.create_task(listener.run())
    await asyncio.wait_for(listener.subscribed.wait(), 10)
    now = time.time()
    message = json.dumps(
        {
            "command_id": f"floor-{tag}",
            "issued_at": now,
            "not_after": now + 3600,
            "action": "lock",
            "params": {},
        }
    ).encode()
    forwards: set[asyncio.Task[None]] = set()
    async with (
        aiomqtt.Client(school.host, school.port, identifier=f"floor-school-{tag}") as bare,
        aiomqtt.Client("127.0.0.1", academy_port, identifier=f"floor-academy-{tag}") as up,
    ):
        await bare.subscribe(topics.TABLET_RESULTS_FILTER, qos=1)

        async def collect() -> None:
            async for reply in bare.messages:
                payload = reply.payload if isinstance(reply.payload, bytes) else b""
                if f"floor-{tag}".encode() not in payload:
                    continue
                forward = asyncio.create_task(
                    up.publish(f"floor/{tag}/{reply.topic.value}", payload, qos=1)
                )
                forwards.add(forward)
                forward.add_done_callback(forwards.discard)

        collector = asyncio.create_task(collect())
        started = time.perf_counter()
        await asyncio.gather(
            *(
                bare.publish(topics.tablet_commands(t.device_id), message, qos=1)
                for t in fleet.tablets
            )
        )
        await listener.wait_for(lambda: listener.total >= n, 120)
        elapsed = time.perf_counter() - started
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
    listener_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener_task
    if listener.total < n:
        raise RuntimeError(f"floor: only {listener.total} of {n} replies reached the academy")
    return elapsed


async def gateway_run(
    academy_port: int, listener: AcademyListener, signer: AcademySigner, n: int
) -> tuple[float, int]:
    """One signed command to all tablets through the gateway; time until n results."""
    command_id, envelope = signer.envelope("lock", targets={"all": True})

    def done() -> int:
        statuses = academy_view(listener).results.get(command_id, {})
        return sum(1 for s in statuses.values() if s == "done")

    async with aiomqtt.Client("127.0.0.1", academy_port, identifier="bench-academy") as academy:
        started = time.perf_counter()
        await academy.publish(topics.academy_commands(SCHOOL), envelope, qos=1)
        await wait_until(lambda: done() >= n, 180, step_s=0.005)
        elapsed = time.perf_counter() - started
    return elapsed, done()


async def main(args: argparse.Namespace) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="command-fanout-"))
    signer = AcademySigner(SCHOOL)
    school_port, academy_port = free_port(), free_port()
    table = {
        "gateway": {
            "school_id": SCHOOL,
            "gateway_id": "gw-bench",
            "state_dir": str(workdir / "state"),
        },
        "school_broker": {"host": "127.0.0.1", "port": school_port, "lab_plain_listener": True},
        "academy_broker": {"host": "127.0.0.1", "port": academy_port},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "commands": {"academy_keys": signer.config_keys()},
    }
    school_conf = render_mosquitto_config(config_from_mapping(table))
    n = args.tablets
    async with (
        MosquittoProcess(workdir / "school", school_conf, port=school_port) as school,
        MosquittoProcess(workdir / "academy", STAND_IN_ACADEMY_CONFIG, port=academy_port),
    ):
        gateway = GatewayProcess(table, workdir / "gateway")
        await gateway.start()
        await gateway.wait_connected(60)
        listener = AcademyListener("127.0.0.1", academy_port)
        listener_task = asyncio.create_task(listener.run())
        await asyncio.wait_for(listener.subscribed.wait(), 10)
        applier = SimulatedCommands()
        fleet = Fleet(
            FleetSettings(
                host=school.host,
                port=school.port,
                tablets=n,
                interval_s=0,
                reports_per_tablet=1,
                stay_online=True,
            ),
            on_command=applier,
        )
        fleet_task = asyncio.create_task(fleet.run())
        started = time.perf_counter()
        # Every tablet online and known to the gateway (its state relayed upstream).
        known = await wait_until(
            lambda: (
                len(
                    {
                        m["body"]["device_id"]
                        for m in academy_view(listener).messages
                        if m["kind"] == "state"
                    }
                )
                >= n
            ),
            300,
            step_s=0.2,
        )
        if not known:
            raise RuntimeError("the gateway did not learn every tablet in time")
        log.info("%d tablets online and known after %.1f s", n, time.perf_counter() - started)
        floors, gateways, results = [], [], 0
        for round_number in range(args.repeat):
            floors.append(await floor_run(school, academy_port, fleet, str(round_number)))
            log.info("floor run %d: %.3f s", round_number, floors[-1])
            elapsed, results = await gateway_run(academy_port, listener, signer, n)
            gateways.append(elapsed)
            log.info("gateway run %d: %.3f s (%d results)", round_number, elapsed, results)
        for tablet in fleet.tablets:
            tablet.leave()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(fleet_task, 60)
        await gateway.stop()
        listener_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener_task
    twice = sum(1 for m in applier.memory.values() for c in m.applications.values() if c > 1)
    gateway_s, floor_s = statistics.median(gateways), statistics.median(floors)
    return {
        "tablets": n,
        "results": results,
        "gateway_seconds": round(gateway_s, 3),
        "floor_seconds": round(floor_s, 3),
        "ratio": round(gateway_s / floor_s, 2),
        "repeat": args.repeat,
        "applied_twice": twice,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tablets", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1, help="alternate floor/gateway N times")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    summary = asyncio.run(main(arguments))
    print(json.dumps(summary))
