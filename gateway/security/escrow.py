"""Identity escrow: what a replacement box needs, sealed to a key only the academy holds.

SD cards die. Without this, a new card means a new school CA and every
tablet enrolled again by hand. The escrow bundle holds what a replacement
box needs to take over: the school CA, the gateway's keys and certificates
(``<state_dir>/pki``), the enrolled tablets and their groups, the revoked
serials, the command ids still on record (replay protection) and the
upstream sequence counter.

The bundle is sealed to the academy's X25519 escrow key
(``escrow.academy_public_key``): an ephemeral X25519 key pair per bundle,
ECDH with the academy key, HKDF-SHA256 into a ChaCha20-Poly1305 key; the
header (school, gateway, creation time, both public keys) is the AEAD's
associated data, so it cannot be altered either. Only the holder of the
academy's private key can open it; the box keeps no way to.

:class:`EscrowPublisher` publishes it, retained and QoS 1, on
``schools/<school>/gateways/<gw>/escrow`` (the academy broker keeps the
latest): at start, whenever its content changed (checked every
``escrow.check_s``), and at least every ``escrow.interval_s``.

:func:`restore_state` writes a bundle into an EMPTY state directory; the
sequence counter restarts ``SEQUENCE_MARGIN`` above the escrowed one, so
the academy's dedup by (gateway, seq) never drops what the new box sends.
See docs/security.md and docs/operations.md (restoring a dead box).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway import topics
from gateway.config import Config
from gateway.errors import BrokerError, ConfigError, RejectedInput, SecurityError
from gateway.security.identity import PkiPaths
from gateway.security.keyfiles import write_private_file, write_public_file
from gateway.store.database import DATABASE_FILE, Database

log = logging.getLogger(__name__)

VERSION = 1
KIND = "identity_escrow"
INFO = b"school-gateway identity escrow v1"
SEQUENCE_MARGIN = 10_000_000
# (file name under pki/, private?) ; crl.pem and acl are rebuilt from the store.
PKI_FILES = (
    ("ca.key", True),
    ("ca.crt", False),
    ("server.key", True),
    ("server.crt", False),
    ("gateway.key", True),
    ("gateway-school.crt", False),
    ("gateway.csr", False),
    ("academy-client.crt", False),
)
MAX_SEALED_BYTES = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise RejectedInput("bad_field", f"escrow field {what!r} must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RejectedInput("bad_field", f"escrow field {what!r} is not base64") from exc


def public_key_from_config(text: str, where: str = "escrow.academy_public_key") -> X25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return X25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{where}: not a base64 X25519 public key (32 bytes)") from exc


def public_key_text(key: X25519PublicKey) -> str:
    return _b64(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def private_key_pem(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(path: Path) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{path}: cannot read the academy escrow private key: {exc}") from exc
    if not isinstance(key, X25519PrivateKey):
        raise SecurityError(f"{path}: not an X25519 private key")
    return key


def _derive(shared: bytes, ephemeral: bytes, recipient: bytes) -> ChaCha20Poly1305:
    key = HKDF(hashes.SHA256(), length=32, salt=ephemeral + recipient, info=INFO).derive(shared)
    return ChaCha20Poly1305(key)


def _aad(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def seal(bundle: dict[str, Any], recipient: X25519PublicKey) -> bytes:
    """The sealed message (JSON) holding ``bundle``, for the holder of ``recipient``'s key."""
    ephemeral = X25519PrivateKey.generate()
    eph_raw = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    rcpt_raw = recipient.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    header = {
        "type": KIND,
        "version": VERSION,
        "school_id": bundle["school_id"],
        "gateway_id": bundle["gateway_id"],
        "created": bundle["created"],
        "ephemeral_public": _b64(eph_raw),
        "recipient_public": _b64(rcpt_raw),
    }
    nonce = os.urandom(12)
    plaintext = zlib.compress(json.dumps(bundle, sort_keys=True).encode(), 6)
    cipher = _derive(ephemeral.exchange(recipient), eph_raw, rcpt_raw)
    sealed = cipher.encrypt(nonce, plaintext, _aad(header))
    return json.dumps({**header, "nonce": _b64(nonce), "ciphertext": _b64(sealed)}).encode()


