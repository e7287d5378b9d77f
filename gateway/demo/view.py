"""The demo's live view: a small panel on a terminal, a line every few seconds otherwise."""

from __future__ import annotations

import asyncio
import time
from typing import Any, TextIO

from gateway.app import Gateway
from gateway.demo.academy_scene import AcademyScene
from gateway.demo.scenes import CACHE_FETCHERS, CACHE_ITEM_BYTES, CacheScene, CommandScene
from gateway.lab.academy import AcademyListener
from gateway.lab.commands import academy_view
from gateway.lab.proxy import LinkProxy
from gateway.relay.wire import decode_payload
from gateway.sim.fleet import Fleet

PROGRESS_KEYS = ("targets", "delivered", "done", "failed", "expired")


class DemoView:
    """What flows, read from the gateway, the fleet and the academy listener."""

    def __init__(
        self,
        out: TextIO,
        gateway: Gateway,
        fleet: Fleet,
        listener: AcademyListener,
        *,
        proxy: LinkProxy,
        cache: CacheScene,
        commands: CommandScene,
        academy: AcademyScene | None = None,
    ) -> None:
        self.out = out
        self.gateway = gateway
        self.fleet = fleet
        self.listener = listener
        self.proxy = proxy
        self.cache = cache
        self.commands = commands
        self.academy = academy
        self.outbox: dict[str, Any] = {}
        self.outbox_peak_rows = 0
        self.started = time.monotonic()
        self.interactive = out.isatty()

    def command_progress(self) -> dict[str, dict[str, Any]]:
        """label -> the latest progress the academy received for that command."""
        view = academy_view(self.listener)
        progress = {}
        for label, command_id in self.commands.sent:
            body = view.progress.get(command_id, (0, {}))[1]
            progress[label] = {k: body.get(k, 0) for k in PROGRESS_KEYS}
        return progress

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
            "uplink_cuts": self.proxy.cuts,
            "cache_tablets_fetched_ok": self.cache.fetched_ok,
            "cache_item_bytes": CACHE_ITEM_BYTES,
            "cache_origin_bytes": c.get("cache_origin_bytes"),
            "cache_lan_bytes_served": c.get("cache_lan_bytes_served"),
            "cache_hash_mismatches": c.get("cache_hash_mismatches"),
            "commands": self.command_progress(),
            **(self.academy.figures() if self.academy is not None else {}),
        }

    def lines(self, duration: float | None) -> list[str]:
        f = self.figures()
        g = self.gateway
        elapsed = time.monotonic() - self.started
        limit = f" / {duration:.0f} s" if duration else " (Ctrl-C to stop)"
        school = "connected" if g.school_link.is_connected else "DOWN"
        academy = "connected" if g.academy_link.is_connected else "DOWN"
        c = g.config.gateway
        lines = [
            f"School edge gateway demo: school {c.school_id}, gateway {c.gateway_id}, "
            f"{elapsed:.0f} s{limit}",
            f"  brokers   school {school}, academy {academy}",
            f"  tablets   {f['tablets']} simulated, {f['tablets_connected']} connected",
            f"  state     published {f['state_reports_published']}, "
            f"received {f['state_reports_received']}, stored {f['state_reports_stored']}, "
            f"rejected {f['state_reports_rejected']}",
            f"  uplink    {'up' if self.proxy.is_up else 'CUT'}; outbox "
            f"{self.outbox.get('rows', 0)} rows, {self.outbox.get('bytes', 0) / 1000:.1f} kB, "
            f"oldest {self.outbox.get('oldest_age_s', 0):.0f} s "
            f"(peak {f['outbox_peak_rows']} rows)",
            f"  academy   {f['state_relayed_upstream']} tablet states relayed, "
            f"{f['academy_messages']} messages / {f['academy_bytes'] / 1000:.1f} kB in all",
            f"  cache     {f['cache_tablets_fetched_ok']}/{CACHE_FETCHERS} tablets got the "
            f"{CACHE_ITEM_BYTES / 1e6:.1f} MB app; {f['cache_origin_bytes'] / 1e6:.1f} MB from the "
            f"origin, {f['cache_lan_bytes_served'] / 1e6:.1f} MB served on the LAN",
        ] + [
            f"  command   {label}: {p['targets']} targets, {p['delivered']} delivered, "
            f"{p['done']} done, {p['failed']} failed, {p['expired']} expired"
            for label, p in f["commands"].items()
        ]
        if self.academy is not None:
            lines += self.academy.lines()
        return lines

    async def refresh(self) -> None:
        self.outbox = (await self.gateway.status()).get("outbox", {})
        if self.academy is not None:
            await self.academy.refresh()
        self.outbox_peak_rows = max(self.outbox_peak_rows, self.outbox.get("rows", 0))

    async def run(self, duration: float | None) -> None:
        period = 1.0 if self.interactive else 5.0
        while True:
            await self.refresh()
            text = "\n".join(self.lines(duration))
            if self.interactive:
                self.out.write("\x1b[H\x1b[2J" + text + "\n")
            else:
                self.out.write(text + "\n")
            self.out.flush()
            await asyncio.sleep(period)
