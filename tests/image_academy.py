"""The academy and the origin as a box under QEMU sees them (helpers, not tests).

- ``AcademyStandIn``: a real Mosquitto with a mTLS listener for gateways (its
  own CA, a server certificate for the address the box dials) and a plain
  loopback listener for the academy's own tools (``academy send``, the
  listener that reads summaries); it signs a gateway's CSR as an academy does.
- ``FileOrigin``: an HTTP origin serving files from a directory (aiohttp's
  static files: HEAD and byte ranges, as a CDN).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography import x509

from gateway.lab.academy import AcademyListener
from gateway.lab.mosquitto import MosquittoProcess, free_port
from gateway.lab.running import StartStop
from gateway.relay.wire import decode_payload
from gateway.security import pki
from gateway.security.keyfiles import write_private_file, write_public_file

ACADEMY_BROKER = """\
# Stand-in academy broker: mTLS for gateways, plain loopback for the academy's tools.
per_listener_settings false
allow_anonymous true
persistence false
log_dest stdout
log_type error
log_type warning
log_type notice
connection_messages true
user root
listener {{port}} 127.0.0.1
listener {tls_port} 127.0.0.1
cafile {ca}
certfile {cert}
keyfile {key}
require_certificate true
use_identity_as_username true
"""


class AcademyStandIn(StartStop):
    """The academy broker the box dials at ``dial_address``, and the academy's CA."""

    def __init__(self, directory: Path, dial_address: str) -> None:
        self.directory = directory
        self.dial_address = dial_address
        self.tls_port = free_port()
        now = dt.datetime.now(dt.UTC)
        key = pki.new_private_key()
        ca = pki.make_ca(key, "academy", now, 30)
        self.issuer = pki.Issuer(ca, key)
        self.ca_pem = pki.certificate_pem(ca)
        self.broker: MosquittoProcess | None = None
        self.listener: AcademyListener | None = None
        self._listening: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The plain loopback listener, for the academy's own tools."""
        assert self.broker is not None
        return self.broker.port

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        server_key = pki.new_private_key()
        server = pki.issue_server_certificate(
            self.issuer, server_key.public_key(), dns_names=["academy.test"],
            ip_addresses=[self.dial_address, "127.0.0.1"],
            now=dt.datetime.now(dt.UTC), days=30,
        )  # fmt: skip
        ca_file, cert, key = (self.directory / n for n in ("ca.pem", "server.crt", "server.key"))
        write_public_file(ca_file, self.ca_pem)
        write_public_file(cert, pki.certificate_pem(server))
        write_private_file(key, pki.private_key_pem(server_key))
        text = ACADEMY_BROKER.format(tls_port=self.tls_port, ca=ca_file, cert=cert, key=key)
        self.broker = MosquittoProcess(self.directory / "broker", text)
        await self.broker.start()
        self.listener = AcademyListener("127.0.0.1", self.broker.port, "schools/#")
        self._listening = asyncio.create_task(self.listener.run(), name="academy-listener")
        await asyncio.wait_for(self.listener.subscribed.wait(), 10)

    async def stop(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
        if self.broker is not None:
            await self.broker.stop()

    def listener_ended(self) -> str | None:
        """How the summary listener ended, if it did (it should run until stop)."""
        task = self._listening
        return repr(task) if task is not None and task.done() else None

    def sign_gateway_csr(self, csr_pem: bytes) -> bytes:
        """What the academy does with a box's ``pki/gateway.csr``: a client certificate."""
        csr = x509.load_pem_x509_csr(csr_pem)
        cert = pki.issue_client_certificate(
            self.issuer, pki.parse_csr(csr_pem), cn=pki.common_name(csr),
            now=dt.datetime.now(dt.UTC), days=30,
        )  # fmt: skip
        return pki.certificate_pem(cert)

    def upstream(self, kind: str) -> list[dict[str, Any]]:
        """Every upstream message of ``kind`` received so far, once per (gateway, seq)."""
        assert self.listener is not None
        seen: set[tuple[str, int]] = set()
        found = []
        for received in list(self.listener.messages):
            if not received.topic.endswith(f"/up/{kind}"):
                continue
            for message in decode_payload(received.payload):
                key = (message["gateway_id"], message["seq"])
                if key not in seen:
                    seen.add(key)
                    found.append(message)
        return found

    def summaries(self) -> list[dict[str, Any]]:
        return [message["body"] for message in self.upstream("summary")]

    def gateway_online(self, school: str, gateway: str) -> bool:
        assert self.listener is not None
        topic = f"schools/{school}/gateways/{gateway}/status"
        last = [m.payload for m in self.listener.messages if m.topic == topic]
        return bool(last) and json.loads(last[-1] or b"{}").get("online") is True


class FileOrigin(StartStop):
    """``http://127.0.0.1:<port>/files/<name>`` for every file in ``directory``.

    ``requests`` counts what was asked, by method and path (``GET /files/x``).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.requests: collections.Counter[str] = collections.Counter()
        self._runner: web.AppRunner | None = None

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests[f"{request.method} {request.path}"] += 1
        return await handler(request)

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        app = web.Application(middlewares=[self._count])
        app.router.add_static("/files", self.directory)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
