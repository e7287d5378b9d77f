"""Academy ingest: upstream payloads from the academy broker into PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
import asyncpg
import pytest

from gateway.academy.ingest.apply import apply_batch, prepare_connection
from gateway.academy.ingest.lab import line, payload, state_body
from gateway.academy.ingest.upstream import (
    DecodedPayload,
    Row,
    StateRow,
    SummaryRow,
    _checked_payload,
    _fast_states,
    decode_upstream,
    parse_origin,
)
from gateway.academy.ingest.worker import IngestWorker
from gateway.lab.mosquitto import MosquittoProcess
from gateway.lab.waiting import wait_until
from tests.academy.conftest import academy_config, until

SCHOOL, GW = "school-a", "gw-a"
UP = f"schools/{SCHOOL}/gateways/{GW}/up"


def summary_body(at: float, *, known: int = 3, low: int = 1) -> dict[str, Any]:
    return {
        "at": at,
        "tablets": {
            "known": known,
            "online": known - 1,
            "reporting": known,
            "last_report_age_s": 1,
        },
        "low_battery": {"count": low, "devices": ["tab-0001"][:low]},
        "storage_low": {"count": 0, "devices": []},
        "apps": {
            "versions": {},
            "required": {"org.ent.classroom": "2.5.0"},
            "out_of_date": {"org.ent.classroom": {"count": 2, "devices": ["tab-0001", "tab-0002"]}},
            "missing": {},
        },
        "box": {"cpu_percent": 3.0},
        "cache": {"uplink_bytes_saved": 123456},
        "backlog": {"rows": 4, "bytes": 900, "oldest_age_s": 12.5},
        "shed": {"state": 0, "summary": 0},
    }


class TestDecode:
    """The sans-I/O decoder: what a payload means, and what is refused."""

    def test_batch_of_states(self) -> None:
        lines = [
            line(SCHOOL, GW, i, "state", state_body(f"tab-000{i}", ts=100.0 + i)) for i in (1, 2)
        ]
        decoded = decode_upstream(f"{UP}/state", payload(lines), max_payload_bytes=65536)
        assert not decoded.refusals
        assert [type(r) for r in decoded.rows] == [StateRow, StateRow]
        assert [r.device_id for r in decoded.rows if isinstance(r, StateRow)] == [
            "tab-0001",
            "tab-0002",
        ]

    def test_summary_figures(self) -> None:
        raw = payload([line(SCHOOL, GW, 7, "summary", summary_body(50.0))])
        (row,) = decode_upstream(f"{UP}/summary", raw, max_payload_bytes=65536).rows
        assert isinstance(row, SummaryRow)
        assert (row.tablets_known, row.low_battery, row.apps_out_of_date) == (3, 1, 2)
        assert (row.backlog_rows, row.cache_bytes_saved) == (4, 123456)

    @pytest.mark.parametrize(
        ("topic", "raw", "reason"),
        [
            (f"{UP}/state", b"\x78\x9c not zlib at all", "not_batch"),
            (f"{UP}/state", b"{not json", "not_json"),
            (f"{UP}/gossip", b'{"a": 1}', "unknown_kind"),
            (f"{UP}/state", b"{" + b" " * 70_000 + b"}", "too_large"),
            ("schools/x/else", b"{}", "bad_topic"),
            (
                f"{UP}/state",
                payload([line("school-b", GW, 1, "state", state_body("tab-0001", ts=1.0))]),
                "wrong_school",
            ),
            (
                f"{UP}/state",
                payload([line(SCHOOL, GW, 1, "summary", summary_body(1.0))]),
                "wrong_kind",
            ),
            (
                f"{UP}/state",
                payload([line(SCHOOL, GW, 1, "state", {"device_id": "tab-0001"})]),
                "bad_body",
            ),
        ],
    )
    def test_refusals(self, topic: str, raw: bytes, reason: str) -> None:
        decoded = decode_upstream(topic, raw, max_payload_bytes=65536)
        assert [r.reason for r in decoded.refusals] == [reason]
        assert decoded.rows == []

    def test_one_bad_message_leaves_the_others(self) -> None:
        lines = [
            line(SCHOOL, GW, 1, "state", state_body("tab-0001", ts=1.0)),
            line("school-b", GW, 2, "state", state_body("tab-0002", ts=1.0)),
            line(SCHOOL, GW, 3, "state", state_body("tab-0003", ts=1.0)),
        ]
        decoded = decode_upstream(f"{UP}/state", payload(lines), max_payload_bytes=65536)
        assert [r.seq for r in decoded.rows] == [1, 3]
        assert [r.reason for r in decoded.refusals] == ["wrong_school"]


def state_line(seq: int = 1, device: str = "tab-0001", **changes: Any) -> str:
    """One state message as the gateway writes it, with ``changes`` made to its body."""
    return line(SCHOOL, GW, seq, "state", {**state_body(device, ts=100.0 + seq), **changes})


def spliced(text: str, where: str = "body") -> str:
    """A state message with ``text`` spliced in at the start of its body (or envelope)."""
    plain = state_line()
    if where == "body":
        return plain.replace('"body":{', '"body":{' + text, 1)
    return "{" + text + plain[1:]


def outcome(decoded: DecodedPayload) -> tuple[list[Any], list[tuple[str, str]]]:
    """What a decode means: its rows (the report as a value, not as text) and its refusals."""
    rows = [
        (*r[:-1], json.loads(r.report_json)) if isinstance(r, StateRow) else r for r in decoded.rows
    ]
    return rows, [(r.reason, r.detail) for r in decoded.refusals]


class TestFastPath:
    """State payloads: the fast path (msgspec) gives the reference checks' answer on every input."""

    @pytest.mark.parametrize(
        "lines",
        [
            [state_line()],
            [state_line(1), state_line(2, "tab-0002"), state_line(3, "tab-0003")],
            [state_line(ts=1_764_000_000)],  # an integer ts is taken, as a float
            [state_line(ts=True)],
            [state_line(ts=2**40)],
            [state_line(ts=2**40 - 0.5)],
            [state_line(ts=-0.0)],
            [state_line(ts="1")],
            [state_line(battery_pct=50.0)],
            [state_line(battery_pct=True)],
            [state_line(battery_pct=101)],
            [state_line(battery_pct=-1)],
            [state_line(charging=1)],
            [state_line(charging=None)],
            [state_line(locked=None)],
            [state_line(storage_free_mb=32_001, storage_total_mb=32_000)],
            [state_line(storage_free_mb=2**31, storage_total_mb=2**31)],
            [state_line(storage_total_mb=2**31 + 1)],
            [state_line(os_version="é" * 64)],
            [state_line(os_version="é" * 65)],
            [state_line(os_version="")],
            [state_line(os_version=None)],
            [state_line(group=None)],
            [state_line(group="")],
            [state_line(group="Class 1")],
            [state_line(group="class-01\n")],
            [state_line(device="t")],
            [state_line(device="x" * 63)],
            [state_line(device="x" * 64)],
            [state_line(device="tab-0001\n")],
            [state_line(device_id=None)],
            [state_line(apps={"é": "\ud800"}, extra={"x": [1, 2.5, None]})],
            [state_line(1), state_line(2).replace(SCHOOL, "school-b", 1), state_line(3)],
            [state_line(1), state_line(2).replace(GW, "gw-b", 1)],
            [state_line(1), state_line(2).replace('"kind":"state"', '"kind":"summary"')],
            [state_line(1), state_line(2).replace('"kind":"state"', '"kind":"gossip"')],
            [state_line().replace('"seq":1,', '"seq":1.0,', 1)],
            [state_line().replace('"seq":1,', '"seq":-1,', 1)],
            [state_line().replace('"seq":1,', f'"seq":{2**63},', 1)],
            [state_line().replace('"seq":1,', f'"seq":{2**63 - 1},', 1)],
            [state_line().replace('"seq":1,', '"seq":true,', 1)],
            [state_line().replace('"seq":1,', '"seq":"1",', 1)],
            [spliced('"seq":7,', where="envelope")],  # a repeated key: the last one counts
            [spliced('"battery_pct":7,')],
            [spliced('"battery_pct":"7",')],
            [spliced(r'"os_version":"\ud800",')],  # a lone surrogate
            [spliced('"ts":NaN,')],
            [spliced('"x":Infinity,')],
            [spliced(r'"x":"\u0000",')],  # taken here; PostgreSQL refuses it (a store refusal)
            [spliced('"body":[],', where="envelope").replace('"body":{', '"other":{')],
            [state_line().replace('"body":{', '"body":null,"b":{')],
            [state_line(), ""],  # an empty line in a batch
            [state_line(), "[]"],
            [state_line(), "null"],
        ],
    )
    def test_same_answer_as_the_reference(self, lines: list[str]) -> None:
        raw = payload(lines)
        origin = parse_origin(f"{UP}/state")
        fast = decode_upstream(f"{UP}/state", raw, max_payload_bytes=65536)
        assert outcome(fast) == outcome(_checked_payload(origin, raw))

    @pytest.mark.parametrize(
        "raw",
        [
            b"\xef\xbb\xbf" + state_line().encode(),  # a UTF-8 byte order mark
            state_line().encode().replace(b'"tab-0001"', b'"tab-\xff"'),
            spliced('"x":"\xe9",').encode("latin-1"),  # not UTF-8 in a field nobody reads
            zlib.compress(f"{state_line(1)}\r\n{state_line(2, 'tab-0002')}\r\n".encode()),
            zlib.compress(f"{state_line(1)}\r{state_line(2, 'tab-0002')}".encode()),
            zlib.compress(f"{state_line(1)}\n\n{state_line(2, 'tab-0002')}".encode()),
            state_line().encode("utf-16"),
            b"{",
        ],
    )
    def test_same_answer_on_raw_bytes(self, raw: bytes) -> None:
        origin = parse_origin(f"{UP}/state")
        fast = decode_upstream(f"{UP}/state", raw, max_payload_bytes=65536)
        assert outcome(fast) == outcome(_checked_payload(origin, raw))

    def test_what_a_gateway_sends_takes_the_fast_path(self) -> None:
        lines = [state_line(i, f"tab-{i:04d}") for i in range(1, 301)]
        origin = parse_origin(f"{UP}/state")
        rows = _fast_states(origin, payload(lines))
        assert rows is not None
        assert [r.seq for r in rows] == list(range(1, 301))


