"""One ingest worker: the academy broker's shared subscription into PostgreSQL.

Each worker process connects to the academy broker as
``<client_id_prefix>-<n>`` with a persistent session and subscribes, QoS 1,
to ``$share/<group>/schools/+/gateways/+/up/+``: the broker hands each
upstream payload to one worker of the group, so adding a worker adds
capacity. Worker 1 alone also subscribes (not shared) to the gateways'
retained status topic: retained messages are not sent to shared
subscriptions, and one consumer keeps a gateway's online/offline changes in
order.

Durability, the same discipline as the box (gateway.state.ingest):

* payloads wait in a bounded queue (``ingest.queue_payloads``); the writer
  takes up to ``ingest.batch_max_payloads`` of them (or what arrived within
  ``ingest.batch_window_s``), decodes them (gateway.academy.ingest.upstream),
  applies them in ONE transaction (gateway.academy.ingest.apply) together
  with the refusals and the worker's counters, and only after COMMIT
  acknowledges every payload of the batch (PUBACK) to the broker;
* a worker killed at any point has acknowledged only committed payloads: the
  broker redelivers the rest when it comes back (same client id, persistent
  session), and ``upstream_seen`` drops what was committed but not yet
  acknowledged. Nothing is lost, nothing is applied twice;
* PostgreSQL down or restarting: the batch is retried with capped, jittered
  backoff until it commits, holding its messages unacknowledged; the queue
  fills and the worker stops reading (below);
* a payload PostgreSQL refuses (e.g. a NUL character jsonb cannot hold):
  the batch is applied again payload by payload, and the one refused is
  counted (``ingest_refused_store``), logged, recorded and acknowledged.

At the bound: when the queue is full, ``_accept`` waits, so the broker link
stops reading its socket (gateway.broker.link pauses its intake), TCP pushes
back, and the broker keeps the rest queued for this worker's session (its
``max_inflight_messages`` and ``max_queued_messages`` bound it there).
Nothing is dropped by the worker; each wait is counted
(``ingest_queue_full_waits``).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from gateway.academy.config import AcademyConfig, broker_tls
from gateway.academy.ingest.apply import Applied, apply_batch, prepare_connection
from gateway.academy.ingest.upstream import (
    DecodedPayload,
    GatewayStatus,
    Refusal,
    Row,
    decode_upstream,
)
from gateway.academy.store.database import RETRYABLE_CATCH, connect, is_transient
from gateway.backoff import backoff_delay
from gateway.batching import next_batch
from gateway.broker.link import BrokerLink, Inbound, LinkSettings
from gateway.metrics import Counters

log = logging.getLogger(__name__)

UP_FILTER = "schools/+/gateways/+/up/+"
STATUS_FILTER = "schools/+/gateways/+/status"
MAX_REFUSALS_RECORDED = 100  # per batch; beyond that they are counted and logged only

SAVE_COUNTERS = """
INSERT INTO ingest_workers (worker, pid, started_at, updated_at, counters)
VALUES ($1, $2, $3, $4, $5::jsonb)
ON CONFLICT (worker) DO UPDATE SET pid = excluded.pid, started_at = excluded.started_at,
    updated_at = excluded.updated_at, counters = excluded.counters
