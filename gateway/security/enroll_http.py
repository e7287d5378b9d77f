"""The HTTPS enrollment endpoint on the LAN (its own port, ``enrollment.port``).

    GET  /enroll/ca.pem   the school CA certificate (a tablet checks its SHA-256
                          against the fingerprint in the QR code before trusting it)
    POST /enroll          {"token": ..., "csr_pem": ...}
                          200 {"device_id", "group", "certificate_pem", "ca_pem",
                               "broker": {"host", "port"}}
                          400 bad_request | malformed_csr
                          403 unknown_token | token_used | token_expired
                          409 device_exists

Served with the school broker's server certificate, on a port of its own:
the LAN HTTP server stays plain HTTP for the update cache (content is
checked by hash), while enrollment carries secrets and must be TLS.
Every refusal is counted (``enrollment_rejected_<reason>``) and logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import time
from typing import Any

from aiohttp import web

from gateway.config import Config
from gateway.errors import RejectedInput
from gateway.metrics import Counters
from gateway.security import pki, registry
from gateway.security.enrollment import parse_enroll_request
from gateway.security.identity import Identity, PkiPaths
from gateway.serving import serve_until_cancelled
from gateway.store.database import Database

log = logging.getLogger(__name__)

STATUS_FOR_REASON = {
    "bad_request": 400,
    "malformed_csr": 400,
    "unknown_token": 403,
    "token_used": 403,
    "token_expired": 403,
    "device_exists": 409,
}


class EnrollmentEndpoint:
    """Handlers over the store and the CA; ``build_app`` wires them into aiohttp."""

    def __init__(
        self, config: Config, identity: Identity, db: Database, counters: Counters
    ) -> None:
        self.config = config
        self.identity = identity
        self.db = db
        self.counters = counters

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024)
        app.router.add_get("/enroll/ca.pem", self.ca_pem)
        app.router.add_post("/enroll", self.enroll)
        return app

    async def ca_pem(self, _request: web.Request) -> web.Response:
        pem = pki.certificate_pem(self.identity.issuer.certificate)
        return web.Response(body=pem, content_type="application/x-pem-file")

    async def enroll(self, request: web.Request) -> web.Response:
        peer = request.remote or "?"
        try:
            answer = await self._enroll(await request.read(), request)
        except RejectedInput as exc:
            self.counters.inc("enrollment_rejected", reason=exc.reason)
            log.warning("refused enrollment from %s: %s", peer, exc)
            return web.json_response(
                {"error": exc.reason, "detail": exc.detail},
                status=STATUS_FOR_REASON.get(exc.reason, 400),
            )
        self.counters.inc("enrollments")
        log.info("enrolled tablet %s from %s", answer["device_id"], peer)
        return web.json_response(answer)

    async def _enroll(self, body: bytes, request: web.Request) -> dict[str, Any]:
        parsed = parse_enroll_request(body)
        public_key = pki.parse_csr(parsed.csr_pem)
        days = self.config.enrollment.certificate_days

        def issue(device_id: str) -> Any:
            return pki.issue_client_certificate(
                self.identity.issuer,
                public_key,
                cn=device_id,
                now=dt.datetime.now(dt.UTC),
                days=days,
            )

        redeemed = await registry.redeem(self.db, parsed.token, time.time(), issue)
        return {
            "device_id": redeemed.device_id,
            "group": redeemed.group,
            "certificate_pem": pki.certificate_pem(redeemed.certificate).decode(),
            "ca_pem": pki.certificate_pem(self.identity.issuer.certificate).decode(),
            "broker": {
                "host": self._broker_host(request),
                "port": self.config.school_broker.tls_port,
            },
        }

    def _broker_host(self, request: web.Request) -> str:
        if self.config.enrollment.advertised_host:
            return self.config.enrollment.advertised_host
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        return str(sockname[0]) if sockname else self.config.school_broker.tls_host


def server_context(paths: PkiPaths) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(paths.server_cert), str(paths.server_key))
    return context


async def serve_enrollment(
    endpoint: EnrollmentEndpoint, started: asyncio.Event | None = None
) -> None:
    """Serve HTTPS on ``enrollment.host:port`` until cancelled."""
    settings = endpoint.config.enrollment
    await serve_until_cancelled(
        endpoint.build_app(),
        settings.host,
        settings.port,
        started,
        ssl_context=server_context(endpoint.identity.paths),
        name="enrollment endpoint",
    )
