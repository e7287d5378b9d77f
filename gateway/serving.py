"""Run an aiohttp application on one address until the task is cancelled.

The one pattern every HTTP server of the gateway uses (the LAN server, the
enrollment endpoint): set up the runner, start the site, say so, wait to be
cancelled, and clean up in every case.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from aiohttp import web

log = logging.getLogger(__name__)


async def serve_until_cancelled(
    app: web.Application,
    host: str,
    port: int,
    started: asyncio.Event | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    name: str = "HTTP server",
) -> None:
    """Serve ``app`` on host:port (HTTPS with ``ssl_context``) until cancelled."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
        scheme = "https" if ssl_context is not None else "http"
        log.info("%s listening on %s://%s:%d", name, scheme, host, port)
        if started is not None:
            started.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
