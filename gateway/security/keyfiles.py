"""Private files on disk: written 0600, refused when others may read them.

A private key that any local user can read is a key anyone on the box can
use, so the gateway stops instead of carrying on with it. ``mode_problem`` is
the decision (a plain function over a mode); the rest only touches files.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gateway.errors import SecurityError

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def mode_problem(mode: int, *, group_may_read: bool = False) -> str | None:
    """Why a private file with permission bits ``mode`` is unsafe, or None.

    Others may never have any access. The group may read only where
    ``group_may_read`` (the broker's server key: Mosquitto reads it after
    dropping to its own user, which the appliance puts in the gateway's group).
    """
    bits = stat.S_IMODE(mode)
    if bits & stat.S_IRWXO:
        return f"readable by others (mode {bits:o})"
    allowed_group = stat.S_IRGRP if group_may_read else 0
    if bits & stat.S_IRWXG & ~allowed_group:
        return f"accessible to its group (mode {bits:o})"
    return None


def check_private_file(path: Path, *, group_may_read: bool = False) -> None:
    """Raise SecurityError naming ``path`` if it is missing or too widely readable."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise SecurityError(f"{path}: cannot read: {exc.strerror}") from exc
    problem = mode_problem(mode, group_may_read=group_may_read)
    if problem is not None:
        raise SecurityError(f"{path} is {problem}; chmod 600 it (or remove it to make a new one)")


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, mode)  # the umask may have narrowed it; public files must stay readable
    tmp.replace(path)


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``path`` with mode 0600 from its first byte (never briefly readable)."""
    _write_atomically(path, data, PRIVATE_MODE)


def write_public_file(path: Path, data: bytes) -> None:
    """Write a certificate, CRL or ACL (mode 0644), replacing it atomically."""
    _write_atomically(path, data, PUBLIC_MODE)


def read_private_file(path: Path, *, group_may_read: bool = False) -> bytes:
    check_private_file(path, group_may_read=group_may_read)
    return path.read_bytes()
