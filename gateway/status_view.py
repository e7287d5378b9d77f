"""``python -m gateway status``: ask the running gateway, or read its store."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiohttp

from gateway.commands.queue import status_view as command_status
from gateway.config import load_config
from gateway.errors import GatewayError
from gateway.security.admin_token import admin_api_url, admin_headers
from gateway.state.shadow import tablet_counts
from gateway.store.database import DATABASE_FILE, Database
from gateway.sysupdate.status import read_system_block, render_system


async def fetch_status(config_path: Path) -> dict[str, Any]:
    """The live status from the admin API; the stored view if the gateway is down."""
    config = load_config(config_path)
    url = admin_api_url(config, "/api/status")
    try:
        headers = admin_headers(config.gateway.state_dir)
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(url, headers=headers) as response,
        ):
            if response.status == 200:
                live: dict[str, Any] = await response.json()
                live["running"] = True
                return live
            reason = f"admin API answered {response.status}"
    except (aiohttp.ClientError, TimeoutError, GatewayError) as exc:
        reason = f"gateway not reachable at {url}: {exc}"
    stored = await stored_status(config.gateway.state_dir, reason)
    stored["system"] = read_system_block(config)
    return stored


async def stored_status(state_dir: Path, reason: str) -> dict[str, Any]:
    path = state_dir / DATABASE_FILE
    result: dict[str, Any] = {"running": False, "reason": reason}
    if not path.exists():
        result["store"] = f"no database at {path}"
        return result
    try:
        db = await Database.open(path)
        try:
            known, online = await tablet_counts(db)
            result["commands"] = await command_status(db)
        finally:
            await db.close()
    except (GatewayError, sqlite3.Error) as exc:
        # e.g. the gateway is creating its store at this very moment
        result["store"] = f"cannot read {path} now: {exc}"
        return result
    result["tablets"] = {"known": known, "online": online}
    return result


def _command_lines(commands: dict[str, Any]) -> list[str]:
    lines = [
        f"commands: {commands.get('on_record', 0)} on record, "
        f"{commands.get('unfinished', 0)} waiting for tablets"
    ]
    for c in commands.get("recent", []):
        lines.append(
            f"  {c['command_id']} {c['action']}: {c['targets']} targets, "
            f"{c['delivered']} delivered, {c['done']} done, {c['failed']} failed, "
            f"{c['expired']} expired" + (" (complete)" if c["complete"] else "")
        )
    return lines


def duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``3 h 05 min``, ``2 d 4 h``: how long, for a person."""
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def size(nbytes: float) -> str:
    """``512 B``, ``12.3 kB``, ``4.5 MB``: decimal units, as the config keys count."""
    if nbytes < 1000:
        return f"{nbytes:.0f} B"
    if nbytes < 1_000_000:
        return f"{nbytes / 1000:.1f} kB"
    return f"{nbytes / 1_000_000:.1f} MB"


def _academy_line(status: dict[str, Any]) -> str:
    if status["brokers"]["academy"]:
        return "connected"
    uplink = status.get("uplink", {})
    why = f": {uplink['problem']}" if uplink.get("problem") else ""
    if uplink.get("down_for_s") is None:
        return f"DOWN (queueing){why}"
    return f"DOWN for {duration(uplink['down_for_s'])} (queueing){why}"


def _outbox_line(outbox: dict[str, Any]) -> str:
    line = (
        f"outbox: {outbox.get('rows', 0)} messages ({size(outbox.get('bytes', 0))}) "
        "waiting for the academy"
    )
    if outbox.get("rows"):
        line += f", oldest {duration(outbox.get('oldest_age_s', 0))}"
    if "budget_bytes" in outbox:
        line += (
            f"; budget {size(outbox['budget_bytes'])}, "
            f"highest so far {size(outbox.get('peak_bytes', 0))}"
        )
    return line


def render_status(status: dict[str, Any]) -> str:
    """A short human-readable view of a status dict."""
    lines = []
    running = bool(status.get("running"))
    if running:
        lines.append(
            f"gateway {status['gateway_id']} (school {status['school_id']}), "
            f"version {status['version']}, up {duration(status['uptime_s'])}"
        )
        brokers = status["brokers"]
        lines.append(
            "brokers: school "
            + ("connected" if brokers["school"] else "DOWN")
            + ", academy "
            + _academy_line(status)
        )
    else:
        lines.append(f"gateway NOT RUNNING ({status['reason']})")
        if isinstance(status.get("store"), str):
            lines.append(f"store: {status['store']}")
    if "tablets" in status:
        t = status["tablets"]
        if running:
            lines.append(f"tablets: {t['known']} known, {t['online']} online")
        else:
            lines.append(
                f"tablets: {t['known']} known (who is online is unknown while the gateway "
                f"is stopped; {t['online']} were online when it last saw them)"
            )
    for f in status.get("flooding_tablets", []):
        lines.append(
            f"  FLOODING: {f['device_id']} over its message budget, {f['dropped']} messages "
            f"dropped (last {f['last_drop_age_s']:.0f} s ago)"
        )
    if "commands" in status:
        lines.extend(_command_lines(status["commands"]))
    if "outbox" in status:
        lines.append(_outbox_line(status["outbox"]))
    if status.get("system"):
        lines.extend(render_system(status["system"]))
    if status.get("cache"):
        lines.extend(render_cache(status["cache"]))
    counters = status.get("counters", {})
    if counters:
        lines.append("counters:")
        lines.extend(f"  {name} = {value}" for name, value in counters.items())
    return "\n".join(lines)


def render_cache(cache: dict[str, Any]) -> list[str]:
    """The update cache: totals, then one line per item."""
    mb = 1024 * 1024
    hit = cache["hit_ratio"]
    lines = [
        f"cache: {cache['items_complete']}/{cache['items_known']} items cached "
        f"({cache['items_pinned']} pinned), {cache['bytes_used'] / mb:.0f} of "
        f"{cache['quota_bytes'] / mb:.0f} MB used; served {cache['lan_bytes_served'] / mb:.1f} MB "
        f"on the LAN, {cache['origin_bytes'] / mb:.1f} MB from the origin, "
        f"hit ratio {'-' if hit is None else f'{hit:.0%}'}, "
        f"uplink saved {cache['uplink_bytes_saved'] / mb:.1f} MB, "
        f"hash mismatches {cache['hash_mismatches']}"
    ]
    for d in cache["downloads"]:
        lines.append(f"  downloading {d['sha256'][:12]} {d['received']}/{d['size']} bytes")
    for item in cache["items"]:
        state = "cached" if item["complete"] else "missing"
        pin = "pinned" if item["pinned"] else "unpinned"
        lines.append(
            f"  {item['sha256'][:12]} {item['name'] or '-'} {item['version']} "
            f"{item['size'] / mb:.1f} MB {state} {pin}, {item['tablets_holding']} tablets have it"
        )
    return lines
