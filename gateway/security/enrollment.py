"""Enrollment tokens and requests as plain values and decisions (no I/O).

A token is a random secret shown once (text and QR code) to whoever sets up
a tablet. The store keeps only its SHA-256, so a copy of the database cannot
enroll anything. A token is redeemable once, before it expires; the
decision of whether a token may be redeemed is :func:`check_redeemable`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import urllib.parse
from dataclasses import dataclass

from gateway.errors import RejectedInput
from gateway.security.pki import GATEWAY_CN_PREFIX
from gateway.topics import DEVICE_ID_PATTERN

TOKEN_BYTES = 18  # 24 URL-safe characters, 144 bits
MAX_REQUEST_BYTES = 16_384


def new_token_secret() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_device_id() -> str:
    return f"tab-{secrets.token_hex(4)}"


def check_device_id(device_id: str) -> str:
    """A device id a certificate may carry (the broker user name), or RejectedInput."""
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise RejectedInput("bad_device_id", f"device id {device_id!r} is not a-z0-9- (2-63)")
    if device_id.startswith(GATEWAY_CN_PREFIX.rstrip("-")):
        raise RejectedInput("bad_device_id", f"device id {device_id!r} is reserved for gateways")
    return device_id


@dataclass(frozen=True)
class TokenRecord:
    """What the store knows about one token (never the secret itself)."""

    token_hash: str
    group: str
    device_id: str | None  # chosen when the token was made, else at redemption
    created: float
    expires: float
    redeemed: float | None


def check_redeemable(record: TokenRecord | None, now: float) -> TokenRecord:
    """The record if the token may be redeemed now; else RejectedInput naming why."""
    if record is None:
        raise RejectedInput("unknown_token", "this enrollment token is not known to this gateway")
    if record.redeemed is not None:
        raise RejectedInput("token_used", "this enrollment token was already used")
    if now >= record.expires:
        raise RejectedInput("token_expired", "this enrollment token has expired")
    return record


@dataclass(frozen=True)
class EnrollRequest:
    """A tablet's POST /enroll body."""

    token: str
    csr_pem: str


def parse_enroll_request(body: bytes) -> EnrollRequest:
    if len(body) > MAX_REQUEST_BYTES:
        raise RejectedInput("bad_request", f"body is larger than {MAX_REQUEST_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RejectedInput("bad_request", "body is not JSON") from None
    if not isinstance(data, dict):
        raise RejectedInput("bad_request", "body must be a JSON object")
    for name in ("token", "csr_pem"):
        if not isinstance(data.get(name), str) or not data[name]:
            raise RejectedInput("bad_request", f"field {name!r} must be a non-empty string")
    return EnrollRequest(token=data["token"], csr_pem=data["csr_pem"])


def enrollment_url(host: str, port: int, secret: str, ca_fingerprint: str) -> str:
    """What the QR code holds: where to enroll, the token, and the CA to pin.

    The tablet has no CA yet when it enrolls, so it checks that the HTTPS
    server's chain ends in a CA with this SHA-256 fingerprint.
    """
    query = urllib.parse.urlencode({"token": secret, "ca_sha256": ca_fingerprint})
    return f"https://{host}:{port}/enroll?{query}"
