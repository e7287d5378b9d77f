"""What the console shows, read from the academy store (no HTTP here).

Each function takes an asyncpg connection and returns plain values (dicts,
lists), the same for an HTML page and its JSON twin. The overview reads the
per-gateway figures the ingest keeps from each school's latest summary
(``gateways``), never the 300,000 tablet rows, so it stays fast with
thousands of schools.

"Needs attention first" (the overview's default order): schools whose
gateway is offline or silent, then by the age of the oldest message waiting
on the box (backlog), then by tablets with low battery, storage low and
apps out of date.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.academy.store.database import Conn
from gateway.state.summary import is_older

SORTS = {
    "attention": "offline DESC, oldest_backlog_s DESC, low_battery DESC, storage_low DESC, "
    "apps_out_of_date DESC, school_id",
    "school": "school_id",
    "last_seen": "last_seen DESC NULLS LAST, school_id",
    "tablets": "tablets_known DESC, school_id",
    "online": "tablets_online DESC, school_id",
    "low_battery": "low_battery DESC, school_id",
    "storage_low": "storage_low DESC, school_id",
    "apps_out_of_date": "apps_out_of_date DESC, school_id",
    "backlog": "oldest_backlog_s DESC, school_id",
    "cache_saved": "cache_bytes_saved DESC, school_id",
}
FILTERS = {
    "all": "TRUE",
    "offline": "offline",
    "online": "NOT offline",
    "attention": "(offline OR low_battery > 0 OR storage_low > 0 OR apps_out_of_date > 0 "
    "OR oldest_backlog_s > 3600)",
}
BACKLOG_ATTENTION_S = 3600

OVERVIEW = """
WITH per_school AS (
    SELECT s.school_id, s.name,
        count(g.gateway_id) AS gateways,
        NOT coalesce(bool_or(g.online AND g.last_seen > now() - make_interval(secs => $1)), false)
            AS offline,
        max(g.last_seen) AS last_seen,
        coalesce(sum(g.tablets_known), 0)::bigint AS tablets_known,
        coalesce(sum(g.tablets_online), 0)::bigint AS tablets_online,
        coalesce(sum(g.low_battery), 0)::bigint AS low_battery,
        coalesce(sum(g.storage_low), 0)::bigint AS storage_low,
        coalesce(sum(g.apps_out_of_date), 0)::bigint AS apps_out_of_date,
        coalesce(max(g.backlog_oldest_s), 0) AS oldest_backlog_s,
        coalesce(sum(g.backlog_rows), 0)::bigint AS backlog_rows,
        coalesce(sum(g.cache_bytes_saved), 0)::bigint AS cache_bytes_saved
    FROM schools s LEFT JOIN gateways g USING (school_id)
    GROUP BY s.school_id
)
SELECT *, count(*) OVER () AS matching FROM per_school
WHERE {where} AND ($2 = '' OR school_id ILIKE '%' || $2 || '%' OR name ILIKE '%' || $2 || '%')
ORDER BY {order}
LIMIT $3 OFFSET $4
"""

TOTALS = """
SELECT count(DISTINCT s.school_id) AS schools,
    count(DISTINCT s.school_id) FILTER (
        WHERE g.online AND g.last_seen > now() - make_interval(secs => $1)) AS online_schools,
    coalesce(sum(g.tablets_known), 0)::bigint AS tablets_known,
    coalesce(sum(g.tablets_online), 0)::bigint AS tablets_online,
    coalesce(sum(g.low_battery), 0)::bigint AS low_battery
FROM schools s LEFT JOIN gateways g USING (school_id)
"""


@dataclass(frozen=True)
class OverviewQuery:
    """What the person asked for: order, filter, search text, page."""

    sort: str = "attention"
    show: str = "all"
    search: str = ""
    page: int = 1
    per_page: int = 100

    @classmethod
    def from_params(cls, params: Any) -> OverviewQuery:
        """From query-string values; anything unknown falls back to the default."""
        sort = params.get("sort", "attention")
        show = params.get("show", "all")
        try:
            page = max(1, min(10_000, int(params.get("page", "1"))))
        except ValueError:
            page = 1
        return cls(
            sort=sort if sort in SORTS else "attention",
            show=show if show in FILTERS else "all",
            search=str(params.get("q", ""))[:64],
            page=page,
        )


def _plain(record: asyncpg.Record) -> dict[str, Any]:
    row = dict(record)
    for key, value in row.items():
        if hasattr(value, "isoformat"):
            row[key] = value.isoformat()
    return row


async def overview(
    conn: Conn, query: OverviewQuery | None = None, *, silent_s: float = 900.0
) -> dict[str, Any]:
    """Every school's figures (one page of them), and the totals."""
    q = query or OverviewQuery()
    sql = OVERVIEW.format(where=FILTERS[q.show], order=SORTS[q.sort])
    search = q.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = await conn.fetch(sql, silent_s, search, q.per_page, (q.page - 1) * q.per_page)
    totals = await conn.fetchrow(TOTALS, silent_s)
    schools = []
    for record in rows:
        row = _plain(record)
        row.pop("matching", None)
        row["attention"] = needs_attention(row)
        schools.append(row)
    return {
        "query": {"sort": q.sort, "show": q.show, "q": q.search, "page": q.page},
        "matching": rows[0]["matching"] if rows else 0,
        "per_page": q.per_page,
        "totals": dict(totals) if totals else {},
        "schools": schools,
    }


