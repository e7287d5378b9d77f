"""End to end through real brokers: tablets -> school broker -> gateway -> academy broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from typing import Any

import aiomqtt
import pytest

from gateway.lab.academy import AcademyListener
from gateway.lab.mosquitto import MosquittoProcess
from gateway.lab.waiting import wait_until
from gateway.store.database import DATABASE_FILE, Database
from tests.helpers import good_report


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
            # A little over tablets.max_report_bytes (16 KiB): the broker passes it
            # (its packet limit is twice that, gateway/broker/limits.py), the
            # gateway rejects it. Far larger ones never pass the broker (test_link.py).
            ("tablets/tab-0002/state", b"{" + b" " * 20_000 + b"}", "too_large"),
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


TABLETS, REPORTS_EACH = 200, 40  # 8,000: more than the link's window and the ingest hold


async def queue_backlog(start_gateway, school_broker, overrides, tablets=TABLETS) -> None:
    """Subscribe once (the broker keeps the session), stop, then let tablets report 40 times."""
    running = await start_gateway(overrides)
    await running.stop()
    async with aiomqtt.Client(
        school_broker.host, school_broker.port, identifier="backlog-publisher"
    ) as client:
        for seq in range(1, REPORTS_EACH + 1):
            await asyncio.gather(
                *(
                    client.publish(
                        f"tablets/tab-{i:04d}/state", good_report(f"tab-{i:04d}", seq), qos=1
                    )
                    for i in range(tablets)
                )
            )


def assert_every_tablet_latest(tmp_path, tablets=TABLETS) -> None:
    with sqlite3.connect(tmp_path / "state" / DATABASE_FILE) as db:
        latest = dict(db.execute("SELECT device_id, report_seq FROM shadow"))
    assert latest == {f"tab-{i:04d}": REPORTS_EACH for i in range(tablets)}


class StoreStall:
    """After ``passes`` commits of the state ingest, holds its next one until released."""

    def __init__(self, monkeypatch, passes: int) -> None:
        self.released = asyncio.Event()
        self.passes = passes
        self.held = 0
        original = Database.transaction
        stall = self

        @contextlib.asynccontextmanager
        async def transaction(db: Database):
            task = asyncio.current_task()
            if task is not None and task.get_name() == "state-ingest":
                stall.passes -= 1
                if stall.passes < 0 and not stall.released.is_set():
                    stall.held += 1
                    await stall.released.wait()
            async with original(db) as conn:
                yield conn

        monkeypatch.setattr(Database, "transaction", transaction)


@pytest.mark.slow
class TestBacklogAtStart:
    """What tablets sent while the gateway was down waits at the broker and is all taken."""

    @pytest.mark.parametrize("receive_max", [4_000, 50], ids=["default-window", "small-window"])
    async def test_backlog_beyond_every_local_bound_is_stored_without_loss(
        self, start_gateway, school_broker, tmp_path, receive_max
    ):
        # A long keepalive: a ping's answer must not be what wakes a stuck reader.
        quiet = {"school_broker": {"keepalive_s": 300, "receive_max": receive_max}}
        await queue_backlog(start_gateway, school_broker, quiet)

        running = await start_gateway(quiet)
        gateway = running.gateway
        total = TABLETS * REPORTS_EACH
        assert await wait_until(lambda: gateway.counters.get("state_reports_stored") == total, 60)
        # The broker held the rest back each time the window filled.
        assert gateway.counters.get("broker_intake_pauses", link="school") >= 1
        assert gateway.counters.get("tablet_messages_rejected") == 0
        assert_every_tablet_latest(tmp_path)

    async def test_store_stalled_for_three_keepalives_keeps_the_link_up(
        self, start_gateway, school_broker, tmp_path, monkeypatch
    ):
        keepalive_s = 2
        settings = {"school_broker": {"keepalive_s": keepalive_s}}
        # 12,000 and two commits before the stall: enough for the paho-based link
        # of before to stop reading its socket (Mosquitto 2.0 then sent more than
        # its in-flight limit) while paho's keepalive check went on and dropped
        # the connection (issue 13).
        tablets = 300
        await queue_backlog(start_gateway, school_broker, settings, tablets)
        stall = StoreStall(monkeypatch, passes=2)

        running = await start_gateway(settings)
        gateway = running.gateway
        counters = gateway.counters
        # The ingest's first commit is held and the broker's window to us is full.
        assert await wait_until(
            lambda: stall.held >= 1 and counters.get("broker_intake_pauses", link="school") >= 1, 30
        )
        # The stall itself: three keepalive intervals with nothing committed.
        stored = counters.get("state_reports_stored")
        await asyncio.sleep(3 * keepalive_s)
        assert counters.get("state_reports_stored") == stored
        assert gateway.school_link.is_connected
        assert counters.get("broker_connection_errors", link="school") == 0
        stall.released.set()

        total = tablets * REPORTS_EACH
        assert await wait_until(lambda: counters.get("state_reports_stored") == total, 60)
        assert counters.get("broker_connects", link="school") == 1  # never reconnected
        assert counters.get("broker_connection_errors", link="school") == 0
        assert counters.get("broker_intake_resumes", link="school") >= 1
        assert_every_tablet_latest(tmp_path, tablets)
