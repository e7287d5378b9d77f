"""``python -m gateway demo``: the whole product on loopback, with a live view.

Starts two real Mosquitto brokers (the school's and a stand-in for the
academy's), the gateway, N simulated tablets and an academy-side listener,
then shows what flows. Once the tablets are known, the academy sends two
signed commands (lock classroom class-01, install the cached app on every
tablet) and the view shows their progress as results come back. The update
cache is shown too: a lab origin at 4 MB/s holds an 8 MB app named in a
manifest signed with the same academy key, and a few tablets fetch it at
once through the gateway (one upstream download serves them). Logs go to
``demo.log`` in the work directory so the terminal stays readable. Ctrl-C
(or --duration) stops everything in order and prints ``demo summary: {...}``
as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import aiomqtt

from gateway import topics
from gateway.app import Gateway
from gateway.broker.mosquitto_config import render_mosquitto_config
from gateway.cache.manifest import sign_manifest
from gateway.commands.lab import AcademySigner, academy_view
from gateway.config import Config, config_from_mapping
from gateway.lab.academy import AcademyListener
from gateway.lab.mosquitto import STAND_IN_ACADEMY_CONFIG, MosquittoProcess, free_port
from gateway.lab.origin import Origin
from gateway.lab.waiting import wait_until
from gateway.sim.commands import SimulatedCommands
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


CACHE_ITEM_BYTES = 8 * 1024 * 1024
CACHE_FETCHERS = 5


def demo_commands(app_sha256: str) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(label, action, targets, params) of the commands the demo's academy sends."""
    return [
        ("lock class-01", "lock", {"group": "class-01"}, {}),
        (
            "install classroom 2.5.1",
            "install_app",
            {"all": True},
            {"package": "org.ent.classroom", "version": "2.5.1", "sha256": app_sha256},
        ),
    ]


def demo_config(
    workdir: Path, school_port: int, academy_port: int, academy_keys: dict[str, str] | None = None
) -> Config:
    return config_from_mapping(
        {
            "gateway": {
                "school_id": SCHOOL_ID,
                "gateway_id": GATEWAY_ID,
                "state_dir": str(workdir / "state"),
            },
            # Development only: anonymous plain MQTT on loopback (docs/security.md).
            "school_broker": {"host": "127.0.0.1", "port": school_port, "lab_plain_listener": True},
            "academy_broker": {"host": "127.0.0.1", "port": academy_port},
            "http": {"host": "127.0.0.1", "port": free_port()},
            "uplink": {"summary_interval_s": 10.0},
            "cache": {"offpeak_windows": []},
            "commands": {"academy_keys": academy_keys or {}},
        }
    )


