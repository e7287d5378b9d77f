"""Ingest of tablet state reports and presence: validate, batch, commit, then ack.

``accept`` validates each message as it arrives (the router has parsed its
topic) and returns what it parsed, so the caller can act on a presence at
once; the message and its parsed value then wait in a bounded queue. The
writer takes up to ``batch_size`` at a time (or what arrived within
``batch_window_s``), stores the valid ones in ONE transaction, and only after
COMMIT acknowledges every message of the batch to the broker. Within a batch
only the latest report of each tablet is written (the others are acknowledged
too: they lost to a newer one). The same transaction marks each stored report
pending upstream on its shadow row (gateway.relay.outbox: latest per tablet
wins) and keeps the outbox under its byte budget, so what is acknowledged is
also queued for the academy, and one commit carries up to ``batch_size``
reports (SD-card wear). A rejected message is counted, logged with the device
and the reason, and acknowledged (redelivering it would not make it valid).

At the queue bound, ``accept`` waits: the MQTT link stops reading, the
broker stops sending once our in-flight window is full, and tablets' QoS 1
publishes queue at the broker. Nothing is dropped here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from gateway.batching import next_batch
from gateway.broker.link import Inbound
from gateway.errors import RejectedInput
from gateway.metrics import Counters
from gateway.relay.outbox import OutboxBudget, reserve_sequence
from gateway.state.report import Presence, StateReport, parse_presence, parse_state_report
from gateway.state.shadow import standings, store_presence, store_reports, winners
from gateway.store.database import Database
from gateway.store.health import retry_while_unavailable
from gateway.topics import TabletTopic

log = logging.getLogger(__name__)

QUEUE_LIMIT = 5_000
# One commit rewrites the shadow pages it touches (with 300 tablets, nearly
# all of them), so disk bytes per report fall with reports per commit:
# measured 344 B/report with 500 reports or 50 ms. A second's wait before
# the broker gets its acknowledgement costs nobody anything.
BATCH_SIZE = 2_000
BATCH_WINDOW_S = 1.0

AcknowledgeAll = Callable[[Sequence[Inbound]], None]
Parsed = StateReport | Presence | None  # None: rejected, or nothing to store


class StateIngest:
    """Turns inbound tablet messages into committed shadow rows."""

    def __init__(
        self,
        db: Database,
        counters: Counters,
        acknowledge_all: AcknowledgeAll,
        *,
        max_report_bytes: int,
        budget: OutboxBudget | None = None,
        on_committed: Callable[[], None] | None = None,
        batch_size: int = BATCH_SIZE,
        batch_window_s: float = BATCH_WINDOW_S,
    ) -> None:
        self._db = db
        self._counters = counters
        self._acknowledge_all = acknowledge_all
        self._on_committed = on_committed
        self._max_report_bytes = max_report_bytes
        self._budget = budget
        self._batch_size = batch_size
        self._batch_window_s = batch_window_s
        self._queue: asyncio.Queue[tuple[Inbound, Parsed]] = asyncio.Queue(maxsize=QUEUE_LIMIT)

    async def accept(self, message: Inbound, topic: TabletTopic) -> Parsed:
        """Validate and queue one state or status message (waits at the bound)."""
        parsed = self._parse(message, topic)
        if self._queue.full():
            self._counters.inc("state_ingest_queue_full_waits")
        await self._queue.put((message, parsed))
        return parsed

    async def run(self) -> None:
        while True:
            batch = await next_batch(self._queue, self._batch_size, self._batch_window_s)
            await self._store_batch(batch)

    async def _store_batch(self, batch: list[tuple[Inbound, Parsed]]) -> None:
        reports: list[StateReport] = []
        presences: list[Presence] = []
        for _, parsed in batch:
            if isinstance(parsed, StateReport):
                reports.append(parsed)
            elif isinstance(parsed, Presence):
                presences.append(parsed)
        now = time.time()
        # A full disk: keep the batch, unacknowledged, until it commits.
        await retry_while_unavailable(lambda: self._commit(reports, presences, now))
        self._acknowledge_all([message for message, _ in batch])
        self._counters.inc("state_reports_stored", len(reports))
        self._counters.inc("presence_updates_stored", len(presences))
        if reports and self._on_committed is not None:
            self._on_committed()

    async def _commit(
        self, reports: Sequence[StateReport], presences: Sequence[Presence], now: float
    ) -> None:
        async with self._db.transaction() as conn:
            # Only reports newer than the stored one (gateway.state.order) are written.
            latest = winners(reports, await standings(conn, (r.device_id for r in reports)))
            if latest:
                first_seq = await reserve_sequence(conn, len(latest))
                await store_reports(conn, latest, now, first_seq)
                if self._budget is not None:
                    await self._budget.enforce(conn)
            if presences:
                await store_presence(conn, presences, now)

    def _parse(self, message: Inbound, topic: TabletTopic) -> Parsed:
        try:
            if topic.channel == "state":
                self._counters.inc("state_reports_received")
                return parse_state_report(
                    topic.device_id, message.payload, max_bytes=self._max_report_bytes
                )
            if topic.channel == "status":
                if not message.payload:  # a cleared retained status
                    return None
                return parse_presence(topic.device_id, message.payload)
        except RejectedInput as exc:
            self._counters.inc("tablet_messages_rejected", channel=topic.channel, reason=exc.reason)
            log.warning(
                "rejected %s message from device %r: %s",
                topic.channel,
                topic.device_id[:80],
                exc,
            )
            return None
        return None
