"""Start the demo's parts, run them, stop them in order, summarise."""

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.broker.mosquitto_config import render_mosquitto_config
from gateway.config import Config, config_from_mapping
from gateway.demo.academy_scene import AcademyScene
from gateway.demo.scenes import CacheScene, CommandScene, cut_uplink
from gateway.demo.view import DemoView
from gateway.lab.academy import AcademyListener
from gateway.lab.commands import AcademySigner
from gateway.lab.mosquitto import STAND_IN_ACADEMY_CONFIG, MosquittoProcess, free_port
from gateway.lab.proxy import LinkProxy
from gateway.lab.waiting import wait_until
from gateway.sim.commands import SimulatedCommands
from gateway.sim.fleet import Fleet, FleetSettings

log = logging.getLogger(__name__)

SCHOOL_ID = "demo-school"
GATEWAY_ID = "gw-demo"


def demo_config(
    workdir: Path, school_port: int, academy_port: int, academy_keys: dict[str, str]
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
            "commands": {"academy_keys": academy_keys},
        }
    )


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
    academy = AcademyScene(workdir / "academy", academy_port, tablets=min(args.tablets, 10))
    keys = {**signer.config_keys(), **academy.prepare_key()}
    config = demo_config(workdir, school_port, academy_port, keys)
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
            try:
                await academy.start(keys)
                print(
                    f"demo: academy console {academy.url} "
                    f"(sign in as {academy.login[0]} / {academy.login[1]})",
                    flush=True,
                )
                summary = await _run_everything(
                    args, config, school, academy_port, stop, signer=signer, academy=academy
                )
            finally:
                await academy.stop()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("demo summary: " + json.dumps(summary, sort_keys=True), flush=True)
    return 0


async def _settle(what: str, predicate: Callable[[], bool], within_s: float) -> None:
    """Wait for what is under way; the summary then says what did not finish."""
    try:
        await wait_until(predicate, within_s, what=what)
    except TimeoutError:
        log.warning("not %s within %.0f s; the summary shows where it stands", what, within_s)


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait for them, a bounded time each: the demo always ends."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            async with asyncio.timeout(10):
                await task
        except asyncio.CancelledError:
            pass
        except TimeoutError:
            log.warning("demo: task %s did not stop within 10 s; leaving it", task.get_name())


async def _run_everything(
    args: argparse.Namespace,
    config: Config,
    school: MosquittoProcess,
    academy_port: int,
    stop: asyncio.Event,
    *,
    signer: AcademySigner,
    academy: AcademyScene,
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
        ),
        on_command=SimulatedCommands(),
    )
    cache = CacheScene(signer)
    commands = CommandScene(signer, SCHOOL_ID, cache.sha256)
    view = DemoView(
        sys.stdout,
        gateway,
        fleet,
        listener,
        proxy=proxy,
        cache=cache,
        commands=commands,
        academy=academy,
    )
    gateway_task = asyncio.create_task(gateway.run(), name="gateway")
    listener_task = asyncio.create_task(listener.run(), name="academy-listener")
    await asyncio.wait_for(gateway.ready.wait(), 15)
    await asyncio.wait_for(listener.subscribed.wait(), 15)
    await cache.origin.start()
    third = (args.duration or 60.0) / 3
    scenes = [
        asyncio.create_task(fleet.run(), name="fleet"),
        asyncio.create_task(cache.run(gateway), name="cache-scene"),
        asyncio.create_task(commands.run(gateway, academy_port, args.tablets), name="commands"),
        asyncio.create_task(
            cut_uplink(proxy, args.cut_at or third, args.cut_for or third), name="uplink-cut"
        ),
    ]
    view_task = asyncio.create_task(view.run(args.duration), name="view")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.duration)
    interrupted = stop.is_set()
    fleet_task, cache_task, _, cut_task = scenes
    await _cancel(fleet_task, cut_task)
    await proxy.restore()
    if not interrupted:
        # A timed run lets what is under way finish, so the summary tells the whole story
        # (the academy link may still be in its reconnect backoff after the cut).
        counters = gateway.counters
        await _settle(
            "every report stored",
            lambda: counters.get("state_reports_stored") >= fleet.stats.reports_published,
            10,
        )
        await _settle("the cache scene finished", cache_task.done, 30)
        await _settle(
            "every command complete",
            lambda: all(
                p["done"] + p["failed"] + p["expired"] >= p["targets"] > 0
                for p in view.command_progress().values()
            ),
            10,
        )
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            await view.refresh()
            if view.outbox.get("rows", 0) == 0:
                break
            await asyncio.sleep(0.2)
        # Every school's gateway has reached the academy's store.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await academy.refresh()
            if academy.figures().get("academy_schools", 0) >= 1 + len(academy.schools):
                break
            await asyncio.sleep(0.2)
    await _cancel(*scenes, view_task)
    await cache.origin.stop()
    await view.refresh()
    gateway.stop()
    await asyncio.wait_for(gateway_task, 15)
    await _cancel(listener_task)
    await proxy.stop()
    await academy.refresh()
    figures = view.figures()
    figures.pop("tablets_connected")
    figures["duration_s"] = round(time.monotonic() - view.started, 1)
    figures["interrupted"] = interrupted
    return figures
