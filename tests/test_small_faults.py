"""Issue 15 item 11, the smaller faults: an empty admin token, the outbox's peak."""

from __future__ import annotations

import os

import aiohttp

from gateway.metrics import Counters
from gateway.relay import outbox
from gateway.relay.outbox import OutboxBudget
from gateway.security.admin_token import TOKEN_FILE, read_admin_token
from gateway.store.database import Database


class TestAdminToken:
    """A token file left empty by an interrupted first start does not lock the API out."""

    async def test_empty_token_file_is_replaced_and_status_answers(self, tmp_path, start_gateway):
        state = tmp_path / "state"
        state.mkdir()
        fd = os.open(state / TOKEN_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        running = await start_gateway()
        token = read_admin_token(state)
        assert len(token) >= 32
        port = running.gateway.config.http.port
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{port}/api/status",
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            assert response.status == 200
            assert (await response.json())["gateway_id"] == "gw-test"
        assert oct((state / TOKEN_FILE).stat().st_mode & 0o777) == "0o600"


class TestOutboxPeak:
    """The reported peak sees every committed excursion, not just the budget checks'."""

    async def test_results_added_between_budget_checks_count_in_the_peak(self, tmp_path):
        db = await Database.open(tmp_path / "gateway.db")
        outbox.track_peak(db)
        budget = OutboxBudget(10_000, Counters())
        try:
            # Command results arrive one transaction at a time; nobody enforces the budget.
            for i in range(40):
                async with db.transaction() as conn:
                    await outbox.enqueue(conn, "result", {"command_id": f"c{i}", "pad": "x" * 500})
            high = (await outbox.backlog(db))["bytes"]
            assert high > budget.budget_bytes
            rows = await outbox.next_batch(db, 1000)
            await outbox.acknowledge(db, rows)  # the uplink drained it all
            async with db.transaction() as conn:
                await budget.enforce(conn)
            assert (await outbox.backlog(db))["bytes"] == 0
            assert await outbox.peak_bytes(db) == high
        finally:
            await db.close()
