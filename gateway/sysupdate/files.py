"""The files the gateway and root's helpers share in ``<state_dir>/system-update/``.

    request.json  written by the gateway (atomically) when a bundle should be
                  installed now; its existence starts the privileged helper
                  (``school-gateway-system-update.path``), which removes it
    outcome.json  written by root's helpers (outcomes.py), read by the gateway
    ready.json    written by the gateway once READY: {"boot_id": ...}; the
                  health check's proof that the gateway of *this* boot is up

Parsing is pure; ``write_atomically`` is the one write path (temp file in the
same directory, fsync, rename), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.errors import RejectedInput
from gateway.sysupdate.outcomes import MAX_KEPT, Outcome, parse_outcomes, render_outcomes

REQUEST = "request.json"
OUTCOME = "outcome.json"
READY = "ready.json"
MAX_FILE_BYTES = 256 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")


def update_dir(state_dir: Path) -> Path:
    return state_dir / "system-update"


@dataclass(frozen=True)
class InstallRequest:
    """What the gateway asks root to install."""

    bundle: str  # absolute path of the complete, hash-checked file in the cache
    sha256: str
    size: int
    version: str
    compatible: str
    requested_at: float

    def render(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()


def parse_request(data: bytes) -> InstallRequest:
    """An InstallRequest, or RejectedInput naming the bad field."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RejectedInput("not_json", f"request is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RejectedInput("bad_field", "request must be a JSON object")

    def text(name: str) -> str:
        value = body.get(name)
        if not isinstance(value, str) or not 0 < len(value) <= 4096:
            raise RejectedInput("bad_field", f"request field '{name}' must be a non-empty string")
        return value

    def number(name: str) -> float:
        value = body.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise RejectedInput("bad_field", f"request field '{name}' must be a number >= 0")
        return float(value)

    sha256 = text("sha256")
    if not _SHA256.fullmatch(sha256):
        raise RejectedInput("bad_field", "request field 'sha256' must be 64 lowercase hex digits")
    bundle = text("bundle")
    if not bundle.startswith("/"):
        raise RejectedInput("bad_field", "request field 'bundle' must be an absolute path")
    return InstallRequest(
        bundle=bundle,
        sha256=sha256,
        size=int(number("size")),
        version=text("version")[:64],
        compatible=text("compatible")[:64],
        requested_at=number("requested_at"),
    )


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_small(path: Path) -> bytes | None:
    """The bytes of ``path`` (at most MAX_FILE_BYTES), None when it does not exist."""
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_FILE_BYTES)
    except FileNotFoundError:
        return None


def ready_marker(boot_id: str, system_version: str, at: float) -> bytes:
    return (json.dumps({"boot_id": boot_id, "version": system_version, "at": at}) + "\n").encode()


def ready_boot_id(data: bytes | None) -> str | None:
    """The boot id in ``ready.json``, None when absent or malformed."""
    if data is None:
        return None
    try:
        body: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    boot_id = body.get("boot_id") if isinstance(body, dict) else None
    return boot_id if isinstance(boot_id, str) and boot_id else None


def append_outcome(folder: Path, entry: Outcome) -> tuple[Outcome, ...]:
    """Add ``entry`` to ``outcome.json`` in ``folder`` (root's helpers); the record after."""
    data = read_small(folder / OUTCOME)
    kept = (*(parse_outcomes(data) if data else ()), entry)
    write_atomically(folder / OUTCOME, render_outcomes(kept))
    return kept[-MAX_KEPT:]
