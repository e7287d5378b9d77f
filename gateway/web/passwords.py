"""Password hashes for the consoles: scrypt, the standard library's memory-hard KDF.

Why scrypt (``hashlib.scrypt``) rather than argon2: it is memory-hard too (each
guess costs ``128 * n * r`` bytes of RAM, 16 MiB with the defaults below, which
is what makes GPU and ASIC guessing expensive), it is in every CPython built
against OpenSSL, and so it adds no compiled dependency to a box that must
install offline. A hash records its own parameters, so they can be raised later
without breaking the hashes already stored::

    scrypt$<log2 n>$<r>$<p>$<salt, base64>$<key, base64>

Hashing takes tens of milliseconds of CPU by design: callers on the event loop
run it in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from gateway.errors import SecurityError
from gateway.web.i18n import N_

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024  # longer input is refused before hashing: no CPU for junk


@dataclass(frozen=True)
class ScryptCost:
    """scrypt's work factors: memory is 128 * 2**log2_n * r bytes per guess."""

    log2_n: int = 14
    r: int = 8
    p: int = 1

    @property
    def memory_bytes(self) -> int:
        return 128 * (1 << self.log2_n) * self.r * self.p


DEFAULT_COST = ScryptCost()
_KEY_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, cost: ScryptCost) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=1 << cost.log2_n,
        r=cost.r,
        p=cost.p,
        maxmem=cost.memory_bytes * 2 + 1024 * 1024,
        dklen=_KEY_BYTES,
    )


def hash_password(password: str, cost: ScryptCost = DEFAULT_COST) -> str:
    """A new salted hash of ``password`` in the self-describing format above."""
    if len(password) > MAX_PASSWORD_LENGTH:
        raise SecurityError(f"password longer than {MAX_PASSWORD_LENGTH} characters")
    salt = secrets.token_bytes(16)
    key = _derive(password, salt, cost)
    return f"scrypt${cost.log2_n}${cost.r}${cost.p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; False for any malformed hash."""
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        cost = ScryptCost(int(parts[1]), int(parts[2]), int(parts[3]))
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except ValueError:
        return False
    if not (10 <= cost.log2_n <= 20 and 1 <= cost.r <= 32 and 1 <= cost.p <= 4):
        return False  # refuse a stored hash that would cost absurd memory or none
    return hmac.compare_digest(_derive(password, salt, cost), key)


def password_problem(password: str) -> str | None:
    """Why a new password is refused (a msgid to translate), or None when it is fine."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return N_("The password must have at least 10 characters.")
    if len(password) > MAX_PASSWORD_LENGTH:
        return N_("The password is too long.")
    return None
