"""The console's pages that show: at a glance, tablets, commands, updates."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from aiohttp import web

from gateway.health.box import collect_box_health
from gateway.relay import outbox
from gateway.school_console.accounts import IT_CONTACT, TEACHER
from gateway.school_console.common import actor_of, services_of
from gateway.school_console.glance import GlanceFacts, glance, worst
from gateway.school_console.services import BoxServices
from gateway.state.summary import is_older
from gateway.web.stack import principal_of, redirect, requires, stack_of
from gateway.web.system_outcomes import OUTCOME_LABELS

PAGE_SIZE = 100
RECENT_COMMANDS = 30
DELIVERIES_SHOWN = 100


async def glance_facts(box: BoxServices, now: float) -> GlanceFacts:
    db = box.db
    row = await db.fetch_one(
        "SELECT count(*), coalesce(sum(online), 0), max(last_seen) FROM shadow"
    )
    known, online, last_report = (int(row[0]), int(row[1]), row[2]) if row else (0, 0, None)
    backlog = await outbox.backlog(db)
    health = collect_box_health(box.config.gateway.state_dir)
    box.sample_links(now)
    return GlanceFacts(
        now=now,
        started_at=box.started_at,
        academy_up=box.academy_link.is_connected,
        academy_since=box.links.since_of("academy", box.started_at),
        school_up=box.school_link.is_connected,
        school_since=box.links.since_of("school", box.started_at),
        backlog_rows=int(backlog.get("rows", 0)),
        backlog_bytes=int(backlog.get("bytes", 0)),
        backlog_budget_bytes=box.outbox_budget_bytes,
        disk_free_bytes=health.disk_free_bytes,
        disk_total_bytes=health.disk_total_bytes,
        temperature_c=health.soc_temperature_c,
        last_summary_acked=box.last_summary_acked(),
        summary_interval_s=box.config.uplink.summary_interval_s,
        last_report_at=last_report,
        tablets_known=known,
        tablets_online=online,
    )


@requires(TEACHER)
async def overview(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    if principal is not None and principal.role != IT_CONTACT:
        return redirect("/classroom")
    box = services_of(request)
    facts = await glance_facts(box, time.time())
    lights = glance(facts)
    return await stack_of(request).render(
        request,
        "overview.html",
        {"lights": lights, "overall": worst(lights), "facts": facts, "page": "overview"},
    )


def out_of_date(state: dict[str, Any], required: dict[str, str]) -> list[str]:
    """Required apps this tablet lacks or has in an older version."""
    apps = state.get("apps", {})
    late = []
    for package, minimum in sorted(required.items()):
        version = apps.get(package)
        if version is None or is_older(str(version), minimum):
            late.append(package)
    return late


@requires(TEACHER)
async def tablets(request: web.Request) -> web.StreamResponse:
    box = services_of(request)
    actor = await actor_of(request)
    rows = await box.db.fetch_all("SELECT DISTINCT group_name FROM shadow ORDER BY group_name")
    known_groups = [r[0] for r in rows]
    allowed = known_groups if actor.may_act_on_any_group else sorted(actor.groups)
    group = request.query.get("group", "")
    if group and group not in allowed:
        return await stack_of(request).error_page(
            request, 403, "Your account does not give access to this page."
        )
    where, params = "", []
    if group:
        where, params = "WHERE group_name = ?", [group]
    elif not actor.may_act_on_any_group:
        marks = ", ".join("?" * len(allowed)) or "NULL"
        where, params = f"WHERE group_name IN ({marks})", list(allowed)
    count_row = await box.db.fetch_one(f"SELECT count(*) FROM shadow {where}", tuple(params))
    total = int(count_row[0]) if count_row else 0
    pages = max(1, math.ceil(total / PAGE_SIZE))
    try:
        page = min(max(1, int(request.query.get("page", "1"))), pages)
    except ValueError:
        page = 1
    found = await box.db.fetch_all(
        "SELECT device_id, group_name, online, last_seen, state FROM shadow "
        f"{where} ORDER BY device_id LIMIT ? OFFSET ?",
        (*params, PAGE_SIZE, (page - 1) * PAGE_SIZE),
    )
    required = dict(box.config.tablets.required_apps)
    listed = []
    for device_id, group_name, online, last_seen, state_json in found:
        state = json.loads(state_json)
        listed.append(
            {
                "device_id": device_id,
                "group": group_name,
                "online": bool(online),
                "last_seen": last_seen,
                "state": state,
                "late": out_of_date(state, required),
                "low_battery": state.get("battery_pct", 100) < box.config.tablets.low_battery_pct,
                "low_storage": state.get("storage_free_mb", 1 << 30)
                < box.config.tablets.low_storage_mb,
            }
        )
    return await stack_of(request).render(
        request,
        "tablets.html",
        {
            "tablets": listed,
            "groups": allowed,
            "group": group,
            "total": total,
            "page_no": page,
            "pages": pages,
            "page": "tablets",
        },
    )


@requires(TEACHER)
async def tablet(request: web.Request) -> web.StreamResponse:
    box = services_of(request)
    actor = await actor_of(request)
    device_id = request.match_info["device_id"]
    row = await box.db.fetch_one(
        "SELECT device_id, group_name, online, first_seen, last_seen, state FROM shadow "
        "WHERE device_id = ?",
        (device_id,),
    )
    if row is None:
        raise web.HTTPNotFound()
    if not actor.may_act_on_any_group and row[1] not in actor.groups:
        return await stack_of(request).error_page(
            request, 403, "Your account does not give access to this page."
        )
    state = json.loads(row[5])
    deliveries = await box.db.fetch_all(
        "SELECT c.command_id, c.action, c.accepted_at, d.state, d.detail, d.updated "
        "FROM deliveries d JOIN commands c ON c.seq = d.command_seq "
        "WHERE d.device_id = ? ORDER BY c.seq DESC LIMIT 30",
        (device_id,),
    )
    return await stack_of(request).render(
        request,
        "tablet.html",
        {
            "t": {
                "device_id": row[0],
                "group": row[1],
                "online": bool(row[2]),
                "first_seen": row[3],
                "last_seen": row[4],
                "state": state,
                "late": out_of_date(state, dict(box.config.tablets.required_apps)),
            },
            "deliveries": deliveries,
            "page": "tablets",
        },
    )


def issuer_of(key_id: str, payload: bytes) -> str:
    """Who sent a command: the academy (its key id) or, for a local action, the account."""
    if key_id != "local":
        return ""
    try:
        issued_by = json.loads(payload).get("issued_by", {})
        return str(issued_by.get("account", ""))
    except (ValueError, AttributeError):
        return ""


async def command_rows(
    box: BoxServices, where: str = "", params: tuple[Any, ...] = ()
) -> list[dict[str, Any]]:
    rows = await box.db.fetch_all(
        "SELECT c.seq, c.command_id, c.action, c.key_id, c.targets, c.accepted_at, c.not_after, "
        "c.payload, "
        "sum(d.state IS NOT NULL), sum(d.state IN ('received', 'done', 'failed')), "
        "sum(d.state = 'done'), sum(d.state = 'failed'), sum(d.state = 'expired'), "
        "sum(d.state IN ('pending', 'sent')) "
        f"FROM commands c LEFT JOIN deliveries d ON d.command_seq = c.seq {where} "
        "GROUP BY c.seq ORDER BY c.seq DESC LIMIT ?",
        (*params, RECENT_COMMANDS),
    )
    result = []
    for r in rows:
        targets = json.loads(r[4])
        result.append(
            {
                "command_id": r[1],
                "action": r[2],
                "key_id": r[3],
                "by": issuer_of(r[3], bytes(r[7])),
                "targets": targets,
                "accepted_at": r[5],
                "not_after": r[6],
                "count": int(r[8] or 0),
                "delivered": int(r[9] or 0),
                "done": int(r[10] or 0),
                "failed": int(r[11] or 0),
                "expired": int(r[12] or 0),
                "waiting": int(r[13] or 0),
            }
        )
    return result


@requires(IT_CONTACT)
async def commands(request: web.Request) -> web.StreamResponse:
    box = services_of(request)
    return await stack_of(request).render(
        request, "commands.html", {"commands": await command_rows(box), "page": "commands"}
    )


@requires(TEACHER)
async def command(request: web.Request) -> web.StreamResponse:
    box = services_of(request)
    actor = await actor_of(request)
    found = await command_rows(box, "WHERE c.command_id = ?", (request.match_info["command_id"],))
    if not found:
        raise web.HTTPNotFound()
    cmd = found[0]
    if not actor.may_act_on_any_group and cmd["targets"].get("group") not in actor.groups:
        return await stack_of(request).error_page(
            request, 403, "Your account does not give access to this page."
        )
    deliveries = await box.db.fetch_all(
        "SELECT d.device_id, d.state, d.detail, d.updated, coalesce(s.online, 0) "
        "FROM deliveries d JOIN commands c ON c.seq = d.command_seq "
        "LEFT JOIN shadow s ON s.device_id = d.device_id "
        "WHERE c.command_id = ? ORDER BY CASE d.state WHEN 'failed' THEN 0 WHEN 'expired' THEN 1 "
        "WHEN 'pending' THEN 2 WHEN 'sent' THEN 3 WHEN 'received' THEN 4 ELSE 5 END, d.device_id "
        "LIMIT ?",
        (cmd["command_id"], DELIVERIES_SHOWN),
    )
    return await stack_of(request).render(
        request,
        "command.html",
        {"cmd": cmd, "deliveries": deliveries, "page": "commands", "shown": DELIVERIES_SHOWN},
    )


@requires(IT_CONTACT)
async def updates(request: web.Request) -> web.StreamResponse:
    box = services_of(request)
    stats = await box.cache.stats() if box.cache is not None else None
    downloads = {d["sha256"]: d for d in stats["downloads"]} if stats else {}
    return await stack_of(request).render(
        request,
        "updates.html",
        {
            "stats": stats,
            "downloads": downloads,
            "windows": box.config.cache.offpeak_windows,
            "job": box.import_job,
            "import_roots": box.config.console.import_roots,
            "system": box.system() if box.system is not None else None,
            "outcome_labels": OUTCOME_LABELS,
            "page": "updates",
        },
    )
