"""``python -m gateway sim``: run a fleet of simulated tablets until Ctrl-C or --duration."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from gateway.sim.fleet import Fleet, FleetSettings

log = logging.getLogger(__name__)


async def run_sim(args: argparse.Namespace) -> int:
    fleet = Fleet(
        FleetSettings(
            host=args.host,
            port=args.port,
            tablets=args.tablets,
            interval_s=args.interval,
            reports_per_tablet=args.reports,
            prefix=args.prefix,
            seed=args.seed,
        )
    )
    task = asyncio.create_task(fleet.run(), name="fleet")
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), args.duration)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    s = fleet.stats
    log.info(
        "sim done: %d tablets, %d reports (%d bytes), %d commands received, %d connect failures",
        s.tablets,
        s.reports_published,
        s.report_bytes_published,
        s.commands_received,
        s.connect_failures,
    )
    return 0
