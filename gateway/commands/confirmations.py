"""Result confirmations out: tell a tablet its result is committed (docs/protocol.md).

The school broker acknowledges a tablet's result (its PUBACK) as soon as it
has it, in memory; a power cut of the box can lose it after that. So the
gateway confirms each result on ``tablets/<device>/results/ack`` only after
the transaction holding it committed (``gateway.commands.results``), and a
tablet keeps re-sending a result until it sees that confirmation. Every
result that could be read is confirmed: recorded, repeated (already known),
or refused because no delivery of that command went to the tablet (the
confirmation says ``refused``, so the tablet stops re-sending it).

Confirmations wait in a bounded queue (``QUEUE_LIMIT``). At the bound, or
when a publish fails, a confirmation is dropped and counted
(``command_result_confirmations_dropped``): nothing is lost, the tablet
re-sends its result and the gateway confirms it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from gateway import topics
from gateway.broker.link import BrokerLink
from gateway.commands.progress import TabletResult
from gateway.errors import BrokerError
from gateway.metrics import Counters

log = logging.getLogger(__name__)

QUEUE_LIMIT = 10_000
PUBLISH_CHUNK = 500


@dataclass(frozen=True)
class Confirmation:
    """One committed (or refused) result to confirm to its tablet."""

    result: TabletResult
    refused: str | None = None  # why the gateway will not record it, if so

    def topic(self) -> str:
        return topics.tablet_results_ack(self.result.device_id)

    def payload(self) -> bytes:
        body: dict[str, str] = {
            "command_id": self.result.command_id,
            "status": self.result.status,
        }
        if self.refused is not None:
            body["refused"] = self.refused
        return json.dumps(body, separators=(",", ":")).encode()


class ResultConfirmations:
    """Publishes confirmations on the tablets' ``results/ack`` topics, after commit."""

    def __init__(self, link: BrokerLink, counters: Counters) -> None:
        self._link = link
        self._counters = counters
        self._queue: asyncio.Queue[Confirmation] = asyncio.Queue(maxsize=QUEUE_LIMIT)

    def confirm(self, confirmations: list[Confirmation]) -> None:
        """Queue confirmations (call only after their results committed); never waits."""
        for confirmation in confirmations:
            try:
                self._queue.put_nowait(confirmation)
            except asyncio.QueueFull:
                self._counters.inc("command_result_confirmations_dropped")

    async def run(self) -> None:
        while True:
            chunk = [await self._queue.get()]
            while len(chunk) < PUBLISH_CHUNK and not self._queue.empty():
                chunk.append(self._queue.get_nowait())
            await self._publish(chunk)

    async def _publish(self, chunk: list[Confirmation]) -> None:
        outcomes = await asyncio.gather(
            *(self._link.publish(c.topic(), c.payload(), qos=1) for c in chunk),
            return_exceptions=True,
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        for outcome in failed:
            if not isinstance(outcome, BrokerError):
                raise outcome
        if failed:
            # The tablets re-send those results; they are confirmed then.
            self._counters.inc("command_result_confirmations_dropped", len(failed))
            log.info("%d result confirmations not published: %s", len(failed), failed[0])
        self._counters.inc("command_result_confirmations_sent", len(chunk) - len(failed))