class CacheShow:
    """An origin with one app and a few tablets fetching it through the gateway."""

    def __init__(self, signer: AcademySigner) -> None:
        self.private = signer.key
        self.key_id = signer.key_id
        self.data = b"".join(
            hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(CACHE_ITEM_BYTES // 32)
        )
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.origin = Origin(rate_bytes_per_s=4 * 1024 * 1024)
        self.fetched_ok = 0
        self.fetch_failed = 0

    async def run(self, gateway: Gateway) -> None:
        data, sha = self.data, self.sha256
        item = {
            "sha256": sha,
            "size": len(data),
            "urls": [self.origin.add("app.apk", data)],
            "name": "classroom-2.5.1.apk",
            "kind": "apk",
            "version": "2.5.1",
        }
        body = {"type": "cache_manifest", "serial": 1, "issued_at": time.time(), "items": [item]}
        assert gateway.cache is not None
        await gateway.cache.apply_manifest(sign_manifest(body, self.private, self.key_id))
        http = gateway.config.http
        url = f"http://{http.host}:{http.port}/content/{sha}"
        async with aiohttp.ClientSession() as session:

            async def tablet() -> None:
                try:
                    async with session.get(url) as response:
                        got = hashlib.sha256(await response.read()).hexdigest()
                    if got == sha:
                        self.fetched_ok += 1
                    else:
                        self.fetch_failed += 1
                except aiohttp.ClientError:
                    self.fetch_failed += 1

            await asyncio.gather(*(tablet() for _ in range(CACHE_FETCHERS)))


class DemoView:
    """Redraws a small panel (on a terminal) or prints a line every few seconds."""

    def __init__(
        self,
        out: TextIO,
        gateway: Gateway,
        fleet: Fleet,
        listener: AcademyListener,
        cache: CacheShow | None = None,
    ):
        self.cache = cache
        self.out = out
        self.gateway = gateway
        self.fleet = fleet
        self.listener = listener
        self.started = time.monotonic()
        self.interactive = out.isatty()
        self.commands: list[tuple[str, str]] = []  # (label, command id) sent by the academy

    def figures(self) -> dict[str, Any]:
        c = self.gateway.counters
        up_state = sum(1 for m in self.listener.messages if m.topic.endswith("/up/state"))
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
            "cache_tablets_fetched_ok": self.cache.fetched_ok if self.cache else 0,
            "cache_item_bytes": CACHE_ITEM_BYTES,
            "cache_origin_bytes": c.get("cache_origin_bytes"),
            "cache_lan_bytes_served": c.get("cache_lan_bytes_served"),
            "cache_hash_mismatches": c.get("cache_hash_mismatches"),
            "commands": self.command_progress(),
        }

    def command_progress(self) -> dict[str, dict[str, Any]]:
        """label -> the latest progress the academy received for that command."""
        view = academy_view(self.listener)
        progress = {}
        for label, command_id in self.commands:
            body = view.progress.get(command_id, (0, {}))[1]
            progress[label] = {
                k: body.get(k, 0) for k in ("targets", "delivered", "done", "failed", "expired")
            }
        return progress

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
            f"  cache     {f['cache_tablets_fetched_ok']}/{CACHE_FETCHERS} tablets got the "
            f"{CACHE_ITEM_BYTES / 1e6:.1f} MB app; {f['cache_origin_bytes'] / 1e6:.1f} MB from the "
            f"origin, {f['cache_lan_bytes_served'] / 1e6:.1f} MB served on the LAN",
        ] + [
            f"  command   {label}: {p['targets']} targets, {p['delivered']} delivered, "
            f"{p['done']} done, {p['failed']} failed, {p['expired']} expired"
            for label, p in f["commands"].items()
        ]

    async def run(self, duration: float | None) -> None:
        period = 1.0 if self.interactive else 5.0
        while True:
            text = "\n".join(self.lines(duration))
            if self.interactive:
                self.out.write("\x1b[H\x1b[2J" + text + "\n")
            else:
                self.out.write(text + "\n")
            self.out.flush()
            await asyncio.sleep(period)


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
    signer = AcademySigner(SCHOOL_ID, key_id="academy-demo")
    cache_show = CacheShow(signer)
    config = demo_config(workdir, school_port, academy_port, signer.config_keys())
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
            summary = await _run_everything(
                args, config, school, academy_port, stop, cache_show=cache_show, signer=signer
            )
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
    *,
    cache_show: CacheShow,
    signer: AcademySigner,
) -> dict[str, Any]:
    gateway = Gateway(config)
    listener = AcademyListener("127.0.0.1", academy_port)
    fleet = Fleet(
        FleetSettings(
            host=school.host, port=school.port, tablets=args.tablets, interval_s=args.interval
        ),
        on_command=SimulatedCommands(),
    )
    view = DemoView(sys.stdout, gateway, fleet, listener, cache_show)
    gateway_task = asyncio.create_task(gateway.run(), name="gateway")
    listener_task = asyncio.create_task(listener.run(), name="academy-listener")
    await asyncio.wait_for(gateway.ready.wait(), 15)
    await asyncio.wait_for(listener.subscribed.wait(), 15)
    fleet_task = asyncio.create_task(fleet.run(), name="fleet")
    await cache_show.origin.start()
    cache_task = asyncio.create_task(cache_show.run(gateway), name="cache-show")
    view_task = asyncio.create_task(view.run(args.duration), name="view")
    commands_task = asyncio.create_task(
        _send_demo_commands(
            gateway,
            view,
            signer=signer,
            academy_port=academy_port,
            tablets=args.tablets,
            app_sha256=cache_show.sha256,
        ),
        name="commands",
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.duration)
    fleet_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await fleet_task
    # Let what the tablets already published finish its way to the academy.
    counters = gateway.counters
    await wait_until(
        lambda: (
            counters.get("state_reports_stored") >= fleet.stats.reports_published
            and view.figures()["state_relayed_upstream"] >= counters.get("state_reports_stored")
        ),
        within_s=10,
    )
    await wait_until(cache_task.done, within_s=30)
    cache_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cache_task
    await cache_show.origin.stop()
    await wait_until(
        lambda: all(
            p["done"] + p["failed"] + p["expired"] >= p["targets"] > 0
            for p in view.command_progress().values()
        ),
        within_s=10,
    )
    commands_task.cancel()
    view_task.cancel()
    gateway.stop()
    await asyncio.wait_for(gateway_task, 15)
    listener_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener_task
    with contextlib.suppress(asyncio.CancelledError):
        await commands_task
    figures = view.figures()
    figures.pop("tablets_connected")
    figures["duration_s"] = round(time.monotonic() - view.started, 1)
    return figures


async def _send_demo_commands(
    gateway: Gateway,
    view: DemoView,
    *,
    signer: AcademySigner,
    academy_port: int,
    tablets: int,
    app_sha256: str,
) -> None:
    """Once every tablet is known, the academy sends the demo's signed commands."""
    counters = gateway.counters
    await wait_until(lambda: counters.get("state_reports_stored") >= tablets, within_s=60)
    async with aiomqtt.Client("127.0.0.1", academy_port, identifier="demo-academy") as academy:
        for label, action, targets, params in demo_commands(app_sha256):
            command_id, envelope = signer.envelope(action, targets=targets, params=params)
            await academy.publish(topics.academy_commands(SCHOOL_ID), envelope, qos=1)
            view.commands.append((label, command_id))
            log.info("academy sent %s (%s)", command_id, label)
