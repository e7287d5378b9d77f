"""The outbox: budget decisions, wire format and pacing (pure), and its SQLite behaviour."""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path

import pytest

from gateway.errors import RejectedInput
from gateway.metrics import Counters
from gateway.pacing import TokenBucket
from gateway.relay import outbox
from gateway.relay.budget import Pending, plan_shedding
from gateway.relay.outbox import OutboxBudget
from gateway.relay.wire import decode_payload, encode_batch, envelope_line, fit_batch
from gateway.state.report import parse_state_report
from gateway.state.shadow import standings, store_reports, winners
from gateway.store.database import Database
from gateway.store.migrations import MIGRATIONS
from tests.helpers import good_report


def report(device: str, seq: int, battery: int = 80):
    return parse_state_report(device, good_report(device, seq, battery), max_bytes=16_384)


async def store(db: Database, *reports, now: float = 1000.0) -> None:
    async with db.transaction() as conn:
        won = winners(reports, await standings(conn, (r.device_id for r in reports)))
        first = await outbox.reserve_sequence(conn, len(won))
        await store_reports(conn, won, now, first)


@pytest.fixture
async def db(tmp_path: Path):
    database = await Database.open(tmp_path / "gateway.db")
    outbox.track_peak(database)
    yield database
    await database.close()


class TestShedPlan:
    """What goes when the backlog is over budget: old summaries, then old state, never results."""

    def test_nothing_is_shed_under_budget(self):
        plan = plan_shedding([Pending("state", 1, 500), Pending("result", 2, 500)], 1000)
        assert plan.drop == () and plan.over_budget_by == 0

    def test_older_summaries_go_first_and_the_newest_stays(self):
        pending = [
            Pending("summary", 1, 400),
            Pending("summary", 5, 400),
            Pending("summary", 9, 400),
            Pending("state", 2, 100, "tab-0001"),
        ]
        plan = plan_shedding(pending, 800)
        assert [p.seq for p in plan.drop] == [1, 5]
        assert plan.bytes_after == 500

    def test_then_oldest_state_and_results_are_never_shed(self):
        pending = [
            Pending("result", 1, 800),
            Pending("rejection", 2, 300),
            Pending("state", 7, 100, "tab-0002"),
            Pending("state", 4, 100, "tab-0001"),
            Pending("summary", 8, 100),
        ]
        plan = plan_shedding(pending, 1000)
        assert [(p.kind, p.seq) for p in plan.drop] == [("state", 4), ("state", 7)]
        assert plan.over_budget_by == 200  # results alone are over: kept, and said so


class TestWireFormat:
    """Upstream payloads: one message as JSON, several as a zlib batch, both decodable."""

    def lines(self, count: int) -> list[str]:
        return [
            envelope_line(
                school_id="s-1", gateway_id="gw-1", seq=i, kind="state", body_json='{"a":1}'
            )
            for i in range(1, count + 1)
        ]

    def test_one_message_is_plain_json(self):
        payload = encode_batch(self.lines(1))
        assert json.loads(payload) == {
            "school_id": "s-1",
            "gateway_id": "gw-1",
            "seq": 1,
            "kind": "state",
            "body": {"a": 1},
        }

    def test_a_batch_decodes_to_the_messages_in_order(self):
        payload = encode_batch(self.lines(50))
        assert payload[:1] == b"\x78"
        assert [m["seq"] for m in decode_payload(payload)] == list(range(1, 51))

    def test_fit_batch_keeps_the_payload_under_the_limit(self):
        lines = [
            envelope_line(
                school_id="s-1",
                gateway_id="gw-1",
                seq=i,
                kind="state",
                body_json=json.dumps({"noise": zlib.crc32(str(i).encode()) * 7919}),
            )
            for i in range(5000)
        ]
        payload, count = fit_batch(lines, 4000)
        assert len(payload) <= 4000
        assert 1 < count < 5000
        assert [m["seq"] for m in decode_payload(payload)] == list(range(count))

    def test_garbage_is_rejected_with_a_reason(self):
        with pytest.raises(RejectedInput, match="not_batch"):
            decode_payload(b"\x00\x01garbage")


class TestDrainPacing:
    """The drain's token bucket keeps the long-run byte rate under the limit."""

    def test_burst_then_paced(self):
        pacer = TokenBucket(1000, burst=2000)
        assert pacer.take(2000, now=0.0) == 0.0
        assert pacer.take(500, now=0.0) == pytest.approx(0.5)
        assert pacer.take(1000, now=0.5) == pytest.approx(1.0)

    def test_long_run_rate(self):
        pacer, now, sent = TokenBucket(10_000, burst=5_000), 0.0, 0
        for _ in range(100):
            now += pacer.take(1_000, now)
            sent += 1_000
        assert sent / now <= 10_000 * 1.06


