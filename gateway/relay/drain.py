"""Drain the outbox to the academy broker while the link is up.

One batch at a time: the next pending rows in priority order (results and
rejections, then summaries, then tablet state; sequence order within a
kind), as many of one kind as fit ``batch_max_bytes`` once compressed
(gateway.relay.wire), paced under ``max_bytes_per_s`` (gateway.pacing),
published with QoS 1 on ``.../up/<kind>``. Only after the PUBACK are the rows
removed (gateway.relay.outbox.acknowledge). If the link drops mid-batch the
rows stay and go again later with the same sequence numbers; the academy
drops the duplicates by (gateway_id, seq).

Only one batch is in flight, so a tablet's messages never overtake each
other, across reconnects too (and a tablet has at most one pending state).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from gateway.backoff import backoff_delay
from gateway.broker.link import BrokerLink
from gateway.errors import BrokerError
from gateway.metrics import Counters
from gateway.pacing import TokenBucket
from gateway.relay import outbox
from gateway.relay.wire import envelope_line, fit_batch
from gateway.store.database import Database
from gateway.store.health import retry_while_unavailable
from gateway.topics import academy_up

log = logging.getLogger(__name__)

MQTT_OVERHEAD_BYTES = 8  # fixed header, packet id, topic length: what pacing charges on top


class OutboxDrain:
    """Sends pending outbox rows upstream, highest priority first, in paced batches."""

    def __init__(
        self,
        db: Database,
        academy: BrokerLink,
        counters: Counters,
        *,
        school_id: str,
        gateway_id: str,
        max_bytes_per_s: int = 50_000,
        batch_max_bytes: int = 64_000,
        batch_rows: int = 1_000,
    ) -> None:
        self._db = db
        self._academy = academy
        self._counters = counters
        self._school_id = school_id
        self._gateway_id = gateway_id
        self._batch_max_bytes = batch_max_bytes
        self._batch_rows = batch_rows
        self._pacer = TokenBucket(max_bytes_per_s, burst=max(batch_max_bytes, max_bytes_per_s))
        self._work = asyncio.Event()
        # kind -> when the academy broker last acknowledged a batch of it (the console shows it).
        self.last_acked: dict[str, float] = {}

    def notify(self) -> None:
        """New rows were committed."""
        self._work.set()

    async def run(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            await self._academy.connected.wait()
            self._work.clear()
            rows = await outbox.next_batch(self._db, self._batch_rows)
            if not rows:
                await self._work.wait()
                continue
            kind = rows[0].kind
            rows = [row for row in rows if row.kind == kind]
            lines = [
                envelope_line(
                    school_id=self._school_id,
                    gateway_id=self._gateway_id,
                    seq=row.seq,
                    kind=row.kind,
                    body_json=row.body_json,
                )
                for row in rows
            ]
            payload, count = fit_batch(lines, self._batch_max_bytes)
            rows = rows[:count]
            topic = academy_up(self._school_id, self._gateway_id, kind)
            delay = self._pacer.take(len(payload) + len(topic) + MQTT_OVERHEAD_BYTES, loop.time())
            if delay > 0:
                self._counters.inc("upstream_paced_waits")
                await asyncio.sleep(delay)
            try:
                await self._academy.publish(topic, payload, qos=1)
            except BrokerError as exc:
                self._counters.inc("upstream_batches_failed")
                log.info("outbox drain paused: %s", exc)
                await asyncio.sleep(backoff_delay(failures, cap_s=5.0))
                failures += 1
                continue
            failures = 0
            await retry_while_unavailable(functools.partial(outbox.acknowledge, self._db, rows))
            self.last_acked[kind] = time.time()
            self._counters.inc("upstream_batches_sent")
            self._counters.inc("upstream_bytes_sent", len(payload))
            self._counters.inc("upstream_messages_sent", len(rows), kind=kind)
