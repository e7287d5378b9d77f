"""What ``status`` and the log tell an operator (issue 16 item 4)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.lab.waiting import wait_until
from gateway.status_view import render_status

RUNNING = {
    "running": True,
    "gateway_id": "gw-1",
    "school_id": "school-1",
    "version": "0.1.0",
    "uptime_s": 4000.0,
    "brokers": {"school": True, "academy": False},
    "uplink": {"down_since": 1.0, "down_for_s": 3 * 3600 + 5 * 60, "problem": None},
    "tablets": {"known": 3, "online": 2},
    "outbox": {
        "rows": 12,
        "bytes": 34_567,
        "oldest_age_s": 3 * 3600.0,
        "budget_bytes": 2_000_000,
        "peak_bytes": 40_000,
    },
}


class TestRenderStatus:
    """Figures an operator reads, not Python's representation of them."""

    def test_outbox_in_words(self) -> None:
        text = render_status(RUNNING)
        assert "{'" not in text
        assert "outbox: 12 messages (34.6 kB) waiting for the academy, oldest 3 h 00 min" in text

    def test_says_how_long_the_uplink_is_down(self) -> None:
        text = render_status(RUNNING)
        assert "academy DOWN for 3 h 05 min (queueing)" in text

    def test_stopped_gateway_does_not_claim_tablets_online(self) -> None:
        stopped = {
            "running": False,
            "reason": "gateway not reachable",
            "tablets": RUNNING["tablets"],
        }
        text = render_status(stopped)
        assert "gateway NOT RUNNING" in text
        assert "2 online" not in text
        assert "who is online is unknown while the gateway is stopped" in text


class TestMissingAcademyCertificate:
    """Without its academy client certificate the gateway says so, once, and waits."""

    async def test_one_clear_line_and_status_says_why(
        self, start_secure_gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        ca = tmp_path / "academy-ca.pem"
        ca.write_text("not needed until the certificate is there\n")
        caplog.set_level(logging.INFO)
        running = await start_secure_gateway({"academy_broker": {"ca_file": str(ca)}})
        status = await running.gateway.status()
        problem = status["uplink"]["problem"]
        assert problem is not None and "no academy client certificate" in problem
        assert "academy-client.crt" in problem and "gateway.csr" in problem
        assert "academy DOWN" in render_status({**status, "running": True})
        assert await wait_until(lambda: "academy uplink not started" in caplog.text, 5)
        assert "timed out" not in caplog.text
        assert "Bad file descriptor" not in caplog.text
        assert running.gateway.counters.get("broker_connects", link="academy") == 0
