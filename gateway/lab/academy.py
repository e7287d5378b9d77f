"""A listener on the academy broker: collects what gateways send upstream.

Used by the demo, the tests and the benchmarks to see exactly what the
academy would see. Messages are kept in a bounded deque (oldest dropped,
counted in ``dropped``).
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import contextlib
import itertools
from dataclasses import dataclass

import aiomqtt


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes


class AcademyListener:
    """Subscribes to ``topic_filter`` on the academy broker and keeps what arrives."""

    _ids = itertools.count(1)

    def __init__(
        self, host: str, port: int, topic_filter: str = "schools/#", limit: int = 1_000_000
    ) -> None:
        self.host = host
        self.port = port
        self.topic_filter = topic_filter
        self.messages: collections.deque[Received] = collections.deque(maxlen=limit)
        self.total = 0
        self.total_bytes = 0
        self.subscribed = asyncio.Event()
        self._arrived = asyncio.Condition()

    @property
    def dropped(self) -> int:
        return self.total - len(self.messages)

    async def run(self) -> None:
        """Listen until cancelled, reconnecting if the broker restarts."""
        identifier = f"academy-listener-{next(self._ids)}"
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=identifier, clean_session=False
                ) as client:
                    await client.subscribe(self.topic_filter, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        payload = message.payload
                        data = payload if isinstance(payload, bytes) else b""
                        self.messages.append(Received(message.topic.value, data))
                        self.total += 1
                        self.total_bytes += len(data)
                        async with self._arrived:
                            self._arrived.notify_all()
            except aiomqtt.MqttError:
                self.subscribed.clear()
                await asyncio.sleep(0.2)

    async def wait_for(
        self, predicate: collections.abc.Callable[[], bool], within_s: float
    ) -> bool:
        """Wait until ``predicate()`` holds after some message arrives (or timeout)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s), self._arrived:
                await self._arrived.wait_for(predicate)
        return predicate()
