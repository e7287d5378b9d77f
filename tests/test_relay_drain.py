"""The relay end to end: backlog during an outage, then a drain in priority order, compressed."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from gateway.lab.mosquitto import MosquittoProcess
from gateway.lab.proxy import LinkProxy
from gateway.lab.waiting import wait_until
from tests.helpers import academy_view, enqueue_results, good_report, latest_states


async def publish_reports(broker: MosquittoProcess, reports: list[tuple[str, int]]) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="test-publisher") as client:
        for device, seq in reports:
            await client.publish(f"tablets/{device}/state", good_report(device, seq), qos=1)


@pytest.fixture
async def academy_proxy(academy_broker: MosquittoProcess) -> AsyncIterator[LinkProxy]:
    async with LinkProxy(academy_broker.host, academy_broker.port) as proxy:
        yield proxy


class TestDrainAfterOutage:
    """Cut uplink: the backlog grows by meaning; on return it drains results first, compressed."""

    async def test_backlog_then_priority_order_latest_state_and_compression(
        self, tmp_path, start_gateway, school_broker, academy_proxy, academy_listener
    ):
        running = await start_gateway(
            {
                "academy_broker": {"port": academy_proxy.port},
                "uplink": {"summary_interval_s": 1, "max_bytes_per_s": 1_000_000},
            }
        )
        gateway = running.gateway
        academy_proxy.cut()
        assert await wait_until(lambda: not gateway.academy_link.is_connected, 10)
        before = len(academy_view(academy_listener))

        devices = [f"tab-{i:04d}" for i in range(40)]
        await enqueue_results(tmp_path / "state" / "gateway.db", [f"cmd-{i}" for i in range(30)])
        await publish_reports(school_broker, [(d, s) for s in (1, 2, 3) for d in devices])
        assert await wait_until(lambda: gateway.counters.get("state_reports_stored") == 120, 15)
        assert await wait_until(lambda: gateway.counters.get("outbox_shed", kind="state") == 0, 1)
        made = gateway.counters.get("summaries_made")
        assert await wait_until(lambda: gateway.counters.get("summaries_made") > made, 5)
        status = await gateway.status()
        assert status["outbox"]["rows"] >= 30 + 40  # results + one state per tablet
        assert status["outbox"]["oldest_age_s"] >= 0
        assert status["brokers"]["academy"] is False

        await academy_proxy.restore()
        assert await academy_listener.wait_for(
            lambda: len(latest_states(academy_view(academy_listener))) == 40, 30
        )
        view = academy_view(academy_listener)[before:]
        kinds = [m["kind"] for m in view]
        first_state = kinds.index("state")
        # Results first, then summaries, then state (summaries made after the drain
        # started may follow; none may precede a result).
        assert kinds[:30] == ["result"] * 30
        assert "summary" in kinds[30:first_state]
        assert sorted(m["body"]["command_id"] for m in view if m["kind"] == "result") == sorted(
            f"cmd-{i}" for i in range(30)
        )
        assert latest_states(view) == {d: 3 for d in devices}
        assert sum(1 for m in view if m["kind"] == "state") == 40  # compacted: latest only
        batches = [r for r in academy_listener.messages if r.topic.endswith("/up/state")]
        assert any(r.payload[:1] == b"\x78" for r in batches)  # compressed batches
        summaries = [m["body"] for m in view if m["kind"] == "summary"]
        assert max(s["backlog"]["rows"] for s in summaries) >= 30 + 40  # it saw its backlog
        summary = summaries[-1]
        assert summary["tablets"]["known"] == 40
        assert set(summary["box"]) >= {"cpu_percent", "memory_available_bytes", "disk_free_bytes"}
        assert summary["cache"]["items_pinned"] == 0  # the cache's section rides along
        assert await wait_until(
            lambda: gateway.counters.get("upstream_messages_sent", kind="result") == 30, 5
        )


class TestDecodeCommand:
    """``python -m gateway decode`` prints what a payload holds, one JSON line per message."""

    def test_decodes_a_batch_from_a_file(self, tmp_path, capsys):
        from gateway.cli import main
        from gateway.relay.wire import encode_batch, envelope_line

        lines = [
            envelope_line(school_id="s-1", gateway_id="gw-1", seq=i, kind="result", body_json="{}")
            for i in (7, 8)
        ]
        path = tmp_path / "payload.bin"
        path.write_bytes(encode_batch(lines))
        assert main(["decode", str(path)]) == 0
        printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [m["seq"] for m in printed] == [7, 8]

    def test_garbage_is_an_error_not_a_traceback(self, tmp_path, capsys):
        from gateway.cli import main

        path = tmp_path / "payload.bin"
        path.write_bytes(b"\x00garbage")
        with contextlib.suppress(SystemExit):
            assert main(["decode", str(path)]) == 2
        assert "not_batch" in capsys.readouterr().err
