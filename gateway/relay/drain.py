"""Drain the outbox to the academy broker while the link is up.

A row is deleted only after the academy broker acknowledged it (QoS 1
PUBACK). If the link drops mid-batch the unacknowledged rows stay and are
sent again later; the academy drops the duplicates by (gateway_id, seq).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from gateway.broker.link import BrokerLink
from gateway.errors import BrokerError
from gateway.metrics import Counters
from gateway.relay import outbox
from gateway.store.database import Database
from gateway.topics import academy_up

log = logging.getLogger(__name__)


def upstream_message(
    *, school_id: str, gateway_id: str, seq: int, kind: str, body: dict[str, Any]
) -> bytes:
    """The JSON form of one upstream message (docs/protocol.md)."""
    envelope = {"school_id": school_id, "gateway_id": gateway_id, "seq": seq, "kind": kind}
    envelope["body"] = body
    return json.dumps(envelope, separators=(",", ":")).encode()


class OutboxDrain:
    """Sends pending outbox rows upstream, highest priority first."""

    def __init__(
        self,
        db: Database,
        academy: BrokerLink,
        counters: Counters,
        *,
        school_id: str,
        gateway_id: str,
        batch_rows: int = 200,
    ) -> None:
        self._db = db
        self._academy = academy
        self._counters = counters
        self._school_id = school_id
        self._gateway_id = gateway_id
        self._batch_rows = batch_rows
        self._work = asyncio.Event()

    def notify(self) -> None:
        """New rows were committed."""
        self._work.set()

    async def run(self) -> None:
        while True:
            await self._academy.connected.wait()
            self._work.clear()
            batch = await outbox.next_batch(self._db, self._batch_rows)
            if not batch:
                await self._work.wait()
                continue
            try:
                await asyncio.gather(*(self._send(row) for row in batch))
            except BrokerError as exc:
                log.info("outbox drain paused: %s", exc)
                await self._academy.wait_disconnected()
                continue
            await outbox.remove(self._db, [row.seq for row in batch])
            for row in batch:
                self._counters.inc(f"upstream_{row.kind}_sent")

    async def _send(self, row: outbox.OutboxRow) -> None:
        payload = upstream_message(
            school_id=self._school_id,
            gateway_id=self._gateway_id,
            seq=row.seq,
            kind=row.kind,
            body=row.body,
        )
        topic = academy_up(self._school_id, self._gateway_id, row.kind)
        await self._academy.publish(topic, payload, qos=1)
