"""End to end through real brokers: tablets -> school broker -> gateway -> academy broker."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import aiomqtt
import pytest

from gateway.broker import link
from gateway.lab.academy import AcademyListener
from gateway.lab.mosquitto import MosquittoProcess
from gateway.lab.waiting import wait_until
from gateway.sim.model import TabletModel
from gateway.store.database import DATABASE_FILE


def good_report(device_id: str, seq: int = 1, battery: int = 80) -> bytes:
    model = TabletModel.create(device_id, "class-01", seed=seq)
    model.battery_pct = battery
    model.seq = seq - 1
    return json.dumps(model.report(1_764_000_000.0 + seq)).encode()


def relayed_states(listener: AcademyListener) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in listener.messages if m.topic.endswith("/up/state")]


async def publish(broker: MosquittoProcess, topic: str, payload: bytes, client_id: str) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier=client_id) as client:
        await client.publish(topic, payload, qos=1)


class TestStateReachesAcademy:
    """A tablet's state report travels to the academy broker."""

    async def test_report_is_relayed_with_gateway_id_and_sequence(
        self, start_gateway, school_broker, academy_listener
    ):
        running = await start_gateway()
        await publish(school_broker, "tablets/tab-0001/state", good_report("tab-0001"), "tab-0001")

        assert await academy_listener.wait_for(
            lambda: len(relayed_states(academy_listener)) >= 1, 10
        )
        [message] = relayed_states(academy_listener)
        assert message["gateway_id"] == "gw-test"
        assert message["school_id"] == "school-test"
        assert message["seq"] >= 1
        assert message["body"]["device_id"] == "tab-0001"
        assert message["body"]["battery_pct"] == 80
        status = await running.gateway.status()
        assert status["tablets"]["known"] == 1
        assert status["counters"]["state_reports_stored"] == 1


class TestMalformedReports:
    """Bad reports are rejected, counted and logged; good ones keep flowing."""

    async def test_each_bad_report_is_rejected_and_the_next_good_one_flows(
        self, start_gateway, school_broker, academy_listener, caplog
    ):
        running = await start_gateway()
        wrong_types = json.loads(good_report("tab-0002"))
        wrong_types["battery_pct"] = "full"
        bad = [
            ("tablets/tab-0002/state", b"this is not json", "not_json"),
            ("tablets/tab-0002/state", json.dumps(wrong_types).encode(), "bad_field"),
            ("tablets/tab-0002/state", b"{" + b" " * 1_000_000 + b"}", "too_large"),
            ("tablets/TAB_0002!/state", good_report("tab-0002"), "bad_device_id"),
        ]
        for topic, payload, _ in bad:
            await publish(school_broker, topic, payload, "bad-tablet")
        await publish(school_broker, "tablets/tab-0003/state", good_report("tab-0003"), "tab-0003")

        assert await academy_listener.wait_for(
            lambda: len(relayed_states(academy_listener)) >= 1, 10
        )
        counters = running.gateway.counters
        assert await wait_until(lambda: counters.get("tablet_messages_rejected") == 4, 5)
        for _, _, reason in bad:
            assert counters.get("tablet_messages_rejected", channel="state", reason=reason) >= 1, (
                reason
            )
        assert [m["body"]["device_id"] for m in relayed_states(academy_listener)] == ["tab-0003"]
        assert "rejected state message from device 'tab-0002': not_json" in caplog.text
        assert "bad_field: field 'battery_pct' must be an integer 0..100" in caplog.text
        assert running.gateway.school_link.is_connected


class TestAcademyOutage:
    """The gateway keeps running when the academy broker goes away, and reconnects."""

    async def test_reconnects_and_delivers_what_arrived_during_the_outage(
        self, start_gateway, school_broker, academy_broker, academy_listener
    ):
        running = await start_gateway()
        gateway = running.gateway
        await academy_broker.stop()
        assert await wait_until(lambda: not gateway.academy_link.is_connected, 10)

        await publish(
            school_broker, "tablets/tab-0004/state", good_report("tab-0004", 1), "tab-0004"
        )
        assert await wait_until(lambda: gateway.counters.get("state_reports_stored") == 1, 10)
        assert not running.task.done()

        await academy_broker.start()
        assert await wait_until(lambda: gateway.academy_link.is_connected, 20)
        assert await wait_until(academy_listener.subscribed.is_set, 10)
        await publish(
            school_broker, "tablets/tab-0004/state", good_report("tab-0004", 2), "tab-0004"
        )
        assert await academy_listener.wait_for(
            lambda: any(m["body"]["seq"] == 2 for m in relayed_states(academy_listener)), 10
        )


@pytest.fixture(
    params=[
        (link.INTAKE_PAUSE_AT, link.INTAKE_RESUME_AT),
        # Tiny bounds: the link pauses while its read buffer still holds whole
        # messages, the last ones too, and must parse them when it resumes.
        (7, 2),
    ],
    ids=["default-bounds", "tiny-bounds"],
)
def intake_bounds(request, monkeypatch):
    pause_at, resume_at = request.param
    monkeypatch.setattr(link, "INTAKE_PAUSE_AT", pause_at)
    monkeypatch.setattr(link, "INTAKE_RESUME_AT", resume_at)


class TestBacklogAtStart:
    """What tablets sent while the gateway was down waits at the broker and is all taken."""

    async def test_backlog_beyond_every_local_bound_is_stored_without_loss(
        self, start_gateway, school_broker, tmp_path, intake_bounds
    ):
        # A long keepalive: a ping's answer must not be what wakes a stuck reader.
        quiet = {"school_broker": {"keepalive_s": 300}}
        running = await start_gateway(quiet)  # subscribes: the broker keeps its session
        await running.stop()
        tablets, reports_each = 200, 40  # 8,000: more than the link and the ingest hold
        async with aiomqtt.Client(
            school_broker.host, school_broker.port, identifier="backlog-publisher"
        ) as client:
            for seq in range(1, reports_each + 1):
                await asyncio.gather(
                    *(
                        client.publish(
                            f"tablets/tab-{i:04d}/state", good_report(f"tab-{i:04d}", seq), qos=1
                        )
                        for i in range(tablets)
                    )
                )

        running = await start_gateway(quiet)
        gateway = running.gateway
        total = tablets * reports_each
        assert await wait_until(lambda: gateway.counters.get("state_reports_stored") == total, 40)
        assert gateway.counters.get("broker_intake_pauses", link="school") >= 1
        assert gateway.counters.get("tablet_messages_rejected") == 0
        with sqlite3.connect(tmp_path / "state" / DATABASE_FILE) as db:
            latest = dict(db.execute("SELECT device_id, report_seq FROM shadow"))
        assert latest == {f"tab-{i:04d}": reports_each for i in range(tablets)}