"""

RECORD_REFUSAL = """
INSERT INTO refused_payloads (worker, topic, reason, detail, size, received_at)
VALUES ($1, $2, $3, $4, $5, $6)
"""


class Tally:
    """The worker's own counters (names above), committed as JSON with every batch.

    Not the box's metric catalogue (gateway.metrics): these are the academy
    service's figures, kept in ``ingest_workers`` and shown by the console.
    """

    def __init__(self) -> None:
        self._values: collections.Counter[str] = collections.Counter()

    def inc(self, name: str, amount: int = 1) -> None:
        self._values[name] += amount

    def get(self, name: str) -> int:
        return self._values[name]

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._values.items()))


@dataclass(frozen=True)
class Decoded:
    """One MQTT payload, decoded."""

    message: Inbound
    payload: DecodedPayload


def worker_name(config: AcademyConfig, index: int) -> str:
    return f"{config.broker.client_id_prefix}-{index}"


def subscriptions(config: AcademyConfig, index: int) -> tuple[tuple[str, int], ...]:
    group = config.broker.share_group
    wanted = [(f"$share/{group}/{UP_FILTER}", 1)]
    if index == 1:
        wanted.append((STATUS_FILTER, 1))
    return tuple(wanted)


class IngestWorker:
    """Subscribe, decode, apply in one transaction, then acknowledge."""

    def __init__(self, config: AcademyConfig, index: int) -> None:
        self.config = config
        self.name = worker_name(config, index)
        self.counters = Tally()
        self.link_counters = Counters()  # the broker link's own (gateway.metrics catalogue)
        self._queue: asyncio.Queue[Inbound] = asyncio.Queue(maxsize=config.ingest.queue_payloads)
        self._conn: asyncpg.Connection | None = None
        self._started = datetime.datetime.now(datetime.UTC)
        self.link = BrokerLink(
            LinkSettings(
                name="academy",
                host=config.broker.host,
                port=config.broker.port,
                client_id=self.name,
                keepalive_s=config.broker.keepalive_s,
                subscriptions=subscriptions(config, index),
                tls=broker_tls(config),
            ),
            self.link_counters,
            on_message=self._accept,
        )
        self.committed = asyncio.Event()  # set after every commit (tests wait on it)

    async def run(self) -> None:
        await self._load_counters()
        log.info("ingest worker %s (pid %d) starting", self.name, os.getpid())
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.link.run(), name=f"{self.name}-link")
                group.create_task(self._apply_loop(), name=f"{self.name}-apply")
                group.create_task(self._announce(), name=f"{self.name}-announce")
        finally:
            if self._conn is not None and not self._conn.is_closed():
                self._conn.terminate()

    async def _announce(self) -> None:
        """One log line per connection, once subscribed (tests and operators wait on it)."""
        while True:
            await self.link.connected.wait()
            log.info("ingest worker %s subscribed on the academy broker", self.name)
            await self.link.wait_disconnected()

    async def _accept(self, message: Inbound) -> None:
        """The link's handler: queue one payload (waits at the bound; see the docstring)."""
        if self._queue.full():
            self.counters.inc("ingest_queue_full_waits")
        await self._queue.put(message)

    async def _apply_loop(self) -> None:
        ingest = self.config.ingest
        while True:
            batch = await next_batch(self._queue, ingest.batch_max_payloads, ingest.batch_window_s)
            decoded = [
                Decoded(
                    m,
                    decode_upstream(m.topic, m.payload, max_payload_bytes=ingest.max_payload_bytes),
                )
                for m in batch
            ]
            await self._commit(decoded)
            self.link.ack_all(batch)
            self.committed.set()
            self.committed.clear()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            conn = await connect(
                self.config.database.dsn, timeout_s=self.config.database.connect_timeout_s
            )
            await prepare_connection(conn)
            self._conn = conn
        return self._conn

    async def _load_counters(self) -> None:
        """Carry this worker's counters over a restart (they live in ingest_workers)."""
        attempt = 0
        while True:
            try:
                conn = await self._connection()
                saved = await conn.fetchval(
                    "SELECT counters FROM ingest_workers WHERE worker = $1", self.name
                )
                break
            except RETRYABLE_CATCH as exc:
                await self._wait_for_database(exc, attempt)
                attempt += 1
        if saved:
            for name, value in json.loads(saved).items():
                if isinstance(value, int):
                    self.counters.inc(name, value)

    async def _wait_for_database(self, exc: BaseException, attempt: int) -> None:
        self.counters.inc("ingest_database_retries")
        if self._conn is not None and not self._conn.is_closed():
            self._conn.terminate()
        self._conn = None
        delay = backoff_delay(attempt, base_s=0.2, cap_s=5.0)
        log.warning("ingest %s: PostgreSQL: %s; again in %.1f s", self.name, exc, delay)
        await asyncio.sleep(delay)

    async def _commit(self, decoded: Sequence[Decoded]) -> None:
        """Apply ``decoded`` in one transaction; retried until it commits (see the docstring)."""
        attempt = 0
        while True:
            try:
                await self._apply_once(decoded)
                return
            except RETRYABLE_CATCH as exc:
                if is_transient(exc):
                    await self._wait_for_database(exc, attempt)
                    attempt += 1
                    continue
                if len(decoded) == 1:
                    await self._refuse_stored(decoded[0], exc)
                    return
                log.warning(
                    "ingest %s: PostgreSQL refused a batch of %d payloads (%s); "
                    "applying them one by one",
                    self.name,
                    len(decoded),
                    exc,
                )
                for one in decoded:
                    await self._commit([one])
                return

    async def _apply_once(self, decoded: Sequence[Decoded]) -> None:
        rows: list[Row] = []
        statuses: list[GatewayStatus] = []
        refusals: list[tuple[Inbound, str, str]] = []
        for item in decoded:
            rows.extend(item.payload.rows)
            if item.payload.status is not None:
                statuses.append(item.payload.status)
            refusals.extend((item.message, r.reason, r.detail) for r in item.payload.refusals)
        now = time.time()
        pending = Tally()
        conn = await self._connection()
        async with conn.transaction():
            applied = await apply_batch(conn, rows, statuses, now=now)
            await self._record_refusals(conn, refusals, now)
            self._count(pending, decoded, applied, refusals)
            await self._save_counters(conn, pending, now)
        for name, value in pending.snapshot().items():
            self.counters.inc(name, value)
        for message, reason, detail in refusals:
            log.warning("ingest %s: refused %s on %s: %s", self.name, reason, message.topic, detail)

    def _count(
        self,
        pending: Tally,
        decoded: Sequence[Decoded],
        applied: Applied,
        refusals: list[tuple[Inbound, str, str]],
    ) -> None:
        pending.inc("ingest_batches")
        pending.inc("ingest_payloads", len(decoded))
        pending.inc("ingest_messages", applied.messages)
        pending.inc("ingest_duplicates", applied.duplicates)
        pending.inc("ingest_states", applied.states)
        pending.inc("ingest_states_applied", applied.states_applied)
        pending.inc("ingest_states_older", applied.states - applied.states_applied)
        pending.inc("ingest_summaries", applied.summaries)
        pending.inc("ingest_results", applied.results)
        pending.inc("ingest_rejections", applied.rejections)
        pending.inc("ingest_gateway_statuses", applied.statuses)
        for _, reason, _ in refusals:
            pending.inc("ingest_refused")
            pending.inc(f"ingest_refused_{reason}")

    async def _record_refusals(
        self, conn: asyncpg.Connection, refusals: list[tuple[Inbound, str, str]], now: float
    ) -> None:
        at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        for message, reason, detail in refusals[:MAX_REFUSALS_RECORDED]:
            await conn.execute(
                RECORD_REFUSAL,
                self.name,
                message.topic[:200],
                reason,
                detail[:500],
                len(message.payload),
                at,
            )

    async def _save_counters(self, conn: asyncpg.Connection, pending: Tally, now: float) -> None:
        totals = self.counters.snapshot()
        for name, value in pending.snapshot().items():
            totals[name] = totals.get(name, 0) + value
        await conn.execute(
            SAVE_COUNTERS,
            self.name,
            os.getpid(),
            self._started,
            datetime.datetime.fromtimestamp(now, datetime.UTC),
            json.dumps(totals, sort_keys=True),
        )

    async def _refuse_stored(self, item: Decoded, exc: BaseException) -> None:
        """A payload PostgreSQL will not take: record the refusal instead of it."""
        if not item.payload.rows and item.payload.status is None:
            # Even the refusal alone failed: log it; acknowledging is all that is left.
            log.error(
                "ingest %s: cannot record a refusal on %s: %s", self.name, item.message.topic, exc
            )
            return
        refusal = Refusal("store", f"PostgreSQL refused it: {str(exc)[:300]}")
        replaced = Decoded(item.message, DecodedPayload(item.payload.origin, refusals=[refusal]))
        await self._commit([replaced])
