"""Commands end to end through real brokers: academy -> gateway -> tablets -> academy."""

from __future__ import annotations

import base64
import json
import time

import pytest

from gateway.lab.commands import (
    AcademySigner,
    latest_progress,
    rejections,
    results_for,
    upstream,
)
from gateway.lab.waiting import wait_until
from gateway.status_view import render_status, stored_status
from tests.commands_kit import SCHOOL, keys, online_fleet, send


class TestCommandReachesTablets:
    """A signed command reaches every targeted tablet once; results reach the academy."""

    async def test_lock_a_classroom_then_ask_for_state(
        self, start_gateway, school_broker, academy_broker, academy_listener
    ):
        signer = AcademySigner(SCHOOL)
        running = await start_gateway(keys(signer))
        gateway = running.gateway
        # tab-0000..0029 are class-01, tab-0030..0039 class-02.
        async with online_fleet(school_broker, gateway, 40) as (fleet, applier):
            lock_id, lock = signer.envelope("lock", targets={"group": "class-01"})
            await send(academy_broker, lock)

            assert await academy_listener.wait_for(
                lambda: len(results_for(academy_listener, lock_id)) == 30, 20
            )
            assert set(results_for(academy_listener, lock_id).values()) == {"done"}
            assert applier.applications(lock_id) == {f"tab-{i:04d}": 1 for i in range(30)}
            locked = {t.device_id for t in fleet.tablets if t.model.locked}
            assert locked == {f"tab-{i:04d}" for i in range(30)}
            assert await academy_listener.wait_for(
                lambda: (latest_progress(academy_listener, lock_id) or {}).get("complete"), 10
            )
            progress = latest_progress(academy_listener, lock_id)
            assert progress is not None
            assert (progress["targets"], progress["done"], progress["failed"]) == (30, 30, 0)

            ask_id, ask = signer.envelope("request_state", targets={"devices": ["tab-0003"]})
            await send(academy_broker, ask)

            def state_of_tab_0003_after_lock() -> bool:
                return any(
                    m["body"]["device_id"] == "tab-0003" and m["body"]["locked"]
                    for m in upstream(academy_listener, "state")
                )

            assert await academy_listener.wait_for(state_of_tab_0003_after_lock, 20)
            status = await gateway.status()
            recent = {c["command_id"]: c for c in status["commands"]["recent"]}
            assert recent[lock_id]["done"] == 30
            assert recent[ask_id]["targets"] == 1
            shown = render_status({**status, "running": True})
            assert f"{lock_id} lock: 30 targets, 30 delivered, 30 done, 0 failed" in shown
            stored = await stored_status(gateway.config.gateway.state_dir, "stopped")
            assert f"{lock_id} lock: 30 targets" in render_status(stored)

    async def test_install_app_answers_received_then_done(
        self, start_gateway, school_broker, academy_broker, academy_listener
    ):
        signer = AcademySigner(SCHOOL)
        running = await start_gateway(keys(signer))
        async with online_fleet(school_broker, running.gateway, 3) as (fleet, _applier):
            params = {"package": "org.example.maths", "version": "1.2.0", "sha256": "ab" * 32}
            command_id, envelope = signer.envelope("install_app", params=params)
            await send(academy_broker, envelope)

            assert await academy_listener.wait_for(
                lambda: (
                    set(results_for(academy_listener, command_id).values()) == {"done"}
                    and len(results_for(academy_listener, command_id)) == 3
                ),
                20,
            )
            statuses = [
                m["body"]["status"]
                for m in upstream(academy_listener, "result")
                if m["body"].get("device_id") == "tab-0001"
            ]
            assert statuses == ["received", "done"]
            assert all(t.model.apps["org.example.maths"] == "1.2.0" for t in fleet.tablets)