class TestStoredOutbox:
    """The outbox in real SQLite: order, latest wins, acknowledge, budget."""

    async def test_priority_then_sequence_order(self, db):
        await store(db, report("tab-0001", 1))
        async with db.transaction() as conn:
            await outbox.enqueue(conn, "summary", {"n": 1})
            await outbox.enqueue(conn, "result", {"command_id": "c1"})
            await outbox.enqueue(conn, "rejection", {"command_id": "c2"})
        rows = await outbox.next_batch(db, 10)
        assert [r.kind for r in rows] == ["result", "rejection", "summary", "state"]
        assert [r.seq for r in rows] == [3, 4, 2, 1]

    async def test_a_newer_report_replaces_the_pending_one_with_a_higher_seq(self, db):
        await store(db, report("tab-0001", 1, battery=50))
        [first] = await outbox.next_batch(db, 10)
        await store(db, report("tab-0001", 2, battery=40))
        await store(db, report("tab-0001", 1, battery=99))  # redelivered old one: ignored
        [second] = await outbox.next_batch(db, 10)
        assert second.seq > first.seq
        assert second.body["battery_pct"] == 40

    async def test_ack_of_a_replaced_state_keeps_the_newer_one_pending(self, db):
        await store(db, report("tab-0001", 1))
        sent = await outbox.next_batch(db, 10)
        await store(db, report("tab-0001", 2))
        await outbox.acknowledge(db, sent)
        [left] = await outbox.next_batch(db, 10)
        assert left.body["seq"] == 2
        await outbox.acknowledge(db, [left])
        assert await outbox.next_batch(db, 10) == []
        assert (await outbox.backlog(db))["rows"] == 0

    def test_latest_per_tablet_in_a_batch(self):
        reports = [report("tab-0001", 1), report("tab-0002", 5), report("tab-0001", 3)]
        reports.append(report("tab-0001", 2))
        assert {w.report.device_id: w.report.seq for w in winners(reports, {})} == {
            "tab-0001": 3,
            "tab-0002": 5,
        }

    async def test_budget_sheds_by_meaning_counts_and_keeps_results(self, db):
        counters = Counters()
        budget = OutboxBudget(10_000, counters)
        async with db.transaction() as conn:
            for i in range(10):
                await outbox.enqueue(conn, "result", {"command_id": f"c{i}", "pad": "x" * 400})
            for i in range(5):
                await outbox.enqueue(conn, "summary", {"n": i, "pad": "y" * 1_000})
        await store(db, *(report(f"tab-{i:04d}", 1) for i in range(20)))
        async with db.transaction() as conn:
            plan = await budget.enforce(conn)
        assert plan.count("summary") == 4
        assert plan.count("state") > 0
        backlog = await outbox.backlog(db)
        assert backlog["bytes"] <= 10_000
        rows = await outbox.next_batch(db, 1000)
        assert sum(r.kind == "result" for r in rows) == 10
        assert [r.body["n"] for r in rows if r.kind == "summary"] == [4]
        assert await outbox.shed_totals(db) == {"state": plan.count("state"), "summary": 4}
        assert counters.get("outbox_shed", kind="summary") == 4
        # The reports were committed before the budget was enforced: that excursion counts.
        assert await outbox.peak_bytes(db) > 10_000 >= backlog["bytes"]


class TestMigrationFromOutboxRows:
    """A store written by the migration-2 gateway keeps its pending state and sequence."""

    async def test_pending_state_rows_become_shadow_marks(self, tmp_path):
        path = tmp_path / "old.db"
        old = await Database.open(path, {n: MIGRATIONS[n] for n in (1, 2)})
        await old.execute(
            "INSERT INTO shadow (device_id, state, report_seq, first_seen, last_seen) "
            "VALUES ('tab-0001', '{\"seq\":7}', 7, 1, 1)"
        )
        await old.execute(
            "INSERT INTO outbox (kind, priority, dedup_key, body, created) "
            "VALUES ('result', 0, NULL, '{}', 1), ('state', 2, 'tab-0001', '{\"seq\":7}', 2)"
        )
        await old.close()
        db = await Database.open(path)
        try:
            rows = await outbox.next_batch(db, 10)
            assert [(r.kind, r.seq, r.device_id) for r in rows] == [
                ("result", 1, None),
                ("state", 2, "tab-0001"),
            ]
            async with db.transaction() as conn:
                await outbox.enqueue(conn, "summary", {})
            assert max(r.seq for r in await outbox.next_batch(db, 10)) == 3
        finally:
            await db.close()
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
