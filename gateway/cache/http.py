"""``GET``/``HEAD /content/<sha256>`` on the LAN server (open to tablets, no token).

Complete items go out with ``sendfile`` (the kernel copies file to socket).
An item still downloading is streamed from its growing partial file, also
with ``sendfile``, as its bytes land; nothing is buffered in memory.

Answers: 200/206 with a strong ETag (the hash), Content-Length,
Content-Type, Content-Disposition; 304 for a matching If-None-Match; 400 for
a bad hash or malformed Range; 404 for an unknown hash; 416 for a range
outside the item; 503 + Retry-After when the origin cannot be reached for
an item not yet cached; 507 when the item cannot fit in the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import IO

from aiohttp import web

from gateway.cache import rules
from gateway.cache.download import Download
from gateway.cache.index import Entry
from gateway.cache.service import CacheService, Refused
from gateway.errors import CacheError, RejectedInput

log = logging.getLogger(__name__)

CACHE_SERVICE = web.AppKey("cache_service", CacheService)


def add_content_routes(app: web.Application, service: CacheService) -> None:
    app[CACHE_SERVICE] = service
    app.router.add_get("/content/{sha256}", serve_content)
    app.router.add_post("/api/cache/import", import_from_directory)


def _error(status: int, reason: str, detail: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason, "detail": detail}, status=status, headers=headers)


def _item_headers(entry: Entry) -> dict[str, str]:
    headers = {
        "ETag": rules.etag(entry.sha256),
        "Accept-Ranges": "bytes",
        "Content-Type": rules.content_type(entry.kind, entry.name),
        "Cache-Control": "public, max-age=31536000, immutable",
    }
    disposition = rules.content_disposition(entry.name)
    if disposition:
        headers["Content-Disposition"] = disposition
    return headers


async def serve_content(request: web.Request) -> web.StreamResponse:
    service = request.app[CACHE_SERVICE]
    counters = service.counters
    try:
        sha = rules.parse_sha256(request.match_info["sha256"])
    except RejectedInput as exc:
        counters.inc("cache_requests_rejected", reason="bad_hash")
        return _error(400, exc.reason, exc.detail)
    entry = service.lookup(sha)
    if entry is None:
        counters.inc("cache_requests_unknown")
        return _error(404, "unknown_item", f"no item {sha} in the manifest or the cache")
    headers = _item_headers(entry)
    if rules.not_modified(request.if_none_match, sha):
        return web.Response(status=304, headers=headers)
    try:
        requested = request.http_range
        if not rules.range_applies(request.headers.get("If-Range"), sha):
            requested = slice(None, None)
        byte_range = rules.byte_range(requested, entry.size)
    except ValueError as exc:  # aiohttp: not one bytes=first-last range
        counters.inc("cache_requests_rejected", reason="bad_range")
        return _error(400, "bad_range", f"Range must be one 'bytes=first-last' range: {exc}")
    except rules.RangeNotSatisfiable as exc:
        counters.inc("cache_requests_rejected", reason="bad_range")
        return _error(
            416,
            "range_not_satisfiable",
            f"item has {entry.size} bytes",
            **{"Content-Range": str(exc)},
        )
    start, length = (byte_range.start, byte_range.length) if byte_range else (0, entry.size)
    response = web.StreamResponse(status=206 if byte_range else 200, headers=headers)
    if byte_range:
        response.headers["Content-Range"] = byte_range.content_range
    response.content_length = length
    if request.method == "HEAD":
        await response.prepare(request)
        await response.write_eof()
        return response

    counters.inc("cache_requests")
    download = service.active(sha)
    if entry.complete and download is None:
        try:
            fobj = service.paths.object(sha).open("rb")
        except FileNotFoundError:  # evicted between lookup and open
            return _error(404, "unknown_item", f"item {sha} just left the cache")
        counters.inc("cache_hits")
        service.index.touch(sha)
        with fobj:
            await response.prepare(request)
            sent = await _sendfile(request, fobj, start, length)
            return await _finish(request, response, service, sent, length)

    try:
        download = service.fetch(sha)
    except Refused as exc:
        return _error(507, "refused", str(exc))
    except CacheError as exc:
        return _error(503, "unavailable", str(exc), **{"Retry-After": "5"})
    counters.inc("cache_misses")
    service.index.touch(sha)
    waited = await _origin_answered(download, service.settings.origin_wait_s)
    if (
        not waited
        or (not download.reachable and download.error is None)
        or (download.error is not None and not download.verified)
    ):
        counters.inc("cache_requests_unavailable")
        detail = str(download.error) if download.error else "the origin does not answer"
        return _error(
            503,
            "origin_unreachable",
            detail,
            **{"Retry-After": str(service.settings.retry_after_s)},
        )
    with download.path.open("rb") as fobj:
        await response.prepare(request)
        sent = await _stream_growing(request, download, fobj, start, length)
        return await _finish(request, response, service, sent, length)


async def _finish(
    request: web.Request,
    response: web.StreamResponse,
    service: CacheService,
    sent: int,
    length: int,
) -> web.StreamResponse:
    """Count what went out; end the body, or cut the connection when it came up short."""
    service.record_served(sent)
    if sent == length:
        await response.write_eof()
    else:
        _cut(request)
    return response


async def _origin_answered(download: Download, within_s: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(download.answered.wait(), within_s)
    return download.answered.is_set()


async def _sendfile(request: web.Request, fobj: IO[bytes], offset: int, count: int) -> int:
    """Send ``count`` bytes of ``fobj`` from ``offset``; return how many went out."""
    transport = request.transport
    if transport is None or count <= 0:
        return 0
    try:
        await asyncio.get_running_loop().sendfile(transport, fobj, offset, count)
    except (ConnectionError, RuntimeError):  # the tablet went away (or its transport closed)
        return 0
    except OSError as exc:  # reading the file failed: the disk, not the tablet
        request.app[CACHE_SERVICE].counters.inc("cache_disk_read_errors")
        log.error("cannot read %s to serve it: %s", getattr(fobj, "name", "cache file"), exc)
        return 0
    return count


async def _stream_growing(
    request: web.Request, download: Download, fobj: IO[bytes], start: int, length: int
) -> int:
    """Send bytes start..start+length as the download makes them visible."""
    offset, end = start, start + length
    while offset < end:
        visible = min(download.visible(), end)
        if visible > offset:
            sent = await _sendfile(request, fobj, offset, visible - offset)
            if sent == 0:
                break
            offset += sent
            continue
        if download.finished.is_set():
            break  # failed (corrupt or origin gone): the client is cut off
        await download.wait_past(offset)
    return offset - start


def _cut(request: web.Request) -> None:
    """Close the connection mid-body, so the client sees an incomplete transfer."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def import_from_directory(request: web.Request) -> web.Response:
    """``POST /api/cache/import`` ``{"dir": "/media/usb"}`` (admin token): seed the cache."""
    service = request.app[CACHE_SERVICE]
    try:
        body = await request.json()
        folder = body["dir"] if isinstance(body, dict) else None
    except (ValueError, KeyError):
        folder = None
    if not isinstance(folder, str) or not folder:
        return _error(400, "bad_field", 'body must be {"dir": "<folder>"}')
    try:
        report = await service.import_directory(Path(folder))
    except CacheError as exc:
        return _error(400, "cannot_import", str(exc))
    return web.json_response(report.as_dict())