def states(*lines: str) -> list[Row]:
    return decode_upstream(f"{UP}/state", payload(list(lines)), max_payload_bytes=65536).rows


class TestApplyStates:
    """apply_batch on a real PostgreSQL: duplicates among states, in the store and in the batch."""

    async def test_only_the_new_states_are_applied(self, db: asyncpg.Connection) -> None:
        await prepare_connection(db)
        async with db.transaction():
            first = await apply_batch(db, states(state_line(1), state_line(2, "tab-0002")))
        assert (first.states, first.states_applied, first.duplicates) == (2, 2, 0)
        again = states(
            state_line(1),  # seen before
            state_line(3, "tab-0003", battery_pct=30),
            state_line(3, "tab-0003", battery_pct=31),  # the same key twice: the first counts
            state_line(4, "tab-0002", battery_pct=40),
        )
        async with db.transaction():
            second = await apply_batch(db, again)
        assert (second.states, second.states_applied, second.duplicates) == (2, 2, 2)
        rows = await db.fetch("SELECT device_id, seq, battery_pct, applied FROM tablets")
        assert sorted(tuple(r) for r in rows) == [
            ("tab-0001", 1, 80, 1),
            ("tab-0002", 4, 40, 2),
            ("tab-0003", 3, 30, 1),
        ]
        assert await db.fetchval("SELECT count(*) FROM upstream_seen") == 4


