"""Prometheus exposition of the gateway's counters, gauges and box health."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.health.box import BoxHealth, LanInterface
from gateway.health.metrics import render_metrics
from gateway.metrics import CATALOGUE, SPECS, Counters, Reading, UndeclaredMetric
from tests.helpers import families

HEALTH = BoxHealth(
    cpu_percent=12.5,
    load_1m=0.5,
    memory_total_bytes=4_000_000_000,
    memory_available_bytes=3_000_000_000,
    disk_total_bytes=64_000_000_000,
    disk_free_bytes=50_000_000_000,
    soc_temperature_c=48.3,
    uptime_s=3600.0,
    interfaces=(LanInterface(name="eth0", ipv4=("10.20.0.2",)),),
    default_route_interface="eth0",
)
PROMTOOL = shutil.which("promtool")
OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def counted() -> Counters:
    counters = Counters()
    counters.inc("state_reports_received", 1200)
    counters.inc("tablet_messages_rejected", channel="state", reason="not_json")
    counters.inc("tablet_messages_rejected", 2, channel="status", reason="bad_json")
    return counters


GAUGES = [
    Reading("outbox_rows", 17.0),
    Reading("outbox_oldest_age_seconds", 42.5),
    Reading("broker_link_up", 1.0, {"link": "academy"}),
    Reading("broker_link_up", 0.0, {"link": "school"}),
]


class TestCounters:
    """Counting by declared name and labels, and reading back."""

    def test_labelled_series_and_their_sum(self) -> None:
        counters = counted()
        assert counters.get("tablet_messages_rejected", channel="state", reason="not_json") == 1
        assert counters.get("tablet_messages_rejected", channel="status") == 2
        assert counters.get("tablet_messages_rejected") == 3
        assert counters.get("state_reports_stored") == 0

    def test_snapshot_names_each_series(self) -> None:
        assert counted().snapshot() == {
            "state_reports_received": 1200,
            'tablet_messages_rejected{channel="state",reason="not_json"}': 1,
            'tablet_messages_rejected{channel="status",reason="bad_json"}': 2,
        }

    def test_undeclared_name_or_labels_are_refused(self) -> None:
        counters = Counters()
        with pytest.raises(UndeclaredMetric, match="not declared"):
            counters.inc("state_reports_eaten")
        with pytest.raises(UndeclaredMetric, match="takes labels"):
            counters.inc("tablet_messages_rejected")
        with pytest.raises(UndeclaredMetric, match="takes labels"):
            counters.inc("state_reports_stored", reason="x")
        with pytest.raises(UndeclaredMetric, match="not declared"):
            counters.inc("outbox_rows")  # a gauge

    def test_every_metric_is_documented_by_its_series_name(self) -> None:
        text = OPERATIONS.read_text()
        missing = [spec.exposed for spec in CATALOGUE if f"`{spec.exposed}`" not in text]
        assert missing == [], "list them in docs/operations.md"


class TestRender:
    """What a scraper reads."""

    def test_counters_have_fixed_names_labels_and_help(self) -> None:
        body = render_metrics(counted(), GAUGES, HEALTH)[0]
        parsed = families(body)
        family = parsed["school_gateway_tablet_messages_rejected"]
        assert family[0] == "counter"
        assert family[1] == SPECS["tablet_messages_rejected"].help
        assert sorted(family[2], key=lambda s: s[1]) == [
            ({"channel": "state", "reason": "not_json"}, 1.0),
            ({"channel": "status", "reason": "bad_json"}, 2.0),
        ]
        assert parsed["school_gateway_state_reports_received"][2] == [({}, 1200.0)]
        # Declared counters show from the start, at zero; no _created series.
        assert parsed["school_gateway_state_reports_stored"][2] == [({}, 0.0)]
        assert b"_created " not in body
        assert b"_created{" not in body

    def test_gauges_and_box_health(self) -> None:
        parsed = families(render_metrics(Counters(), GAUGES, HEALTH)[0])
        assert parsed["school_gateway_outbox_rows"][0] == "gauge"
        assert parsed["school_gateway_outbox_rows"][2] == [({}, 17.0)]
        assert parsed["school_gateway_broker_link_up"][2] == [
            ({"link": "academy"}, 1.0),
            ({"link": "school"}, 0.0),
        ]
        assert parsed["school_gateway_box_soc_temperature_celsius"][2] == [({}, 48.3)]
        assert parsed["school_gateway_box_disk_free_bytes"][2] == [({}, 50_000_000_000.0)]
        assert parsed["school_gateway_box_default_route"][2] == [({}, 1.0)]
        assert parsed["school_gateway_box_interface_address_info"][2] == [
            ({"interface": "eth0", "address": "10.20.0.2"}, 1.0)
        ]
        assert all(help_text for _, help_text, _ in parsed.values())
        assert all(name.startswith("school_gateway_") for name in parsed)

    def test_every_exposed_name_is_declared(self) -> None:
        parsed = families(render_metrics(counted(), GAUGES, HEALTH)[0])
        declared = {spec.exposed.removesuffix("_total") for spec in CATALOGUE}
        assert set(parsed) <= declared

    def test_undeclared_gauge_is_refused(self) -> None:
        with pytest.raises(UndeclaredMetric):
            render_metrics(Counters(), [Reading("outbox_mood", 1.0)], HEALTH)

    def test_no_temperature_metric_without_sensor(self) -> None:
        health = BoxHealth(**{**HEALTH.__dict__, "soc_temperature_c": None})
        body, _ = render_metrics(Counters(), [], health)
        assert b"soc_temperature" not in body

    def test_content_type(self) -> None:
        _, content_type = render_metrics(Counters(), [], HEALTH)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
class TestPromtool:
    """promtool check metrics accepts the exposition (format and lint)."""

    def check(self, body: bytes) -> subprocess.CompletedProcess[bytes]:
        assert PROMTOOL is not None
        return subprocess.run(
            [PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
        )

    def test_every_declared_series_passes(self) -> None:
        counters = Counters()
        gauges = []
        for spec in CATALOGUE:
            labels = {label: f"some_{label}" for label in spec.labels}
            if spec.kind == "counter":
                counters.inc(spec.name, **labels)
            elif not spec.name.startswith("box_"):
                gauges.append(Reading(spec.name, 1.0, labels))
        result = self.check(render_metrics(counters, gauges, HEALTH)[0])
        assert result.returncode == 0, result.stdout + result.stderr

    def test_promtool_catches_a_bad_exposition(self) -> None:
        bad = b"# TYPE x_total gauge\nx_total 1\n"
        assert self.check(bad).returncode != 0


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) not installed")
class TestMetricsEndpoint:
    """A running gateway serves /metrics on the LAN server, and promtool accepts it."""

    async def test_scrape_after_a_report(self, start_gateway, school_broker) -> None:
        import json

        import aiohttp
        import aiomqtt

        from gateway.lab.waiting import wait_until
        from gateway.sim.model import TabletModel

        running = await start_gateway()
        report = TabletModel.create("tab-0001", "class-01", seed=1).report(1_764_000_000.0)
        async with aiomqtt.Client(school_broker.host, school_broker.port) as tablet:
            await tablet.publish("tablets/tab-0001/state", json.dumps(report).encode(), qos=1)
            await tablet.publish("tablets/tab-0002/state", b"not json", qos=1)
        counters = running.gateway.counters
        assert await wait_until(lambda: counters.get("tablet_messages_rejected") == 1, 10)
        assert await wait_until(lambda: counters.get("state_reports_stored") == 1, 10)

        http = running.gateway.config.http
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{http.host}:{http.port}/metrics") as response,
        ):
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            body = await response.read()
        parsed = families(body)
        assert parsed["school_gateway_state_reports_stored"][2][0][1] == 1.0
        assert parsed["school_gateway_tablet_messages_rejected"][2] == [
            ({"channel": "state", "reason": "not_json"}, 1.0)
        ]
        assert parsed["school_gateway_tablets_known"][2][0][1] == 1.0
        assert ({"link": "academy"}, 1.0) in parsed["school_gateway_broker_link_up"][2]
        promtool = await asyncio.create_subprocess_exec(
            PROMTOOL,
            "check",
            "metrics",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, errors = await asyncio.wait_for(promtool.communicate(body), 30)
        assert promtool.returncode == 0, errors.decode()
