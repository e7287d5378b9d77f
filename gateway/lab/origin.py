"""A real HTTP origin on loopback that tests, the demo and the benchmarks control.

Serves blobs held in memory at ``/files/<name>`` (GET, HEAD, one byte range)
through aiohttp. The knobs model a bad uplink:

- ``rate_bytes_per_s``: one token bucket shared by every connection (0 = no limit);
- ``cut_after(n, times)``: the next ``times`` responses drop the connection
  after ``n`` body bytes;
- ``corrupt``: one byte in the middle of every blob is flipped as it is sent;
- ``stop()`` / ``start()``: unreachable, then back on the same port.

What was asked is kept in ``requests`` (a bounded deque), ``bytes_sent`` and
``sent_by_name``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass

from aiohttp import web

from gateway.cache.rules import RangeNotSatisfiable
from gateway.cache.rules import byte_range as byte_range_of
from gateway.lab.mosquitto import free_port
from gateway.lab.running import StartStop
from gateway.pacing import TokenBucket

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
# A shaped link keeps its rate when the sender's process wakes late: credit for
# up to this much lateness is kept, so a busy test machine does not slow the
# "uplink" below its rate (one chunk of credit lost ~10 % at 8 MB/s here).
PACING_SLACK_S = 0.1


def _bucket(rate_bytes_per_s: float) -> TokenBucket:
    burst = max(CHUNK, rate_bytes_per_s * PACING_SLACK_S)
    return TokenBucket(rate_bytes_per_s, burst=burst, now=time.monotonic())


@dataclass(frozen=True)
class OriginRequest:
    name: str
    range: str | None


class Origin(StartStop):
    """Start with ``async with Origin() as origin``; ``origin.add(name, data)`` gives the URL."""

    def __init__(self, rate_bytes_per_s: float = 0, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.blobs: dict[str, bytes] = {}
        self.corrupt = False
        self.bytes_sent = 0
        self.sent_by_name: collections.Counter[str] = collections.Counter()
        self.requests: collections.deque[OriginRequest] = collections.deque(maxlen=10_000)
        self._bucket = _bucket(rate_bytes_per_s)
        self._cuts: list[int] = []
        self._runner: web.AppRunner | None = None

    @property
    def rate_bytes_per_s(self) -> float:
        return self._bucket.rate

    @rate_bytes_per_s.setter
    def rate_bytes_per_s(self, rate: float) -> None:
        self._bucket = _bucket(rate)

    def add(self, name: str, data: bytes) -> str:
        self.blobs[name] = data
        return self.url(name)

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.port}/files/{name}"

    def cut_after(self, nbytes: int, times: int = 1) -> None:
        self._cuts.extend([nbytes] * times)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/files/{name}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        blob = self.blobs.get(name)
        self.requests.append(OriginRequest(name, request.headers.get("Range")))
        if blob is None:
            return web.Response(status=404, text="no such file")
        try:
            byte_range = byte_range_of(request.http_range, len(blob))
        except (ValueError, RangeNotSatisfiable):
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(blob)}"})
        start, end = (byte_range.start, byte_range.end + 1) if byte_range else (0, len(blob))
        response = web.StreamResponse(status=206 if byte_range else 200)
        if byte_range:
            response.headers["Content-Range"] = byte_range.content_range
        response.content_length = end - start
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        cut = self._cuts.pop(0) if self._cuts else None
        flip = len(blob) // 2
        offset = start
        while offset < end:
            if cut is not None and offset - start >= cut:
                if request.transport is not None:
                    request.transport.abort()
                return response
            stop = min(end, offset + CHUNK)
            if cut is not None:
                stop = min(stop, start + cut)
            chunk = blob[offset:stop]
            if self.corrupt and offset <= flip < stop:
                chunk = (
                    chunk[: flip - offset]
                    + bytes([chunk[flip - offset] ^ 0xFF])
                    + chunk[flip - offset + 1 :]
                )
            delay = self._bucket.take(len(chunk), time.monotonic())
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await response.write(chunk)
            except ConnectionError:
                return response
            self.bytes_sent += len(chunk)
            self.sent_by_name[name] += len(chunk)
            offset = stop
        await response.write_eof()
        return response
