"""The admin API token: a random secret in the state directory, mode 0600.

The file is written atomically (a temporary file, fsync, rename), so a crash
during the first start-up leaves either no token or a whole one. A file
found empty anyway (written by an older version, or truncated by a failing
card) holds no secret: a new token replaces it, with a warning in the log,
instead of a gateway whose every API call fails with 401.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from gateway.config import Config
from gateway.errors import SecurityError

log = logging.getLogger(__name__)

TOKEN_FILE = "admin-token"


def load_or_create_admin_token(state_dir: Path) -> str:
    """Read the token, creating it (0600) on first start or when the file is empty.

    Refuses a token file that group or others can read: anyone on the box
    could then drive the admin API.
    """
    path = state_dir / TOKEN_FILE
    if not path.exists():
        _write_token(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecurityError(f"{path} is readable by others (mode {mode & 0o777:o}); chmod 600 it")
    token = read_admin_token(state_dir)
    if not token:
        log.warning("%s was empty (an interrupted first start?): a new token was written", path)
        _write_token(path)
        token = read_admin_token(state_dir)
    return token


def _write_token(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_admin_token(state_dir: Path) -> str:
    try:
        return (state_dir / TOKEN_FILE).read_text().strip()
    except OSError as exc:
        raise SecurityError(f"cannot read admin token in {state_dir}: {exc.strerror}") from exc


def admin_api_url(config: Config, path: str) -> str:
    """The URL of ``path`` on this box's admin API (a wildcard listen address means loopback)."""
    host = "127.0.0.1" if config.http.host in ("0.0.0.0", "::") else config.http.host
    return f"http://{host}:{config.http.port}{path}"


def admin_headers(state_dir: Path) -> dict[str, str]:
    """The bearer token header for the admin API (SecurityError when it cannot be read)."""
    return {"Authorization": f"Bearer {read_admin_token(state_dir)}"}
