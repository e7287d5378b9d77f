"""Academy-signed envelopes: the one wire form for commands and cache manifests.

An envelope is JSON ``{"key_id": ..., "payload": <base64>, "signature": <base64>}``;
the signature is Ed25519 over the exact payload bytes, made with the academy
key named by ``key_id``. :func:`open_signed` checks size, shape, key and
signature, and returns the payload bytes only once they verified; nothing in
the payload is looked at before that.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.errors import ConfigError, RejectedInput


@dataclass(frozen=True)
class SignedEnvelope:
    """An envelope whose signature verified."""

    key_id: str
    payload: bytes
    signature: bytes


def load_public_keys(keys: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    """Parse ``commands.academy_keys`` (key id -> base64 raw public key)."""
    parsed = {}
    for key_id, text in keys.items():
        try:
            raw = base64.b64decode(text, validate=True)
            parsed[key_id] = Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(
                f"commands.academy_keys.{key_id} must be a base64 raw Ed25519 public key "
                f"(32 bytes): {exc}"
            ) from exc
    return parsed


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` as a JSON object, or RejectedInput("not_json")."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RejectedInput("not_json", f"{what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise RejectedInput("not_json", f"{what} must be a JSON object")
    return value


def _b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise RejectedInput("bad_field", f"envelope field {name!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise RejectedInput("bad_field", f"envelope field {name!r} is not base64: {exc}") from exc


def open_signed(
    data: bytes, keys: Mapping[str, Ed25519PublicKey], *, max_bytes: int, what: str = "envelope"
) -> SignedEnvelope:
    """Verify ``data``; RejectedInput reasons: too_large, not_json, missing_field,
    bad_field, unknown_key, bad_signature."""
    if len(data) > max_bytes:
        raise RejectedInput("too_large", f"{what} is {len(data)} bytes, limit {max_bytes}")
    envelope = json_object(data, what)
    for name in ("key_id", "payload", "signature"):
        if name not in envelope:
            raise RejectedInput("missing_field", f"envelope field {name!r} is missing")
    key_id = envelope["key_id"]
    if not isinstance(key_id, str):
        raise RejectedInput("bad_field", "envelope field 'key_id' must be a string")
    payload = _b64(envelope["payload"], "payload")
    signature = _b64(envelope["signature"], "signature")
    key = keys.get(key_id)
    if key is None:
        raise RejectedInput("unknown_key", f"key id {key_id[:64]!r} is not an enrolled academy key")
    try:
        key.verify(signature, payload)
    except InvalidSignature as exc:
        raise RejectedInput(
            "bad_signature", f"{what} signature does not verify with key {key_id!r}"
        ) from exc
    return SignedEnvelope(key_id=key_id, payload=payload, signature=signature)


def sign_envelope(key: Ed25519PrivateKey, key_id: str, payload: bytes) -> bytes:
    """The academy side: an envelope carrying ``payload`` signed with ``key``."""
    envelope = {
        "key_id": key_id,
        "payload": base64.b64encode(payload).decode(),
        "signature": base64.b64encode(key.sign(payload)).decode(),
    }
    return json.dumps(envelope, separators=(",", ":")).encode()
