"""Per-school summaries: what the academy reads about a school at a glance."""

from __future__ import annotations

from gateway.state.summary import SummaryRules, TabletView, build_summary, is_older


def tablet(
    device: str, *, online=True, battery=80, charging=False, free=5_000, os="13.1.2", apps=None
):
    state = {
        "battery_pct": battery,
        "charging": charging,
        "storage_free_mb": free,
        "os_version": os,
        "apps": apps if apps is not None else {"org.ent.classroom": "2.5.1"},
    }
    return TabletView(device, online, 990.0, state)


RULES = SummaryRules(
    low_battery_pct=20, low_storage_mb=500, required_apps={"org.ent.classroom": "2.5.0"}
)


def summarise(tablets):
    return build_summary(
        tablets,
        now=1000.0,
        rules=RULES,
        health={"cpu_pct": 12.0},
        backlog={"rows": 3, "bytes": 1200, "oldest_age_s": 60.0},
        shed={"state": 0, "summary": 2},
    )


class TestSchoolSummary:
    """The summary counts tablets, flags problems and carries the gateway's own backlog."""

    def test_counts_and_flags(self):
        summary = summarise(
            [
                tablet("tab-0001"),
                tablet("tab-0002", online=False, battery=10),
                tablet("tab-0003", battery=5, charging=True, free=100, os="14.0.1"),
                tablet("tab-0004", apps={"org.ent.classroom": "2.4.9"}),
                tablet("tab-0005", apps={}),
                TabletView("tab-0006", True, 0.0, {}),  # presence only, never reported
            ]
        )
        assert summary["tablets"] == {
            "known": 6,
            "online": 5,
            "reporting": 5,
            "last_report_age_s": 10.0,
        }
        assert summary["low_battery"] == {"count": 1, "devices": ["tab-0002"]}  # charging is fine
        assert summary["storage_low"] == {"count": 1, "devices": ["tab-0003"]}
        assert summary["os_versions"] == {"13.1.2": 4, "14.0.1": 1}
        assert summary["apps"]["out_of_date"] == {
            "org.ent.classroom": {"count": 1, "devices": ["tab-0004"]}
        }
        assert summary["apps"]["missing"] == {
            "org.ent.classroom": {"count": 1, "devices": ["tab-0005"]}
        }
        assert summary["box"] == {"cpu_pct": 12.0}
        assert summary["backlog"] == {"rows": 3, "bytes": 1200, "oldest_age_s": 60.0}
        assert summary["shed"] == {"state": 0, "summary": 2}

    def test_device_lists_are_capped_but_counts_are_complete(self):
        summary = summarise([tablet(f"tab-{i:04d}", battery=1) for i in range(120)])
        assert summary["low_battery"]["count"] == 120
        assert len(summary["low_battery"]["devices"]) == 50

    def test_an_empty_school(self):
        summary = summarise([])
        assert summary["tablets"]["known"] == 0
        assert summary["tablets"]["last_report_age_s"] is None

    def test_versions_compare_by_number(self):
        assert is_older("2.9", "2.10")
        assert not is_older("2.10.0", "2.9.9")
        assert is_older("128.0", "129.0")
        assert not is_older("2.5.1", "2.5.1")
