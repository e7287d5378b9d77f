"""Time for command expiry and replay protection that holds when the wall clock jumps.

The box has no battery-backed clock: its wall clock may start in the past,
jump forward hours or days when NTP (or a wrong NTP) answers, and come back.
So a command's lifetime is measured on two clocks, and a delivery expires,
and a command id is forgotten, only when BOTH say so:

- the wall clock (``time.time``) against the command's signed ``not_after``;
- the box's *elapsed time*: monotonic seconds the gateway has run, summed
  over restarts (a ledger in ``meta``, checkpointed at each expiry pass and
  at each acceptance), against a deadline set at acceptance:
  ``elapsed_at_acceptance + (not_after - wall_at_acceptance)``.

A forward jump alone therefore expires nothing and prunes nothing; a
backward jump alone extends nothing beyond the elapsed deadline... but both
must agree, so a command lives until the later of the two. Time while the
gateway is not running (power off, restart) does not count on the elapsed
clock: after an outage a command stays deliverable for what was left of its
life when the gateway stopped; tablets refuse one whose ``not_after`` has
passed on their own clock (docs/protocol.md). The seconds since the last
checkpoint are lost on a kill: the elapsed clock errs on the side of
keeping commands (and their ids) longer.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import aiosqlite

from gateway.store.database import Database

ELAPSED_KEY = "box_elapsed_s"


class BoxClock:
    """The wall clock and the box's elapsed time; ``load`` before use."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._base = 0.0
        self._started = monotonic()

    def wall(self) -> float:
        return self._wall()

    def elapsed(self) -> float:
        """Seconds the gateway has run, over all its runs (never goes back)."""
        return self._base + (self._monotonic() - self._started)

    def deadline(self, not_after: float, now: float) -> float:
        """The elapsed-time deadline of a command accepted now (wall ``now``)."""
        return self.elapsed() + max(0.0, not_after - now)

    async def load(self, db: Database) -> None:
        row = await db.fetch_one("SELECT value FROM meta WHERE key = ?", (ELAPSED_KEY,))
        self._base = float(row[0]) if row else 0.0
        self._started = self._monotonic()

    async def checkpoint(self, conn: aiosqlite.Connection) -> None:
        """Persist the elapsed time, inside the caller's transaction."""
        await conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (ELAPSED_KEY, repr(self.elapsed())),
        )
