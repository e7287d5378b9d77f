"""Failed sign-ins slowed per account and per address: a pure decision core.

Each key (``account:<name>`` and ``address:<ip>``) has a count of recent
failures and a time before which no attempt is even checked. After ``free``
failures each further one closes the door for ``base_s * 2**k`` seconds,
capped at ``cap_s``: a person who mistyped twice never notices, a guesser gets
a handful of tries an hour. Failures are forgotten ``forget_after_s`` after
the last one, and a success clears the account's count (not the address's, so
an attacker with one valid account cannot reset the address it guesses from).

The map is bounded (``max_keys``). Decided behaviour at the bound: the key
whose last failure is the oldest is forgotten to make room (counted in
``evicted_at_bound``). Filling the map takes ``max_keys`` failures from
distinct names and addresses, and every address is itself slowed after
``free_per_address`` failures, so one machine cannot flush what is known
about a real account; a forgotten key only starts again from its free tries.

The caller asks :meth:`SignInThrottle.wait_s` before checking a password
(a positive answer means "refuse now, try again in that many seconds", and
the password is not checked, so no CPU goes to hashing), then reports the
outcome with :meth:`failed` or :meth:`succeeded`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ThrottleRules:
    free_per_account: int = 3
    free_per_address: int = 10
    base_s: float = 1.0
    cap_s: float = 300.0
    forget_after_s: float = 3600.0
    max_keys: int = 10_000


@dataclass
class _Entry:
    failures: int
    last_failure: float
    closed_until: float


def _delay(failures: int, free: int, rules: ThrottleRules) -> float:
    over = failures - free
    if over <= 0:
        return 0.0
    return float(min(rules.cap_s, rules.base_s * 2 ** min(over - 1, 30)))


@dataclass
class SignInThrottle:
    """Failed sign-ins per account and per address, bounded (see the module doc)."""

    rules: ThrottleRules = field(default_factory=ThrottleRules)
    evicted_at_bound: int = 0
    # Insertion order is last-failure order: a failure moves its key to the end.
    _entries: dict[str, _Entry] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _keys(account: str, address: str) -> tuple[str, str]:
        return f"account:{account.casefold()}", f"address:{address}"

    def wait_s(self, account: str, address: str, now: float) -> float:
        """Seconds before an attempt for this account from this address is checked."""
        waits = [0.0]
        for key in self._keys(account, address):
            entry = self._entries.get(key)
            if entry is not None and entry.closed_until > now:
                waits.append(entry.closed_until - now)
        return max(waits)

    def failed(self, account: str, address: str, now: float) -> None:
        """Record a wrong password (or unknown account: the same, so names do not leak)."""
        account_key, address_key = self._keys(account, address)
        for key, free in (
            (account_key, self.rules.free_per_account),
            (address_key, self.rules.free_per_address),
        ):
            entry = self._entries.pop(key, None)
            if entry is None or now - entry.last_failure > self.rules.forget_after_s:
                entry = _Entry(0, now, now)
            entry.failures += 1
            entry.last_failure = now
            entry.closed_until = now + _delay(entry.failures, free, self.rules)
            while len(self._entries) >= self.rules.max_keys:
                oldest = next(iter(self._entries))
                del self._entries[oldest]
                self.evicted_at_bound += 1
            self._entries[key] = entry

    def succeeded(self, account: str, address: str) -> None:
        """A right password: the account's count starts again (the address's does not)."""
        account_key, _ = self._keys(account, address)
        self._entries.pop(account_key, None)
