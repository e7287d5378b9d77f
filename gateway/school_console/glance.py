"""The at-a-glance line: six lights a non-developer understands (no I/O).

Each light is green, amber or red (grey: nothing to judge yet), with one
sentence saying what is seen and, when it is not green, the one thing to do
(the same advice as docs/operations.md, "What to do when..."). Sentences are
message ids (translated when shown); their parameters are raw numbers whose
names say how to show them: ``*_age`` seconds ago, ``*_bytes`` a size,
``*_at`` a time of day, anything else a count or a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.web.i18n import N_

GREEN, AMBER, RED, GREY = "green", "amber", "red", "grey"
_ORDER = {GREY: 0, GREEN: 1, AMBER: 2, RED: 3}

DAY = 86_400.0
TABLETS_QUIET_AMBER_S = 15 * 60.0
DISK_AMBER_FREE = 0.15
DISK_RED_FREE = 0.05
HOT_AMBER_C = 70.0
HOT_RED_C = 80.0
BACKLOG_RED_SHARE = 0.8


@dataclass(frozen=True)
class GlanceFacts:
    """What the gateway knows right now (gathered by the console's view)."""

    now: float
    started_at: float
    academy_up: bool
    academy_since: float  # when the academy link last went up or down (as seen)
    school_up: bool
    school_since: float
    backlog_rows: int
    backlog_bytes: int
    backlog_budget_bytes: int
    disk_free_bytes: int
    disk_total_bytes: int
    temperature_c: float | None
    last_summary_acked: float | None  # when the academy broker last acknowledged a summary
    summary_interval_s: float
    last_report_at: float | None  # the newest tablet report in the shadow
    tablets_known: int
    tablets_online: int


@dataclass(frozen=True)
class Light:
    key: str
    label: str  # msgid
    level: str
    summary: str  # msgid with %(name)s parameters
    params: Mapping[str, float | int] = field(default_factory=dict)
    advice: str | None = None  # msgid: the one thing to do when not green


def worst(lights: list[Light]) -> str:
    return max((light.level for light in lights), key=_ORDER.__getitem__, default=GREY)


def uplink(f: GlanceFacts) -> Light:
    label = N_("Uplink to the academy")
    if f.academy_up:
        return Light("uplink", label, GREEN, N_("Up"))
    params = {
        "since_at": f.academy_since,
        "since_age": f.now - f.academy_since,
        "rows": f.backlog_rows,
        "waiting_bytes": f.backlog_bytes,
    }
    summary = N_(
        "Down since %(since_at)s (%(since_age)s); %(rows)s messages waiting (%(waiting_bytes)s)"
    )
    near_budget = f.backlog_bytes >= BACKLOG_RED_SHARE * max(1, f.backlog_budget_bytes)
    if near_budget:
        return Light(
            "uplink",
            label,
            RED,
            summary,
            params,
            N_(
                "The waiting messages near their budget: the oldest tablet states will be "
                "dropped first (never command results). Have the school's internet "
                "connection checked."
            ),
        )
    level = RED if f.now - f.academy_since > DAY else AMBER
    return Light(
        "uplink",
        label,
        level,
        summary,
        params,
        N_(
            "Nothing is lost: messages wait on the box and leave when the link returns. "
            "If it lasts, have the school's internet connection checked."
        ),
    )


def school_broker(f: GlanceFacts) -> Light:
    label = N_("School broker")
    if f.school_up:
        return Light("broker", label, GREEN, N_("Tablets can connect"))
    return Light(
        "broker",
        label,
        RED,
        N_("Down since %(since_at)s: tablets can neither report nor receive commands"),
        {"since_at": f.school_since},
        N_("Restart the box (or run: systemctl restart mosquitto)."),
    )


def disk(f: GlanceFacts) -> Light:
    label = N_("Disk")
    if f.disk_total_bytes <= 0:
        return Light("disk", label, GREY, N_("Not measured"))
    share = f.disk_free_bytes / f.disk_total_bytes
    params = {"free_bytes": f.disk_free_bytes, "percent": round(100 * share)}
    summary = N_("%(free_bytes)s free (%(percent)s %%)")
    if share >= DISK_AMBER_FREE:
        return Light("disk", label, GREEN, summary, params)
    return Light(
        "disk",
        label,
        RED if share < DISK_RED_FREE else AMBER,
        summary,
        params,
        N_(
            "Lower the cache quota (cache.quota_bytes) or remove items from the manifest; "
            "pinned items are never evicted."
        ),
    )


def temperature(f: GlanceFacts) -> Light:
    label = N_("Temperature")
    if f.temperature_c is None:
        return Light("temperature", label, GREY, N_("Not measured on this box"))
    params = {"degrees": round(f.temperature_c)}
    summary = N_("%(degrees)s °C")
    if f.temperature_c < HOT_AMBER_C:
        return Light("temperature", label, GREEN, summary, params)
    return Light(
        "temperature",
        label,
        RED if f.temperature_c >= HOT_RED_C else AMBER,
        summary,
        params,
        N_("Give the box air: not in a closed cupboard, nothing on it, its fan turning."),
    )


def academy_summary(f: GlanceFacts) -> Light:
    label = N_("Last summary received by the academy")
    if f.last_summary_acked is None:
        if f.now - f.started_at < 2 * f.summary_interval_s:
            return Light("summary", label, GREY, N_("None yet since the gateway started"))
        return Light(
            "summary",
            label,
            AMBER,
            N_("None since the gateway started"),
            advice=N_(
                "The academy sees the school as it was before. It catches up by "
                "itself when the uplink returns."
            ),
        )
    age = f.now - f.last_summary_acked
    params = {"at_age": age}
    if age <= 2 * f.summary_interval_s + 60:
        return Light("summary", label, GREEN, N_("%(at_age)s ago"), params)
    return Light(
        "summary",
        label,
        RED if age > DAY else AMBER,
        N_("%(at_age)s ago"),
        params,
        N_(
            "The academy sees the school as it was then. It catches up by itself when "
            "the uplink returns."
        ),
    )


def tablet_reports(f: GlanceFacts) -> Light:
    label = N_("Last tablet report")
    if f.tablets_known == 0 or f.last_report_at is None:
        return Light(
            "tablets",
            label,
            GREY,
            N_("No tablet has reported yet"),
            advice=N_("Enroll the tablets (Enrollment page) and switch them on."),
        )
    age = max(0.0, f.now - f.last_report_at)
    params = {"at_age": age, "online": f.tablets_online, "known": f.tablets_known}
    summary = N_("%(at_age)s ago; %(online)s of %(known)s tablets online")
    if age <= TABLETS_QUIET_AMBER_S:
        return Light("tablets", label, GREEN, summary, params)
    return Light(
        "tablets",
        label,
        RED if age > DAY else AMBER,
        summary,
        params,
        N_("Check the school's Wi-Fi and that the tablets are switched on and charged."),
    )


def glance(f: GlanceFacts) -> list[Light]:
    """The six lights, in the order the page shows them."""
    return [
        uplink(f),
        school_broker(f),
        disk(f),
        temperature(f),
        academy_summary(f),
        tablet_reports(f),
    ]
