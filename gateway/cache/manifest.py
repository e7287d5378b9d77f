"""The signed cache manifest: verification and parsing, no I/O.

Envelope (the same scheme and code as commands: gateway.signed):

    {"key_id": "<id>", "payload": "<base64 of the exact payload bytes>",
     "signature": "<base64 Ed25519 signature over the payload bytes>"}

``key_id`` is the free name under which the key is listed in
``[commands.academy_keys]`` (name -> base64 of the raw 32-byte Ed25519 public
key); it is not the key itself. Payload (JSON):

    {"type": "cache_manifest", "serial": 7, "issued_at": 1764000000,
     "items": [{"sha256": "...", "size": 123, "urls": ["https://..."],
                "name": "classroom-2.5.1.apk", "kind": "apk", "version": "2.5.1"}]}

A manifest with a lower serial than the current one is refused (``stale``),
so a replayed old manifest cannot unpin current items.

Kind ``system`` is a signed RAUC bundle for the box itself (gateway.sysupdate):
it must carry ``version`` and ``compatible`` (the RAUC compatible string of
the boxes it is for, e.g. ``school-gateway-amd64``); at most one system item
per compatible. Other kinds may not carry ``compatible``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.cache.rules import parse_sha256
from gateway.errors import RejectedInput
from gateway.signed import open_signed, sign_envelope

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_ITEMS = 10_000
MAX_URLS = 8
MAX_ITEM_BYTES = 1 << 50
_NAME = re.compile(r"[^/\\\x00-\x1f\x7f]{1,255}")
SYSTEM_KIND = "system"
_SYSTEM_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}")
_COMPATIBLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ManifestItem:
    """One item the academy wants every school to hold."""

    sha256: str
    size: int
    urls: tuple[str, ...]
    name: str = ""
    kind: str = ""
    version: str = ""
    compatible: str = ""  # kind "system" only: the RAUC compatible it is for


@dataclass(frozen=True)
class Manifest:
    serial: int
    issued_at: float
    items: tuple[ManifestItem, ...]


def verify_envelope(data: bytes, academy_keys: Mapping[str, Ed25519PublicKey]) -> bytes:
    """The payload bytes of a correctly signed manifest envelope, or RejectedInput."""
    return open_signed(data, academy_keys, max_bytes=MAX_MANIFEST_BYTES, what="manifest").payload


def parse_manifest(payload: bytes) -> Manifest:
    """A Manifest from verified payload bytes; RejectedInput names the bad field."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RejectedInput("not_json", f"manifest payload is not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("type") != "cache_manifest":
        raise RejectedInput("bad_field", "payload field 'type' must be 'cache_manifest'")
    serial = _int(body, "serial", 0, 2**53)
    issued_at = body.get("issued_at")
    if isinstance(issued_at, bool) or not isinstance(issued_at, int | float):
        raise RejectedInput("bad_field", "field 'issued_at' must be a number")
    raw_items = body.get("items")
    if not isinstance(raw_items, list) or len(raw_items) > MAX_ITEMS:
        raise RejectedInput("bad_field", f"field 'items' must be a list of at most {MAX_ITEMS}")
    items = []
    seen: set[str] = set()
    systems: set[str] = set()
    for index, raw in enumerate(raw_items):
        item = _item(raw, f"items[{index}]")
        if item.sha256 in seen:
            raise RejectedInput("bad_field", f"items[{index}].sha256 is listed twice")
        if item.kind == SYSTEM_KIND:
            if item.compatible in systems:
                raise RejectedInput(
                    "bad_field",
                    f"items[{index}]: a second system item for compatible {item.compatible!r}",
                )
            systems.add(item.compatible)
        seen.add(item.sha256)
        items.append(item)
    return Manifest(serial=serial, issued_at=float(issued_at), items=tuple(items))


def _int(table: dict[str, Any], key: str, low: int, high: int, where: str = "") -> int:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RejectedInput("bad_field", f"field '{where}{key}' must be an integer {low}..{high}")
    return value


def _text(table: dict[str, Any], key: str, limit: int, where: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str) or len(value) > limit:
        raise RejectedInput("bad_field", f"field '{where}{key}' must be a string of <= {limit}")
    return value


def _item(raw: Any, where: str) -> ManifestItem:
    if not isinstance(raw, dict):
        raise RejectedInput("bad_field", f"{where} must be an object")
    prefix = f"{where}."
    digest = raw.get("sha256")
    if not isinstance(digest, str):
        raise RejectedInput("bad_field", f"field '{prefix}sha256' must be a string")
    try:
        sha256 = parse_sha256(digest)
    except RejectedInput as exc:
        raise RejectedInput("bad_field", f"field '{prefix}sha256': {exc.detail}") from exc
    size = _int(raw, "size", 1, MAX_ITEM_BYTES, prefix)
    urls = raw.get("urls")
    if (
        not isinstance(urls, list)
        or not 1 <= len(urls) <= MAX_URLS
        or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls)
    ):
        raise RejectedInput(
            "bad_field", f"field '{prefix}urls' must list 1..{MAX_URLS} http(s) URLs"
        )
    name = _text(raw, "name", 255, prefix)
    if name and (not _NAME.fullmatch(name) or name in (".", "..")):
        raise RejectedInput("bad_field", f"field '{prefix}name' must be a plain file name")
    kind = _text(raw, "kind", 32, prefix)
    version = _text(raw, "version", 64, prefix)
    compatible = _text(raw, "compatible", 64, prefix)
    if kind == SYSTEM_KIND:
        if not _SYSTEM_VERSION.fullmatch(version):
            raise RejectedInput(
                "bad_field",
                f"field '{prefix}version' of a system item must be 1-64 of A-Z a-z 0-9 . _ + ~ -",
            )
        if not _COMPATIBLE.fullmatch(compatible):
            raise RejectedInput(
                "bad_field",
                f"field '{prefix}compatible' of a system item must be 1-64 of A-Z a-z 0-9 . _ -",
            )
    elif compatible:
        raise RejectedInput("bad_field", f"field '{prefix}compatible' is for kind 'system' only")
    return ManifestItem(
        sha256=sha256,
        size=size,
        urls=tuple(urls),
        name=name,
        kind=kind,
        version=version,
        compatible=compatible,
    )


def sign_manifest(
    manifest_body: dict[str, Any], private_key: Ed25519PrivateKey, key_id: str
) -> bytes:
    """An envelope for ``manifest_body`` (academy side; used by tests, demo and benchmarks)."""
    return sign_envelope(
        private_key, key_id, json.dumps(manifest_body, separators=(",", ":")).encode()
    )
