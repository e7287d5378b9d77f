"""The first IT-contact account: from provisioning, else a one-time set-up code.

At start-up, when no IT-contact account exists:

- if the config (written by provisioning) holds ``console.first_it_password_hash``,
  the account ``console.first_it_contact`` is created with it;
- otherwise a one-time code is written to ``<state_dir>/console-setup-code``
  (mode 0600). Only ``python -m gateway status``, run on the box, prints it;
  whoever types it on the console's ``/setup`` page chooses the first
  IT-contact name and password, and the file is removed.

As soon as an IT-contact account exists the file is removed.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from gateway.errors import ConfigError
from gateway.school_console.accounts import IT_CONTACT, ConsoleAccounts

log = logging.getLogger(__name__)

SETUP_CODE_FILE = "console-setup-code"
_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud and typed by hand
CODE_LENGTH = 12


def new_setup_code() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(CODE_LENGTH))


def shown(code: str) -> str:
    """ABCD-EFGH-JKLM: how the code is printed (the page accepts it with or without dashes)."""
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def read_setup_code(state_dir: Path) -> str | None:
    try:
        code = (state_dir / SETUP_CODE_FILE).read_text().strip()
    except OSError:
        return None
    return code or None


def console_setup_code(config_path: Path) -> str | None:
    """The set-up code as `status` prints it, or None (no code waiting, or unreadable)."""
    from gateway.config import load_config

    try:
        code = read_setup_code(load_config(config_path).gateway.state_dir)
    except ConfigError:
        return None
    return shown(code) if code else None


def remove_setup_code(state_dir: Path) -> None:
    (state_dir / SETUP_CODE_FILE).unlink(missing_ok=True)


def _write_code(state_dir: Path) -> str:
    path = state_dir / SETUP_CODE_FILE
    code = new_setup_code()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(code + "\n")
    return code


async def ensure_first_it_contact(
    accounts: ConsoleAccounts, state_dir: Path, name: str, password_hash: str
) -> str | None:
    """Make sure someone can become the IT contact; return the set-up code if one waits."""
    if await accounts.it_contacts() > 0:
        remove_setup_code(state_dir)
        return None
    if password_hash:
        if not password_hash.startswith("scrypt$"):
            raise ConfigError(
                "console.first_it_password_hash must be an scrypt hash "
                "(python -m gateway console hash-password)"
            )
        await accounts.create(name, IT_CONTACT, password_hash, created_by="provisioning")
        remove_setup_code(state_dir)
        log.info("console: IT-contact account %s created from provisioning", name)
        return None
    code = read_setup_code(state_dir) or _write_code(state_dir)
    log.info("console: no IT contact yet; `python -m gateway status` shows the set-up code")
    return code