def needs_attention(row: dict[str, Any]) -> list[str]:
    """Why a school needs attention, most urgent first (codes the templates translate)."""
    reasons = []
    if row["offline"]:
        reasons.append("offline")
    if row["oldest_backlog_s"] > BACKLOG_ATTENTION_S:
        reasons.append("backlog")
    for key in ("low_battery", "storage_low", "apps_out_of_date"):
        if row[key]:
            reasons.append(key)
    return reasons


async def school(conn: Conn, school_id: str, *, silent_s: float = 900.0) -> dict[str, Any] | None:
    """One school: its gateways and box health, uplink history, tablets, commands."""
    found = await conn.fetchrow("SELECT * FROM schools WHERE school_id = $1", school_id)
    if found is None:
        return None
    gateways = []
    required: dict[str, str] = {}
    for record in await conn.fetch(
        "SELECT *, NOT (online AND last_seen > now() - make_interval(secs => $2)) AS offline "
        "FROM gateways WHERE school_id = $1 ORDER BY gateway_id",
        school_id,
        silent_s,
    ):
        row = _plain(record)
        summary = json.loads(row.pop("summary") or "{}")
        row["box"] = summary.get("box", {})
        row["cache"] = {k: v for k, v in summary.get("cache", {}).items() if k != "items"}
        system = summary.get("system")
        row["system"] = system if isinstance(system, dict) else {}
        apps = summary.get("apps", {})
        if isinstance(apps, dict) and isinstance(apps.get("required"), dict):
            required.update(apps["required"])
        gateways.append(row)
    history = [
        _plain(r)
        for r in await conn.fetch(
            "SELECT gateway_id, seq, made_at, received_at,"
            " (body->'tablets'->>'online')::int AS tablets_online,"
            " (body->'backlog'->>'rows')::bigint AS backlog_rows,"
            " (body->'backlog'->>'oldest_age_s')::float8 AS backlog_oldest_s"
            " FROM summaries WHERE school_id = $1 ORDER BY received_at DESC, seq DESC LIMIT 48",
            school_id,
        )
    ]
    tablets = []
    for record in await conn.fetch(
        "SELECT device_id, gateway_id, received_at, reported_at, battery_pct, charging,"
        " storage_free_mb, storage_total_mb, os_version, group_name, locked, report->'apps' AS apps"
        " FROM tablets WHERE school_id = $1 ORDER BY device_id",
        school_id,
    ):
        row = _plain(record)
        apps = json.loads(row.pop("apps") or "{}")
        row["out_of_date"] = sorted(
            package
            for package, minimum in required.items()
            if not isinstance(apps.get(package), str) or is_older(apps[package], minimum)
        )
        tablets.append(row)
    commands = await commands_list(conn, school_id=school_id)
    return {
        "school": _plain(found),
        "gateways": gateways,
        "required_apps": required,
        "history": history,
        "tablets": tablets,
        "groups": sorted({t["group_name"] for t in tablets if t["group_name"]}),
        "commands": commands,
    }


async def commands_list(
    conn: Conn, *, school_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Recent commands with their totals (for one school when ``school_id`` is given)."""
    rows = await conn.fetch(
        "SELECT c.command_id, c.action, c.targets, c.schools, c.sent_by, c.sent_at,"
        " c.not_after, sum(p.targets)::bigint AS targets_total,"
        " sum(p.delivered)::bigint AS delivered,"
        " sum(p.done)::bigint AS done, sum(p.failed)::bigint AS failed,"
        " sum(p.expired)::bigint AS expired, bool_and(p.complete) AS complete"
        " FROM commands c JOIN command_schools p USING (command_id)"
        " WHERE $1::text IS NULL OR p.school_id = $1"
        " GROUP BY c.command_id ORDER BY c.sent_at DESC LIMIT $2",
        school_id,
        limit,
    )
    result = []
    for record in rows:
        row = _plain(record)
        row["targets"] = json.loads(row["targets"])
        row["schools"] = list(row["schools"])
        result.append(row)
    return result


async def command_detail(conn: Conn, command_id: str) -> dict[str, Any] | None:
    """A command: per school progress and total, each tablet's result, rejections."""
    found = await conn.fetchrow("SELECT * FROM commands WHERE command_id = $1", command_id)
    if found is None:
        return None
    command = _plain(found)
    command["targets"] = json.loads(command["targets"])
    command["params"] = json.loads(command["params"])
    command["schools"] = list(command["schools"])
    schools = [
        _plain(r)
        for r in await conn.fetch(
            "SELECT school_id, published_at, publish_error, progress_seq >= 0 AS reported, targets,"
            " sent, delivered, done, failed, expired, waiting, complete, progress_at"
            " FROM command_schools WHERE command_id = $1 ORDER BY school_id",
            command_id,
        )
    ]
    total = {
        key: sum(int(s[key]) for s in schools)
        for key in ("targets", "sent", "delivered", "done", "failed", "expired", "waiting")
    }
    total["complete"] = bool(schools) and all(s["complete"] for s in schools)
    results = [
        _plain(r)
        for r in await conn.fetch(
            "SELECT school_id, device_id, status, detail, at FROM command_results"
            " WHERE command_id = $1 ORDER BY school_id, device_id",
            command_id,
        )
    ]
    rejections = [
        _plain(r)
        for r in await conn.fetch(
            "SELECT school_id, gateway_id, reason, detail, at FROM rejections"
            " WHERE command_id = $1 ORDER BY school_id, id",
            command_id,
        )
    ]
    return {
        "command": command,
        "schools": schools,
        "total": total,
        "results": results,
        "rejections": rejections,
    }
