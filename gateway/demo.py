"""``python -m gateway demo``: the whole product on loopback, with a live view.

Starts two real Mosquitto brokers (the school's and a stand-in for the
academy's), the gateway, N simulated tablets and an academy-side listener,
then shows what flows. The academy is reached through a TCP proxy that cuts
the uplink for a while (``--cut-at``, ``--cut-for``): the outbox backlog
grows during the cut and drains after. Logs go to ``demo.log`` in the work directory so the
terminal stays readable. Ctrl-C (or --duration) stops everything in order and
prints ``demo summary: {...}`` as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from gateway.app import Gateway
from gateway.broker.mosquitto_config import render_mosquitto_config
from gateway.config import Config, config_from_mapping
from gateway.lab.academy import AcademyListener
from gateway.lab.mosquitto import STAND_IN_ACADEMY_CONFIG, MosquittoProcess, free_port
from gateway.lab.proxy import LinkProxy
from gateway.lab.waiting import wait_until
from gateway.relay.wire import decode_payload
from gateway.sim.fleet import Fleet, FleetSettings

log = logging.getLogger(__name__)

SCHOOL_ID = "demo-school"
GATEWAY_ID = "gw-demo"


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tablets", type=int, default=20, help="simulated tablets")
    parser.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between reports")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep state here (default: a temp dir)"
    )
    parser.add_argument(
        "--cut-at", type=float, default=None, help="cut the uplink after S seconds (default: 1/3)"
    )
    parser.add_argument(
        "--cut-for", type=float, default=None, help="for S seconds (default: 1/3 of the run)"
    )


def demo_config(workdir: Path, school_port: int, academy_port: int) -> Config:
    return config_from_mapping(
        {
            "gateway": {
                "school_id": SCHOOL_ID,
                "gateway_id": GATEWAY_ID,
                "state_dir": str(workdir / "state"),
            },
            "school_broker": {"host": "127.0.0.1", "port": school_port},
            "academy_broker": {"host": "127.0.0.1", "port": academy_port},
            "http": {"host": "127.0.0.1", "port": free_port()},
            "uplink": {"summary_interval_s": 10.0},
        }
    )


class DemoView:
    """Redraws a small panel (on a terminal) or prints a line every few seconds."""

    def __init__(
        self,
        out: TextIO,
        gateway: Gateway,
        fleet: Fleet,
        listener: AcademyListener,
        proxy: LinkProxy | None = None,
    ):
        self.proxy = proxy
        self.outbox: dict[str, Any] = {}
        self.outbox_peak_rows = 0
        self.out = out
        self.gateway = gateway
        self.fleet = fleet
        self.listener = listener
        self.started = time.monotonic()
        self.interactive = out.isatty()

    def figures(self) -> dict[str, Any]:
        c = self.gateway.counters
        up_state = sum(
            len(decode_payload(m.payload))
            for m in self.listener.messages
            if m.topic.endswith("/up/state")
        )
        return {
            "tablets": self.fleet.stats.tablets,
            "tablets_connected": self.fleet.stats.connected,
            "state_reports_published": self.fleet.stats.reports_published,
            "state_reports_received": c.get("state_reports_received"),
            "state_reports_stored": c.get("state_reports_stored"),
            "state_reports_rejected": c.get("tablet_messages_rejected"),
            "state_relayed_upstream": up_state,
            "academy_messages": self.listener.total,
            "academy_bytes": self.listener.total_bytes,
            "outbox_rows": self.outbox.get("rows", 0),
            "outbox_peak_rows": self.outbox_peak_rows,
            "outbox_peak_bytes": self.outbox.get("peak_bytes", 0),
            "uplink_cuts": self.proxy.cuts if self.proxy else 0,
        }

    def lines(self, duration: float | None) -> list[str]:
        f = self.figures()
        elapsed = time.monotonic() - self.started
        limit = f" / {duration:.0f} s" if duration else " (Ctrl-C to stop)"
        links = self.gateway
        school = "connected" if links.school_link.is_connected else "DOWN"
        academy = "connected" if links.academy_link.is_connected else "DOWN"
        return [
            f"School edge gateway demo: school {SCHOOL_ID}, gateway {GATEWAY_ID}, "
            f"{elapsed:.0f} s{limit}",
            f"  brokers   school {school}, academy {academy}",
            f"  tablets   {f['tablets']} simulated, {f['tablets_connected']} connected",
            f"  state     published {f['state_reports_published']}, "
            f"received {f['state_reports_received']}, stored {f['state_reports_stored']}, "
            f"rejected {f['state_reports_rejected']}",
            f"  academy   {f['state_relayed_upstream']} state messages relayed, "
            f"{f['academy_messages']} messages / {f['academy_bytes'] / 1000:.1f} kB in all",
            f"  uplink    {'CUT' if self.proxy and not self.proxy.is_up else 'up'}; outbox "
            f"{self.outbox.get('rows', 0)} rows, {self.outbox.get('bytes', 0) / 1000:.1f} kB, "
            f"oldest {self.outbox.get('oldest_age_s', 0):.0f} s "
            f"(peak {f['outbox_peak_rows']} rows)",
        ]

    async def run(self, duration: float | None) -> None:
        period = 1.0 if self.interactive else 5.0
        while True:
            self.outbox = (await self.gateway.status()).get("outbox", {})
            self.outbox_peak_rows = max(self.outbox_peak_rows, self.outbox.get("rows", 0))
            text = "\n".join(self.lines(duration))
            if self.interactive:
                self.out.write("\x1b[H\x1b[2J" + text + "\n")
            else:
                self.out.write(text + "\n")
            self.out.flush()
            await asyncio.sleep(period)


async def _cut_uplink(proxy: LinkProxy, at_s: float, for_s: float) -> None:
    """The demo's scripted outage: cut the academy link, then give it back."""
    await asyncio.sleep(at_s)
    log.info("demo: cutting the uplink for %.0f s", for_s)
    proxy.cut()
    await asyncio.sleep(for_s)
    log.info("demo: uplink back")
    await proxy.restore()


