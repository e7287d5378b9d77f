"""Prometheus exposition of the gateway's counters, gauges and box health."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.health.box import BoxHealth, LanInterface
from gateway.health.metrics import metric_name, render_metrics

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
COUNTERS = {
    "state_reports_received": 1200,
    "state_reports_rejected_not_json": 3,
    "commands_rejected_total": 2,
}
GAUGES = {"outbox_rows_pending": 17.0, "outbox_oldest_age_seconds": 42.5}
PROMTOOL = shutil.which("promtool")


def families(body: bytes) -> dict[str, tuple[str, str, list[tuple[dict[str, str], float]]]]:
    """Parsed exposition: family name -> (type, help, [(labels, value)])."""
    return {
        family.name: (
            family.type,
            family.documentation,
            [(sample.labels, sample.value) for sample in family.samples],
        )
        for family in text_string_to_metric_families(body.decode("utf-8"))
    }


class TestRender:
    """What a scraper reads."""

    def test_counters_have_total_suffix_and_help(self) -> None:
        body, _ = render_metrics(COUNTERS, GAUGES, HEALTH)
        text = body.decode()
        assert "school_gateway_state_reports_received_total 1200.0" in text
        assert "# TYPE school_gateway_state_reports_received_total counter" in text
        assert "# HELP school_gateway_state_reports_received_total " in text
        assert "school_gateway_commands_rejected_total 2.0" in text
        assert "_total_total" not in text

    def test_gauges_and_box_health(self) -> None:
        parsed = families(render_metrics(COUNTERS, GAUGES, HEALTH)[0])
        assert parsed["school_gateway_outbox_rows_pending"][0] == "gauge"
        assert parsed["school_gateway_outbox_rows_pending"][2] == [({}, 17.0)]
        assert parsed["school_gateway_box_soc_temperature_celsius"][2] == [({}, 48.3)]
        assert parsed["school_gateway_box_disk_free_bytes"][2] == [({}, 50_000_000_000.0)]
        assert parsed["school_gateway_box_default_route"][2] == [({}, 1.0)]
        assert parsed["school_gateway_box_interface_address_info"][2] == [
            ({"interface": "eth0", "address": "10.20.0.2"}, 1.0)
        ]
        assert all(help_text for _, help_text, _ in parsed.values())
        assert all(name.startswith("school_gateway_") for name in parsed)

    def test_no_temperature_metric_without_sensor(self) -> None:
        health = BoxHealth(**{**HEALTH.__dict__, "soc_temperature_c": None})
        body, _ = render_metrics({}, {}, health)
        assert b"soc_temperature" not in body

    def test_content_type(self) -> None:
        _, content_type = render_metrics({}, {}, HEALTH)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"

    def test_odd_names_are_cleaned(self) -> None:
        assert metric_name("cache hits/LAN") == "school_gateway_cache_hits_lan"
        assert metric_name("!!!") is None

    def test_colliding_names_keep_one_and_log(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.WARNING, logger="gateway.health.metrics"):
            body, _ = render_metrics({"link-drops": 1, "link_drops": 2, "": 9}, {}, HEALTH)
        assert body.count(b"# TYPE school_gateway_link_drops_total counter") == 1
        assert "left out" in caplog.text


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
class TestPromtool:
    """promtool check metrics accepts the exposition (format and lint)."""

    def check(self, body: bytes) -> subprocess.CompletedProcess[bytes]:
        assert PROMTOOL is not None
        return subprocess.run(
            [PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
        )

    def test_gateway_metrics_pass(self) -> None:
        body, _ = render_metrics(COUNTERS, GAUGES, HEALTH)
        result = self.check(body)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_odd_names_still_pass(self) -> None:
        counters = {"Weird Name": 1, "x-y.z": 2, "9lives": 3, "a_total": 4, "": 5}
        body, _ = render_metrics(counters, {"ratio:cpu": 0.5, "__dunder__": 1.0}, HEALTH)
        result = self.check(body)
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
        assert parsed["school_gateway_state_messages_rejected_not_json"][2][0][1] == 1.0
        assert parsed["school_gateway_tablets_known"][2][0][1] == 1.0
        assert parsed["school_gateway_academy_link_up"][2][0][1] == 1.0
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
