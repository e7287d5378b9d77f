"""aiohttp application for the LAN: ``/api/*`` needs the admin bearer token;
``/content/*`` (the update cache, gateway.cache.http) is open to tablets."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from gateway.cache.service import CacheService

log = logging.getLogger(__name__)

StatusProvider = Callable[[], Awaitable[dict[str, Any]]]

STATUS_PROVIDER: web.AppKey[StatusProvider] = web.AppKey("status_provider")
MetricsProvider = Callable[[], Awaitable[tuple[bytes, str]]]
METRICS_PROVIDER: web.AppKey[MetricsProvider] = web.AppKey("metrics_provider")
ADMIN_TOKEN = web.AppKey("admin_token", str)


@web.middleware
async def require_admin_token(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path.startswith("/api/"):
        expected = f"Bearer {request.app[ADMIN_TOKEN]}"
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return web.json_response(
                {"error": "missing or wrong admin token"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
    return await handler(request)


async def _status(request: web.Request) -> web.Response:
    return web.json_response(await request.app[STATUS_PROVIDER]())


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = await request.app[METRICS_PROVIDER]()
    return web.Response(body=body, headers={"Content-Type": content_type})


def build_app(
    status: StatusProvider,
    admin_token: str,
    cache: CacheService | None = None,
    *,
    metrics: MetricsProvider | None = None,
) -> web.Application:
    app = web.Application(middlewares=[require_admin_token], client_max_size=64 * 1024)
    app[STATUS_PROVIDER] = status
    app[ADMIN_TOKEN] = admin_token
    app.router.add_get("/api/status", _status)
    if metrics is not None:
        # Open on the LAN like /content: counters and gauges, no secrets.
        app[METRICS_PROVIDER] = metrics
        app.router.add_get("/metrics", _metrics)
    if cache is not None:
        from gateway.cache.http import add_content_routes

        add_content_routes(app, cache)
    return app