def open_sealed(message: bytes, private: X25519PrivateKey) -> dict[str, Any]:
    """The bundle inside a sealed message; RejectedInput if it is not one, or not for us."""
    if len(message) > MAX_SEALED_BYTES:
        raise RejectedInput("too_large", f"escrow message over {MAX_SEALED_BYTES} bytes")
    try:
        outer = json.loads(message)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RejectedInput("not_json", "escrow message is not JSON") from exc
    if not isinstance(outer, dict) or outer.get("type") != KIND:
        raise RejectedInput("bad_field", f"not an {KIND} message")
    if outer.get("version") != VERSION:
        raise RejectedInput("bad_field", f"escrow version {outer.get('version')!r} unknown")
    header = {k: v for k, v in outer.items() if k not in ("nonce", "ciphertext")}
    eph_raw = _unb64(outer.get("ephemeral_public"), "ephemeral_public")
    rcpt_raw = _unb64(outer.get("recipient_public"), "recipient_public")
    mine = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    if rcpt_raw != mine:
        raise RejectedInput("wrong_key", "this escrow was sealed to another academy key")
    try:
        cipher = _derive(
            private.exchange(X25519PublicKey.from_public_bytes(eph_raw)), eph_raw, mine
        )
        plaintext = cipher.decrypt(
            _unb64(outer.get("nonce"), "nonce"),
            _unb64(outer.get("ciphertext"), "ciphertext"),
            _aad(header),
        )
        bundle = json.loads(zlib.decompress(plaintext))
    except (InvalidTag, ValueError, zlib.error) as exc:
        raise RejectedInput("bad_seal", "escrow does not open: altered or damaged") from exc
    if not isinstance(bundle, dict) or bundle.get("school_id") != outer.get("school_id"):
        raise RejectedInput("bad_field", "escrow bundle does not match its header")
    return bundle


async def collect(config: Config, db: Database, now: float | None = None) -> dict[str, Any]:
    """The bundle for this box, read from ``<state_dir>/pki`` and the store."""
    g = config.gateway
    paths = PkiPaths.under(g.state_dir)
    files = {}
    for name, _private in PKI_FILES:
        path = paths.root / name
        if path.exists():
            files[name] = _b64(path.read_bytes())
    tablets = await db.fetch_all(
        "SELECT device_id, serial, group_name, enrolled, not_after, revoked FROM tablet_identity "
        "ORDER BY device_id"
    )
    revoked = await db.fetch_all("SELECT serial, revoked, device_id FROM revoked_serial")
    groups = await db.fetch_all(
        "SELECT device_id, group_name FROM shadow WHERE group_name != '' ORDER BY device_id"
    )
    commands = await db.fetch_all(
        "SELECT command_id, payload_sha256, not_after FROM commands ORDER BY seq"
    )
    seq = await db.fetch_one("SELECT value FROM meta WHERE key = 'upstream_seq'")
    return {
        "school_id": g.school_id,
        "gateway_id": g.gateway_id,
        "created": time.time() if now is None else now,
        "pki": files,
        "tablets": [list(row) for row in tablets],
        "revoked_serials": [list(row) for row in revoked],
        "groups": [list(row) for row in groups],
        "commands": [list(row) for row in commands],
        "upstream_seq": int(seq[0]) if seq else 0,
    }


