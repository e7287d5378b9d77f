"""A TCP proxy on loopback that can cut the link (tests, demo, benchmarks).

Put it between the gateway and the academy broker: ``cut()`` closes every
open connection at once (nothing buffered is flushed: what was in flight is
lost, as when a rural uplink drops) and stops listening, so new connections
are refused at once, until ``restore()``.
It counts the bytes it forwarded in each direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.lab.mosquitto import free_port
from gateway.lab.running import StartStop

log = logging.getLogger(__name__)

CHUNK = 65_536


class LinkProxy(StartStop):
    """Forwards 127.0.0.1:``port`` to ``target_host``:``target_port`` while the link is up."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.target_host = target_host
        self.target_port = target_port
        self.bytes_up = 0  # client -> target
        self.bytes_down = 0  # target -> client
        self.cuts = 0
        self.connections = 0
        self._up = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def is_up(self) -> bool:
        return self._up

    async def start(self) -> None:
        self._up = True
        self._server = await asyncio.start_server(self._accept, self.host, self.port)

    async def stop(self) -> None:
        cuts = self.cuts
        self.cut()
        self.cuts = cuts  # stopping is not an outage
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def cut(self) -> None:
        """Drop every connection now and refuse new ones until ``restore``."""
        if self._up:
            self.cuts += 1
        self._up = False
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        """Listen again."""
        if self._server is None:
            await self.start()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.transport.abort()
            return
        try:
            target_reader, target_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        if not self._up:  # cut while we were connecting
            writer.transport.abort()
            target_writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, target_writer))
        up = asyncio.create_task(self._pump(reader, target_writer, up=True))
        down = asyncio.create_task(self._pump(target_reader, writer, up=False))
        self._tasks.update((up, down))
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self._tasks.discard(task)
            for w in (writer, target_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while self._up:
                data = await reader.read(CHUNK)
                if not data or not self._up:
                    return
                writer.write(data)
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                await writer.drain()