class TestRejections:
    """Each bad envelope is rejected with its reason upstream; the next good one flows."""

    async def test_every_rejection_is_reported_and_the_gateway_keeps_going(
        self, start_gateway, school_broker, academy_broker, academy_listener, caplog
    ):
        signer = AcademySigner(SCHOOL)
        running = await start_gateway(keys(signer))
        gateway = running.gateway
        async with online_fleet(school_broker, gateway, 2) as (_fleet, applier):
            first_id, first = signer.envelope("unlock")
            await send(academy_broker, first)
            assert await wait_until(lambda: len(applier.answered(first_id)) == 2, 15)

            forger = AcademySigner(SCHOOL, key_id=signer.key_id)
            stranger = AcademySigner(SCHOOL, key_id="academy-unknown")
            altered = json.loads(signer.envelope("lock")[1])
            payload = base64.b64decode(altered["payload"]).replace(b'"lock"', b'"wipe"')
            altered["payload"] = base64.b64encode(payload).decode()
            unsigned_fields = json.loads(signer.payload("lock"))
            del unsigned_fields["targets"]
            missing = signer.key.sign(json.dumps(unsigned_fields).encode())
            missing_envelope = {
                "key_id": signer.key_id,
                "payload": base64.b64encode(json.dumps(unsigned_fields).encode()).decode(),
                "signature": base64.b64encode(missing).decode(),
            }
            now = time.time()
            bad = [
                ("bad_signature", forger.envelope("wipe")[1]),
                ("unknown_key", stranger.envelope("wipe")[1]),
                ("bad_signature", json.dumps(altered).encode()),
                ("replayed", first),
                ("expired", signer.envelope("lock", issued_at=now - 7200, ttl_s=3600)[1]),
                ("not_yet_valid", signer.envelope("lock", issued_at=now + 3600)[1]),
                ("too_large", b"{" + b" " * 20_000 + b"}"),
                ("not_json", b"lock all tablets please"),
                ("unknown_action", signer.envelope("format_disk")[1]),
                ("missing_field", json.dumps(missing_envelope).encode()),
            ]
            for _, envelope in bad:
                await send(academy_broker, envelope)
            good_id, good = signer.envelope("message", params={"text": "Bonjour"})
            await send(academy_broker, good)

            assert await academy_listener.wait_for(
                lambda: len(rejections(academy_listener)) >= len(bad), 20
            )
            reasons = [r["reason"] for r in rejections(academy_listener)]
            assert reasons == [reason for reason, _ in bad]
            replay = rejections(academy_listener)[3]
            assert replay["command_id"] == first_id
            assert "identical envelope" in replay["detail"]
            assert await wait_until(lambda: len(applier.answered(good_id)) == 2, 15)
            assert all(m.message == "Bonjour" for m in applier.memory.values())
            for reason, _ in bad:
                assert gateway.counters.get("command_envelopes_rejected", reason=reason) >= 1
            assert gateway.counters.get("command_envelopes_rejected") == len(bad)
            assert gateway.counters.get("commands_accepted") == 2
            assert "rejected command envelope" in caplog.text
            assert not running.task.done()
            # Nothing rejected was ever delivered.
            for memory in applier.memory.values():
                assert memory.order == [first_id, good_id]


@pytest.mark.parametrize("target", [{"devices": ["tab-0999"]}, {"group": "class-77"}])
class TestNoTablets:
    """A command for nobody known yet is accepted, and says so."""

    async def test_progress_shows_the_targets(
        self, start_gateway, academy_broker, academy_listener, target
    ):
        signer = AcademySigner(SCHOOL)
        await start_gateway(keys(signer))
        command_id, envelope = signer.envelope("reboot", targets=target)
        await send(academy_broker, envelope)
        assert await academy_listener.wait_for(
            lambda: latest_progress(academy_listener, command_id) is not None, 10
        )
        progress = latest_progress(academy_listener, command_id)
        expected = 1 if "devices" in target else 0
        assert progress is not None
        assert progress["targets"] == expected
        assert progress["waiting"] == expected