def content_digest(bundle: dict[str, Any]) -> str:
    """What the bundle says, without when it was made (to publish only on change)."""
    stable = {k: v for k, v in bundle.items() if k not in ("created", "upstream_seq")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()


async def restore_state(config: Config, bundle: dict[str, Any], now: float | None = None) -> str:
    """Write ``bundle`` into the config's EMPTY state directory; a one-line summary."""
    g = config.gateway
    if (bundle.get("school_id"), bundle.get("gateway_id")) != (g.school_id, g.gateway_id):
        raise SecurityError(
            f"the escrow is for {bundle.get('school_id')}/{bundle.get('gateway_id')}, "
            f"this config is {g.school_id}/{g.gateway_id}"
        )
    paths = PkiPaths.under(g.state_dir)
    if paths.ca_key.exists():
        raise SecurityError(
            f"{paths.root} already holds an identity: restore only into an empty state directory"
        )
    if (g.state_dir / DATABASE_FILE).exists():
        raise SecurityError(f"{g.state_dir / DATABASE_FILE} exists: restore into an empty one")
    now = time.time() if now is None else now
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.root.chmod(0o750)
    files = bundle.get("pki", {})
    for name, private in PKI_FILES:
        if name in files:
            data = _unb64(files[name], f"pki/{name}")
            (write_private_file if private else write_public_file)(paths.root / name, data)
    db = await Database.open(g.state_dir / DATABASE_FILE)
    try:
        async with db.transaction() as conn:
            await conn.executemany(
                "INSERT INTO tablet_identity (device_id, serial, group_name, enrolled, not_after, "
                "revoked) VALUES (?, ?, ?, ?, ?, ?)",
                [tuple(row) for row in bundle.get("tablets", [])],
            )
            await conn.executemany(
                "INSERT INTO revoked_serial (serial, revoked, device_id) VALUES (?, ?, ?)",
                [tuple(row) for row in bundle.get("revoked_serials", [])],
            )
            # Every enrolled tablet is known again, in its group (the latest
            # reported one, else the enrollment's), so group commands reach it.
            groups = {row[0]: row[2] for row in bundle.get("tablets", []) if row[5] is None}
            groups.update({device: group for device, group in bundle.get("groups", [])})
            await conn.executemany(
                "INSERT INTO shadow (device_id, state, report_seq, group_name, first_seen, "
                "last_seen) VALUES (?, '{}', -1, ?, ?, ?)",
                [(device, group, now, now) for device, group in sorted(groups.items())],
            )
            # Seen ids come back as finished commands (no deliveries): replay
            # protection until both clocks say they are long past not_after.
            await conn.executemany(
                "INSERT INTO commands (command_id, key_id, action, issued_at, not_after, targets, "
                "payload, signature, payload_sha256, accepted_at, elapsed_deadline) "
                "VALUES (?, 'escrow', 'restored', ?, ?, '{}', x'', x'', ?, ?, ?)",
                [
                    (cid, not_after, not_after, sha, now, max(0.0, not_after - now))
                    for cid, sha, not_after in bundle.get("commands", [])
                ],
            )
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('upstream_seq', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(int(bundle.get("upstream_seq", 0)) + SEQUENCE_MARGIN),),
            )
    finally:
        await db.close()
    return (
        f"restored {g.school_id}/{g.gateway_id} from the escrow of "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(float(bundle.get('created', 0))))}: "
        f"{len(files)} key and certificate files, {len(bundle.get('tablets', []))} tablets, "
        f"{len(bundle.get('commands', []))} command ids"
    )


Publish = Callable[[str, bytes], Awaitable[None]]


class EscrowPublisher:
    """Seals and publishes the bundle at start, on change, and every ``interval_s``."""

    def __init__(
        self,
        config: Config,
        db: Database,
        publish: Publish,
        *,
        recipient: X25519PublicKey,
        interval_s: float,
        check_s: float,
    ) -> None:
        self._config = config
        self._db = db
        self._publish = publish
        self._recipient = recipient
        self._interval_s = interval_s
        self._check_s = check_s
        self.published = 0
        self._last_digest: str | None = None
        self._last_at = 0.0

    async def run(self) -> None:
        while True:
            await self.publish_if_due()
            await asyncio.sleep(self._check_s)

    async def publish_if_due(self) -> bool:
        bundle = await collect(self._config, self._db)
        digest = content_digest(bundle)
        due = time.monotonic() - self._last_at >= self._interval_s
        if digest == self._last_digest and not due:
            return False
        g = self._config.gateway
        topic = topics.academy_gateway_escrow(g.school_id, g.gateway_id)
        try:
            await self._publish(topic, seal(bundle, self._recipient))
        except BrokerError as exc:
            log.info("identity escrow not published yet (academy link: %s)", exc)
            return False
        self._last_digest, self._last_at = digest, time.monotonic()
        self.published += 1
        log.info(
            "identity escrow published: %d tablets, %d command ids",
            len(bundle["tablets"]),
            len(bundle["commands"]),
        )
        return True