@pytest.fixture
async def worker(
    academy_dsn: str, academy_broker: MosquittoProcess
) -> AsyncIterator[Callable[..., Any]]:
    """Factory: an in-process ingest worker, subscribed; stopped after the test."""
    tasks: list[asyncio.Task[None]] = []

    async def start(**sections: dict[str, Any]) -> IngestWorker:
        config = academy_config(academy_dsn, academy_broker.port, **sections)
        running = IngestWorker(config, 1)
        tasks.append(asyncio.create_task(running.run(), name="ingest-worker"))
        await asyncio.wait_for(running.link.connected.wait(), 10)
        return running

    yield start
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def publish(
    broker: MosquittoProcess, *messages: tuple[str, bytes], retain: bool = False
) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for topic, raw in messages:
            await client.publish(topic, raw, qos=1, retain=retain)


class TestIngest:
    """A real worker between a real Mosquitto and a real PostgreSQL."""

    async def test_states_summaries_and_duplicates(
        self, worker: Callable[..., Any], academy_broker: MosquittoProcess, db: asyncpg.Connection
    ) -> None:
        await worker()
        states = [
            line(SCHOOL, GW, i, "state", state_body(f"tab-000{i}", ts=100.0 + i)) for i in (1, 2, 3)
        ]
        newer = line(SCHOOL, GW, 9, "state", state_body("tab-0001", ts=200.0, battery=5))
        older = line(SCHOOL, GW, 4, "state", state_body("tab-0001", ts=150.0, battery=50))
        await publish(academy_broker, (f"{UP}/state", payload(states)))
        assert await until(db, "SELECT count(*) FROM upstream_seen", 3) == 3
        await publish(
            academy_broker,
            (f"{UP}/state", payload(states)),  # a redelivery: the same seqs
            (f"{UP}/state", payload([newer])),
            (f"{UP}/state", payload([older])),  # arrives late: must not overwrite seq 9
            (f"{UP}/summary", payload([line(SCHOOL, GW, 5, "summary", summary_body(300.0))])),
            (f"schools/{SCHOOL}/gateways/{GW}/status", b'{"online": true, "gateway_id": "gw-a"}'),
        )
        assert await until(db, "SELECT count(*) FROM upstream_seen", 6) == 6
        assert await until(db, "SELECT count(*) FROM summaries", 1) == 1
        tablets = {
            r["device_id"]: r
            for r in await db.fetch("SELECT device_id, seq, battery_pct, applied FROM tablets")
        }
        assert sorted(tablets) == ["tab-0001", "tab-0002", "tab-0003"]
        assert (tablets["tab-0001"]["seq"], tablets["tab-0001"]["battery_pct"]) == (9, 5)
        assert tablets["tab-0001"]["applied"] == 2  # seq 1 then seq 9; the copy and seq 4 not
        assert tablets["tab-0002"]["applied"] == 1
        gateway = await db.fetchrow("SELECT * FROM gateways")
        assert (gateway["tablets_known"], gateway["low_battery"], gateway["backlog_rows"]) == (
            3,
            1,
            4,
        )
        assert await until(db, "SELECT online FROM gateways", True) is True
        counters = json.loads(await db.fetchval("SELECT counters FROM ingest_workers"))
        assert counters["ingest_duplicates"] == 3
        assert counters["ingest_states_older"] == 1

    async def test_results_progress_and_rejections(
        self, worker: Callable[..., Any], academy_broker: MosquittoProcess, db: asyncpg.Connection
    ) -> None:
        await db.execute(
            "INSERT INTO commands (command_id, action, params, targets, schools, sent_by, issued_at,"
            " not_after) VALUES ('cmd-1', 'lock', '{}', '{\"group\": \"class-01\"}', '{school-a}',"
            " 'op', 1, 2)"
        )
        await db.execute(
            "INSERT INTO command_schools (command_id, school_id, envelope) VALUES ('cmd-1', 'school-a', 'x')"
        )
        await worker()
        delivery = {
            "type": "delivery",
            "command_id": "cmd-1",
            "device_id": "tab-0001",
            "status": "done",
            "detail": "",
            "at": 10.0,
        }
        received = dict(delivery, status="received")
        progress = {
            "type": "progress",
            "command_id": "cmd-1",
            "action": "lock",
            "targets": 1,
            "sent": 1,
            "delivered": 1,
            "done": 1,
            "failed": 0,
            "expired": 0,
            "waiting": 0,
            "complete": True,
        }
        rejection = {
            "reason": "bad_signature",
            "detail": "forged",
            "command_id": "cmd-x",
            "envelope_sha256": "ab" * 32,
            "at": 11.0,
        }
        await publish(
            academy_broker,
            (
                f"{UP}/result",
                payload(
                    [
                        line(SCHOOL, GW, 2, "result", delivery),
                        line(SCHOOL, GW, 3, "result", progress),
                    ]
                ),
            ),
            (f"{UP}/result", payload([line(SCHOOL, GW, 1, "result", received)])),  # older
            (f"{UP}/rejection", payload([line(SCHOOL, GW, 4, "rejection", rejection)])),
        )
        assert await until(db, "SELECT count(*) FROM upstream_seen", 4) == 4
        assert await db.fetchval("SELECT status FROM command_results") == "done"
        row = await db.fetchrow("SELECT done, complete FROM command_schools")
        assert (row["done"], row["complete"]) == (1, True)
        assert await db.fetchval("SELECT reason FROM rejections") == "bad_signature"

    async def test_malformed_payloads_are_counted_logged_acknowledged(
        self,
        worker: Callable[..., Any],
        academy_broker: MosquittoProcess,
        db: asyncpg.Connection,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.WARNING, logger="gateway.academy")
        running = await worker(ingest={"max_payload_bytes": 4096})
        good = payload([line(SCHOOL, GW, 1, "state", state_body("tab-0001", ts=1.0))])
        bad = [
            (f"{UP}/state", b"\x78\x9cgarbage that is not deflate"),
            (f"{UP}/state", b"{this is not json}"),
            (f"{UP}/telemetry", good),
            (f"{UP}/state", zlib.compress(b"x" * 100_000)[:10] + b"{" * 5000),
            (
                f"{UP}/state",
                payload([line("school-z", GW, 2, "state", state_body("tab-0002", ts=1.0))]),
            ),
            (
                f"{UP}/state",
                payload([line(SCHOOL, GW, 3, "state", state_body("tab\u0000", ts=1.0))]),
            ),
        ]
        await publish(academy_broker, *bad, (f"{UP}/state", good))
        assert await until(db, "SELECT count(*) FROM refused_payloads", len(bad)) == len(bad)
        assert await until(db, "SELECT count(*) FROM tablets", 1) == 1
        reasons = sorted(r["reason"] for r in await db.fetch("SELECT reason FROM refused_payloads"))
        assert reasons == sorted(
            ["not_batch", "not_json", "unknown_kind", "too_large", "wrong_school", "bad_body"]
        )
        # The worker counts (and logs) once PostgreSQL has answered the COMMIT, which
        # may be a moment after the rows became visible to this connection.
        assert await wait_until(
            lambda: running.counters.snapshot().get("ingest_refused") == len(bad), 10
        ), running.counters.snapshot()
        counters = running.counters.snapshot()
        assert counters["ingest_refused_wrong_school"] == 1
        logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert any("wrong_school" in m and "school-z" in m for m in logged)
        # Acknowledged: after a restart on the same persistent session nothing comes back.
        await publish(
            academy_broker,
            (
                f"{UP}/state",
                payload([line(SCHOOL, GW, 9, "state", state_body("tab-0009", ts=1.0))]),
            ),
        )
        assert await until(db, "SELECT count(*) FROM tablets", 2) == 2
        assert await wait_until(lambda: running.counters.get("ingest_payloads") == len(bad) + 2, 10)

    async def test_a_value_postgresql_refuses_is_set_aside(
        self, worker: Callable[..., Any], academy_broker: MosquittoProcess, db: asyncpg.Connection
    ) -> None:
        await worker(ingest={"batch_window_s": 0.5})
        poisoned = state_body("tab-0001", ts=1.0)
        poisoned["os_version"] = "13\u0000"  # text and jsonb cannot hold NUL
        await publish(
            academy_broker,
            (f"{UP}/state", payload([line(SCHOOL, GW, 1, "state", poisoned)])),
            (
                f"{UP}/state",
                payload([line(SCHOOL, GW, 2, "state", state_body("tab-0002", ts=1.0))]),
            ),
        )
        assert await until(db, "SELECT count(*) FROM tablets", 1) == 1
        assert await until(db, "SELECT reason FROM refused_payloads", "store") == "store"
