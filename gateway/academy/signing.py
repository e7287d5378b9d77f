"""Academy keys and signed command envelopes (no network).

The academy holds an Ed25519 private key; each gateway is enrolled with the
public half under a key id (``[commands.academy_keys]``). Rotation: enroll
the new key id next to the old one, switch signing, then remove the old one.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.errors import RejectedInput, SecurityError

PRIVATE_KEY_FILE = "academy-ed25519.pem"
PUBLIC_KEY_FILE = "academy-ed25519.pub"
_TTL = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """The base64 raw public key, as written in ``[commands.academy_keys]``."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def generate_key_pair(out_dir: Path) -> tuple[Path, str]:
    """Write a new private key (PEM, mode 0600) and its public half; return (path, public b64)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = out_dir / PRIVATE_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise SecurityError(f"{path} exists; refusing to overwrite an academy key") from exc
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    public = public_key_b64(key)
    (out_dir / PUBLIC_KEY_FILE).write_text(public + "\n")
    return path, public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SecurityError(f"cannot read academy private key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SecurityError(f"{path} is not an Ed25519 private key")
    return key


def parse_ttl(text: str) -> float:
    """``90``, ``45s``, ``30m``, ``2h``, ``1d`` -> seconds."""
    match = _TTL.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise RejectedInput("bad_field", f"ttl {text!r} must be like 90, 45s, 30m, 2h or 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def new_command_id() -> str:
    return f"cmd-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"


def build_payload(
    *,
    command_id: str,
    school_id: str,
    targets: dict[str, Any],
    action: str,
    params: dict[str, Any],
    issued_at: float,
    not_after: float,
) -> bytes:
    """The payload bytes to sign (docs/protocol.md, "Commands")."""
    payload = {
        "command_id": command_id,
        "school_id": school_id,
        "issued_at": round(issued_at, 3),
        "not_after": round(not_after, 3),
        "targets": targets,
        "action": action,
        "params": params,
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