async def run_demo(args: argparse.Namespace) -> int:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="school-gateway-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        filename=workdir / "demo.log",
        force=True,
    )
    print(f"demo: work directory {workdir} (logs in demo.log)", flush=True)
    school_port, academy_port = free_port(), free_port()
    config = demo_config(workdir, school_port, academy_port)
    school_conf = render_mosquitto_config(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with (
            MosquittoProcess(workdir / "school-broker", school_conf, port=school_port) as school,
            MosquittoProcess(workdir / "academy-broker", STAND_IN_ACADEMY_CONFIG, academy_port),
        ):
            summary = await _run_everything(args, config, school, academy_port, stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("demo summary: " + json.dumps(summary, sort_keys=True), flush=True)
    return 0


async def _run_everything(
    args: argparse.Namespace,
    config: Config,
    school: MosquittoProcess,
    academy_port: int,
    stop: asyncio.Event,
) -> dict[str, Any]:
    proxy = LinkProxy("127.0.0.1", academy_port)
    await proxy.start()
    config = dataclasses.replace(
        config, academy_broker=dataclasses.replace(config.academy_broker, port=proxy.port)
    )
    gateway = Gateway(config)
    listener = AcademyListener("127.0.0.1", academy_port)
    fleet = Fleet(
        FleetSettings(
            host=school.host, port=school.port, tablets=args.tablets, interval_s=args.interval
        )
    )
    view = DemoView(sys.stdout, gateway, fleet, listener, proxy)
    gateway_task = asyncio.create_task(gateway.run(), name="gateway")
    listener_task = asyncio.create_task(listener.run(), name="academy-listener")
    await asyncio.wait_for(gateway.ready.wait(), 15)
    await asyncio.wait_for(listener.subscribed.wait(), 15)
    fleet_task = asyncio.create_task(fleet.run(), name="fleet")
    view_task = asyncio.create_task(view.run(args.duration), name="view")
    third = (args.duration or 60.0) / 3
    cut_task = asyncio.create_task(
        _cut_uplink(proxy, args.cut_at or third, args.cut_for or third), name="uplink-cut"
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.duration)
    cut_task.cancel()
    await proxy.restore()
    fleet_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await fleet_task
    # Let what the tablets already published finish its way to the academy
    # (the academy link may still be in its reconnect backoff after the cut).
    counters = gateway.counters
    await wait_until(
        lambda: counters.get("state_reports_stored") >= fleet.stats.reports_published, 10
    )
    for _ in range(200):  # at most 40 s
        if (await gateway.status())["outbox"]["rows"] == 0:
            break
        await asyncio.sleep(0.2)
    view_task.cancel()
    gateway.stop()
    await asyncio.wait_for(gateway_task, 15)
    listener_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener_task
    await proxy.stop()
    figures = view.figures()
    figures.pop("tablets_connected")
    figures["duration_s"] = round(time.monotonic() - view.started, 1)
    return figures
