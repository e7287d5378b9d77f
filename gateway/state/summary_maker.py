"""Make a school summary every ``uplink.summary_interval_s`` and put it in the outbox.

The adapter around gateway.state.summary.build_summary: it reads the shadow,
the backlog and the shed totals from the store and the box health, builds
the summary, and enqueues it (and enforces the outbox budget) in one
transaction. The first summary is made right after start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.metrics import Counters
from gateway.relay import outbox
from gateway.relay.outbox import OutboxBudget
from gateway.state.summary import SummaryRules, TabletView, build_summary
from gateway.store.database import Database
from gateway.store.health import retry_while_unavailable

log = logging.getLogger(__name__)

HealthSource = Callable[[], Mapping[str, Any]]


async def load_tablet_views(db: Database) -> list[TabletView]:
    rows = await db.fetch_all("SELECT device_id, online, last_seen, state FROM shadow")
    return [TabletView(r[0], bool(r[1]), r[2], json.loads(r[3])) for r in rows]


class SummaryMaker:
    """The periodic summary task."""

    def __init__(
        self,
        db: Database,
        budget: OutboxBudget,
        counters: Counters,
        *,
        interval_s: float,
        rules: SummaryRules,
        health: HealthSource,
        extra: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        self._db = db
        self._budget = budget
        self._counters = counters
        self._interval_s = interval_s
        self._rules = rules
        self._health = health
        self._extra = extra
        self._on_committed = on_committed
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Make the next summary now (news that should not wait for the interval)."""
        self._wake.set()

    async def _enqueue(self, body: dict[str, Any], now: float) -> None:
        async with self._db.transaction() as conn:
            await outbox.enqueue(conn, "summary", body, now=now)
            await self._budget.enforce(conn)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await self.make_one()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)

    async def make_one(self) -> dict[str, Any]:
        """Build one summary from the store and enqueue it; returns its body."""
        now = time.time()
        body = build_summary(
            await load_tablet_views(self._db),
            now=now,
            rules=self._rules,
            health=self._health(),
            backlog=await outbox.backlog(self._db, now),
            shed=await outbox.shed_totals(self._db),
        )
        if self._extra is not None:  # other flows' sections (the cache's)
            body.update(await self._extra())
        await retry_while_unavailable(lambda: self._enqueue(body, now))
        self._counters.inc("summaries_made")
        if self._on_committed is not None:
            self._on_committed()
        return body
