"""Direct relay: publish each stored state report upstream at once, if the link is up.

This is the thin end-to-end path; it does not keep what it cannot send.
Every message carries the gateway id and a per-gateway sequence number
reserved durably in the store, so the academy can drop duplicates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from gateway.broker.link import BrokerLink
from gateway.errors import BrokerError
from gateway.metrics import Counters
from gateway.state.report import StateReport
from gateway.store.database import Database, next_sequence
from gateway.topics import academy_up

log = logging.getLogger(__name__)

SEQUENCE_NAME = "upstream_seq"


def upstream_message(
    *, school_id: str, gateway_id: str, seq: int, kind: str, body: dict[str, Any]
) -> bytes:
    """The JSON form of one upstream message (docs/protocol.md)."""
    envelope = {"school_id": school_id, "gateway_id": gateway_id, "seq": seq, "kind": kind}
    envelope["body"] = body
    return json.dumps(envelope, separators=(",", ":")).encode()


class DirectRelay:
    """Sends stored reports to the academy broker while it is connected."""

    def __init__(
        self,
        db: Database,
        academy: BrokerLink,
        counters: Counters,
        *,
        school_id: str,
        gateway_id: str,
    ) -> None:
        self._db = db
        self._academy = academy
        self._counters = counters
        self._school_id = school_id
        self._gateway_id = gateway_id

    async def relay_states(self, reports: Sequence[StateReport]) -> None:
        if not self._academy.is_connected:
            self._counters.inc("state_not_relayed_link_down", len(reports))
            return
        async with self._db.transaction() as conn:
            first = await next_sequence(conn, SEQUENCE_NAME, len(reports))
        topic = academy_up(self._school_id, self._gateway_id, "state")
        for offset, report in enumerate(reports):
            payload = upstream_message(
                school_id=self._school_id,
                gateway_id=self._gateway_id,
                seq=first + offset,
                kind="state",
                body=report.as_dict(),
            )
            try:
                await self._academy.publish(topic, payload, qos=1)
            except BrokerError as exc:
                self._counters.inc("state_not_relayed_link_down", len(reports) - offset)
                log.warning("state relay interrupted: %s", exc)
                return
            self._counters.inc("state_relayed_upstream")
