"""Issue 15 item 3: seq is the order of a tablet's reports; ts never decides.

A late report with a lower seq (and a later ts) never replaces the newer
one, in the shadow, in a batch, or upstream; a tablet that lost its counter
starts again under a new epoch; a tablet clock years ahead pins nothing.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import aiomqtt

from gateway.app import DATABASE_FILE
from gateway.lab.waiting import wait_until
from gateway.relay.wire import decode_payload
from gateway.sim.model import TabletModel
from gateway.state.order import NO_REPORT, RETIRED_KEPT, Standing, after, supersedes

YEAR_2100 = 4_102_444_800.0
NOW = 1_764_000_000.0


def report(device: str, seq: int, ts: float, epoch: str = "", battery: int = 80) -> bytes:
    model = TabletModel.create(device, "class-01", seed=seq)
    model.battery_pct = battery
    model.seq = seq - 1
    body: dict[str, Any] = model.report(ts)
    if epoch:
        body["epoch"] = epoch
    return json.dumps(body).encode()


class TestOrderRule:
    """The rule as a pure function."""

    def test_seq_decides_within_an_epoch_and_ts_is_not_consulted(self):
        standing = after(NO_REPORT, "", 10)
        assert not supersedes(standing, "", 7)
        assert not supersedes(standing, "", 10)
        assert supersedes(standing, "", 11)

    def test_new_epoch_wins_and_retires_the_old_one(self):
        standing = after(after(NO_REPORT, "a", 50), "b", 1)
        assert standing == Standing("b", 1, ("a",))
        assert not supersedes(standing, "a", 51)  # a late report from before the reset
        assert supersedes(standing, "b", 2)
        for n in range(RETIRED_KEPT + 3):
            standing = after(standing, f"e{n}", 1)
        assert len(standing.retired) == RETIRED_KEPT


def shadow(tmp_path) -> dict[str, tuple[int, float, str]]:
    with sqlite3.connect(tmp_path / "state" / DATABASE_FILE) as db:
        rows = db.execute("SELECT device_id, report_seq, state, report_epoch FROM shadow")
        return {d: (seq, json.loads(state)["ts"], epoch) for d, seq, state, epoch in rows}


def relayed(listener) -> list[tuple[str, int]]:
    return [
        (m["body"]["device_id"], m["body"]["seq"])
        for message in listener.messages
        if "/up/" in message.topic
        for m in decode_payload(message.payload)
        if m["kind"] == "state"
    ]


class TestThroughTheGateway:
    """Real tablets' publishes through Mosquitto to the shadow and the academy."""

    async def test_older_seq_with_later_ts_never_replaces_nor_travels(
        self, start_gateway, school_broker, academy_listener, tmp_path
    ):
        running = await start_gateway()
        async with aiomqtt.Client(school_broker.host, school_broker.port, identifier="t1") as c:
            await c.publish("tablets/tab-0001/state", report("tab-0001", 10, NOW), qos=1)
            assert await wait_until(lambda: shadow(tmp_path).get("tab-0001", (0,))[0] == 10, 10)
            # Sent later, older seq, later ts: a reordered or replayed report.
            await c.publish("tablets/tab-0001/state", report("tab-0001", 7, NOW + 60), qos=1)
            # The same in one batch: seq 3 after seq 5, with a later ts.
            await asyncio.gather(
                c.publish("tablets/tab-0002/state", report("tab-0002", 5, NOW), qos=1),
                c.publish("tablets/tab-0002/state", report("tab-0002", 3, NOW + 60), qos=1),
            )
            # A marker after both, to know they were processed.
            await c.publish("tablets/tab-0003/state", report("tab-0003", 1, NOW), qos=1)
        gateway = running.gateway
        assert await wait_until(lambda: "tab-0003" in shadow(tmp_path), 10)
        assert await wait_until(lambda: gateway.counters.get("state_reports_received") == 5, 10)
        assert shadow(tmp_path)["tab-0001"][:2] == (10, NOW)
        assert shadow(tmp_path)["tab-0002"][:2] == (5, NOW)
        assert await wait_until(lambda: ("tab-0003", 1) in relayed(academy_listener), 10)
        sent = relayed(academy_listener)
        assert ("tab-0001", 7) not in sent and ("tab-0002", 3) not in sent

    async def test_clock_years_ahead_pins_nothing_and_a_new_epoch_restarts(
        self, start_gateway, school_broker, tmp_path
    ):
        running = await start_gateway()
        async with aiomqtt.Client(school_broker.host, school_broker.port, identifier="t2") as c:
            await c.publish("tablets/tab-0009/state", report("tab-0009", 40, YEAR_2100, "a"), qos=1)
            assert await wait_until(lambda: "tab-0009" in shadow(tmp_path), 10)
            # The clock is fixed: a later seq with a sane ts replaces the far-future one.
            await c.publish("tablets/tab-0009/state", report("tab-0009", 41, NOW, "a"), qos=1)
            assert await wait_until(lambda: shadow(tmp_path)["tab-0009"][:2] == (41, NOW), 10)
            # The tablet is wiped: it starts at seq 1 under a new epoch, and that wins.
            await c.publish("tablets/tab-0009/state", report("tab-0009", 1, NOW + 5, "b"), qos=1)
            assert await wait_until(lambda: shadow(tmp_path)["tab-0009"] == (1, NOW + 5, "b"), 10)
            # A report of the old epoch delivered late changes nothing.
            await c.publish("tablets/tab-0009/state", report("tab-0009", 42, NOW + 9, "a"), qos=1)
            await c.publish("tablets/tab-0009/state", report("tab-0009", 2, NOW + 10, "b"), qos=1)
        assert await wait_until(lambda: shadow(tmp_path)["tab-0009"][0] == 2, 10)
        assert running.gateway.counters.get("tablet_messages_rejected") == 0
        assert shadow(tmp_path)["tab-0009"] == (2, NOW + 10, "b")
