"""The admin API token: a random secret in the state directory, mode 0600."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from gateway.errors import SecurityError

TOKEN_FILE = "admin-token"


def load_or_create_admin_token(state_dir: Path) -> str:
    """Read the token, creating it (0600) on first start.

    Refuses a token file that group or others can read: anyone on the box
    could then drive the admin API.
    """
    path = state_dir / TOKEN_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecurityError(f"{path} is readable by others (mode {mode & 0o777:o}); chmod 600 it")
    return read_admin_token(state_dir)


def read_admin_token(state_dir: Path) -> str:
    try:
        return (state_dir / TOKEN_FILE).read_text().strip()
    except OSError as exc:
        raise SecurityError(f"cannot read admin token in {state_dir}: {exc.strerror}") from exc
