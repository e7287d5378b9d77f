"""Tablet results in: validate, commit with their upstream messages, then acknowledge.

Results from ``tablets/+/results`` wait in a bounded queue; the writer takes
up to ``batch_size`` at a time (or what arrived within ``batch_window_s``),
records each answer on its delivery row, and in the SAME transaction puts in
the outbox one ``delivery`` result per changed delivery and one ``progress``
result per command touched. Only after COMMIT is each message acknowledged
to the school broker, so a crash makes the broker redeliver it, and
confirmed to the tablet (``on_confirm``, gateway.commands.confirmations),
which re-sends it until then: the broker's PUBACK alone does not survive a
power cut of the box.

A repeated answer (the tablet answering a redelivery again) changes nothing
and sends nothing. A result that is malformed or names no delivery of that
tablet is counted under ``command_results_rejected_<reason>``, logged with the
device, and acknowledged.

At the queue bound ``accept`` waits (the school broker holds the rest).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.batching import next_batch
from gateway.broker.link import Inbound
from gateway.commands import queue
from gateway.commands.confirmations import Confirmation
from gateway.commands.progress import TabletResult, delivery_body, parse_result
from gateway.errors import RejectedInput
from gateway.metrics import Counters
from gateway.relay.outbox import enqueue
from gateway.store.database import Database
from gateway.store.health import retry_while_unavailable
from gateway.topics import parse_tablet_topic

log = logging.getLogger(__name__)

QUEUE_LIMIT = 5_000

Acknowledge = Callable[[Inbound], None]


class CommandResults:
    """Turns tablets' answers into committed delivery states and upstream results."""

    def __init__(
        self,
        db: Database,
        counters: Counters,
        acknowledge: Acknowledge,
        *,
        on_committed: Callable[[], None],
        on_confirm: Callable[[list[Confirmation]], None] | None = None,
        batch_size: int = 500,
        batch_window_s: float = 0.02,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._counters = counters
        self._acknowledge = acknowledge
        self._on_committed = on_committed
        self._on_confirm = on_confirm
        self._batch_size = batch_size
        self._batch_window_s = batch_window_s
        self._clock = clock
        self._queue: asyncio.Queue[Inbound] = asyncio.Queue(maxsize=QUEUE_LIMIT)

    async def accept(self, message: Inbound) -> None:
        """Queue one result from the school broker (waits at the bound)."""
        if self._queue.full():
            self._counters.inc("command_results_queue_full_waits")
        await self._queue.put(message)

    async def run(self) -> None:
        while True:
            batch = await next_batch(self._queue, self._batch_size, self._batch_window_s)
            await self._store(batch)

    async def _commit(
        self, results: list[TabletResult], now: float
    ) -> tuple[list[queue.Transition], list[TabletResult]]:
        async with self._db.transaction() as conn:
            changed, unknown = await queue.apply_results(conn, results, now)
            for t in changed:
                await enqueue(
                    conn, "result", delivery_body(t.command_id, t.device_id, t.state, t.detail, now)
                )
            for progress in await queue.progress_of(conn, {t.command_seq for t in changed}):
                await enqueue(conn, "result", progress.as_body())
        return changed, unknown

    async def _store(self, batch: list[Inbound]) -> None:
        results = [r for r in map(self._parse, batch) if r is not None]
        now = self._clock()
        changed, unknown = await retry_while_unavailable(lambda: self._commit(results, now))
        for message in batch:
            self._acknowledge(message)
        if self._on_confirm is not None and results:
            refused = {(r.device_id, r.command_id, r.status) for r in unknown}
            self._on_confirm(
                [
                    Confirmation(
                        r,
                        "unknown_command"
                        if (r.device_id, r.command_id, r.status) in refused
                        else None,
                    )
                    for r in results
                ]
            )
        self._counters.inc("command_results_received", len(results))
        self._counters.inc("command_results_recorded", len(changed))
        self._counters.inc("command_results_repeated", len(results) - len(changed) - len(unknown))
        for result in unknown:
            self._counters.inc("command_results_rejected", reason="unknown_command")
            log.warning(
                "rejected result from device %r: no delivery of command %r to it",
                result.device_id,
                result.command_id,
            )
        if changed:
            self._on_committed()

    def _parse(self, message: Inbound) -> TabletResult | None:
        topic = parse_tablet_topic(message.topic)
        if topic is None or topic.channel != "results":
            self._counters.inc("command_results_rejected", reason="bad_topic")
            return None
        try:
            return parse_result(topic.device_id, message.payload)
        except RejectedInput as exc:
            self._counters.inc("command_results_rejected", reason=exc.reason)
            log.warning("rejected result from device %r: %s", topic.device_id[:80], exc)
            return None
