"""Helpers for enrollment tests: a token on a running gateway and its enrollment URL."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.security import pki, registry
from gateway.security.enrollment import enrollment_url


async def make_token(running, *, ttl_s=600.0, now=None, device_id=None, group="class-01") -> str:
    return await registry.create_token(
        running.gateway._db,
        group=group,
        ttl_s=ttl_s,
        now=now or time.time(),
        device_id=device_id,
    )


def url_for(running, secret: str) -> str:
    config = running.gateway.config
    fingerprint = pki.fingerprint(pki.load_certificate(ca_file(running).read_bytes(), "ca"))
    return enrollment_url("127.0.0.1", config.enrollment.port, secret, fingerprint)


def ca_file(running) -> Path:
    return running.gateway.config.gateway.state_dir / "pki" / "ca.crt"
