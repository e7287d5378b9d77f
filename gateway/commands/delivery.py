"""Deliveries out: publish to online tablets, republish when they come back, expire.

Presence comes from the tablets' retained birth / last-will messages, fed
here by the school-message router as they arrive (``presence``), and from the
shadow at start-up. Something to publish is signalled by waking devices:

- a new command wakes its targets: their *pending* deliveries are published;
- a tablet's birth (and, for every tablet online, each (re)connect of
  the school link, start-up included) wakes its *pending and sent*
  deliveries: what it may have missed is published again, in acceptance
  order; the tablet deduplicates by command id (delivery is at-least-once);
- a delivery sent ``redeliver_after_s`` ago and still unanswered is published
  again if the tablet is online.

Only unexpired deliveries are ever published. The expiry loop closes pending
and sent deliveries whose not_after passed, reports each upstream with the
command's progress, and prunes finished commands after ``retention_s``.

A publish that fails (link down, or no PUBACK within
``school_broker.publish_timeout_s`` from a broker that stalls) puts its
tablets back in the wake set; delivery waits for the link to come back or
for a short capped backoff, whichever is first, and publishes again (counted
in ``command_delivery_pauses``). It never waits for a disconnect alone: a
stalled broker usually answers again on the same connection.

The wake set is bounded by WAKE_LIMIT device ids; beyond it the set is
replaced by one "every device" sweep (counted in command_wake_overflows).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Sequence

from gateway import topics
from gateway.backoff import backoff_delay
from gateway.broker.link import BrokerLink
from gateway.commands import queue
from gateway.commands.clock import BoxClock
from gateway.commands.progress import delivery_body, delivery_message
from gateway.errors import BrokerError
from gateway.metrics import Counters
from gateway.relay.outbox import enqueue
from gateway.store.database import Database
from gateway.store.health import retry_while_unavailable

log = logging.getLogger(__name__)

WAKE_LIMIT = 10_000
PUBLISH_CHUNK = 1_000
IDLE_CHECK_S = 60.0
RETRY_CAP_S = 10.0  # longest wait before publishing again after a failed publish


class CommandDelivery:
    """Publishes each tablet's unexpired deliveries while it is online."""

    def __init__(
        self,
        db: Database,
        school: BrokerLink,
        counters: Counters,
        *,
        redeliver_after_s: float,
        retention_s: float,
        on_committed: Callable[[], None],
        on_pruned: Callable[[Sequence[str]], None],
        clock: BoxClock | None = None,
    ) -> None:
        self._db = db
        self._school = school
        self._counters = counters
        self._redeliver_after_s = redeliver_after_s
        self._retention_s = retention_s
        self._on_committed = on_committed
        self._on_pruned = on_pruned
        self._clock = clock or BoxClock()
        self._online: dict[str, bool] = {}
        self._new: set[str] = set()  # publish pending deliveries
        self._again: set[str] = set()  # publish pending and sent deliveries
        self._everyone = True  # start-up: a full sweep
        self._work = asyncio.Event()
        self._work.set()
        self._deadlines_changed = asyncio.Event()

    async def load(self) -> None:
        """Who is online according to the shadow (refreshed by retained presence)."""
        rows = await self._db.fetch_all("SELECT device_id FROM shadow WHERE online = 1")
        for row in rows:
            self._online.setdefault(row[0], True)

    def presence(self, device_id: str, online: bool) -> None:
        """A tablet's birth or last will arrived (called as it arrives, before storage).

        Every birth wakes the tablet: a tablet that (re)connects, even without
        a last will in between (its second connection replaced the first at
        the broker), gets again what it has not answered, now rather than
        after ``redeliver_after_s``. The retained births each subscribe of the
        link brings again cannot be told apart (the link subscribes with
        Retain As Published), so they wake their tablets too: the same
        deliveries the sweep after a reconnect publishes, which tablets
        deduplicate by command id.
        """
        self._online[device_id] = online
        if online:
            self._counters.inc("command_birth_wakes")
            self._wake(self._again, [device_id])

    def command_accepted(self, devices: Sequence[str]) -> None:
        self._wake(self._new, devices)
        self._deadlines_changed.set()

    def _wake(self, target: set[str], devices: Iterable[str]) -> None:
        target.update(devices)
        if len(self._new) + len(self._again) > WAKE_LIMIT:
            self._counters.inc("command_wake_overflows")
            self._new.clear()
            self._again.clear()
            self._everyone = True
        self._work.set()

    async def run_publisher(self) -> None:
        failures = 0
        while True:
            if not self._school.is_connected:
                await self._school.connected.wait()
                self._everyone = True  # the link was down: anything may be missing
            await self._work.wait()
            self._work.clear()
            new, again, everyone = self._new, self._again, self._everyone
            self._new, self._again, self._everyone = set(), set(), False
            try:
                await self._publish(new, again, everyone)
                failures = 0
            except BrokerError as exc:
                # A publish that timed out does not mean the link went down (a
                # broker stalled for a moment answers again on the same
                # connection): retry after a short, growing delay, or at once
                # on a reconnect, never wait for a disconnect alone.
                delay = backoff_delay(failures, cap_s=RETRY_CAP_S)
                failures += 1
                self._counters.inc("command_delivery_pauses")
                log.info("command delivery paused: %s; retrying within %.1f s", exc, delay)
                self._wake(self._again, new | again)
                self._everyone = self._everyone or everyone
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._school.wait_disconnected()

    async def _publish(self, new: set[str], again: set[str], everyone: bool) -> None:
        now, elapsed = self._clock.wall(), self._clock.elapsed()
        todo: list[queue.PendingDelivery] = []
        if everyone:
            todo = await queue.pending_deliveries(self._db, None, now, elapsed, include_sent=True)
        else:
            if again:
                todo += await queue.pending_deliveries(
                    self._db, again, now, elapsed, include_sent=True
                )
            if new - again:
                todo += await queue.pending_deliveries(
                    self._db, new - again, now, elapsed, include_sent=False
                )
        todo = [d for d in todo if self._online.get(d.device_id)]
        if not todo:
            return
        messages: dict[int, bytes] = {}
        for start in range(0, len(todo), PUBLISH_CHUNK):
            chunk = todo[start : start + PUBLISH_CHUNK]
            for d in chunk:
                if d.command_seq not in messages:
                    messages[d.command_seq] = delivery_message(d.key_id, d.payload, d.signature)
            # Calls are issued in list order, so each tablet gets its commands in order.
            await asyncio.gather(
                *(
                    self._school.publish(
                        topics.tablet_commands(d.device_id), messages[d.command_seq], qos=1
                    )
                    for d in chunk
                )
            )
            sent = [(d.device_id, d.command_seq) for d in chunk]
            await retry_while_unavailable(functools.partial(queue.mark_sent, self._db, sent, now))
            self._counters.inc("command_deliveries_published", len(chunk))
        log.debug("published %d command deliveries", len(todo))

    async def run_expiry(self) -> None:
        while True:
            now = self._clock.wall()
            await retry_while_unavailable(functools.partial(self._expire_and_prune, now))
            stale = await queue.stale_sent_devices(self._db, now - self._redeliver_after_s)
            online_stale = [d for d in stale if self._online.get(d)]
            if online_stale:
                self._counters.inc("command_redelivery_wakes", len(online_stale))
                self._wake(self._again, online_stale)
            timeout = min(IDLE_CHECK_S, self._redeliver_after_s)
            next_expiry = await queue.next_expiry(
                self._db, self._clock.wall(), self._clock.elapsed()
            )
            if next_expiry is not None:
                timeout = min(timeout, max(0.0, next_expiry) + 0.01)
            self._deadlines_changed.clear()
            with contextlib.suppress(TimeoutError):  # not wait_for: see results.py
                async with asyncio.timeout(timeout):
                    await self._deadlines_changed.wait()

    async def _expire_and_prune(self, now: float) -> None:
        elapsed = self._clock.elapsed()
        async with self._db.transaction() as conn:
            await self._clock.checkpoint(conn)
            expired = await queue.expire_due(conn, now, elapsed)
            for t in expired:
                body = delivery_body(t.command_id, t.device_id, "expired", t.detail, now)
                await enqueue(conn, "result", body)
            for progress in await queue.progress_of(conn, {t.command_seq for t in expired}):
                await enqueue(conn, "result", progress.as_body())
            pruned = await queue.prune(conn, now - self._retention_s, elapsed - self._retention_s)
        if expired:
            self._counters.inc("command_deliveries_expired", len(expired))
            log.info("%d command deliveries expired before their tablet came online", len(expired))
            self._on_committed()
        if pruned:
            self._counters.inc("commands_pruned", len(pruned))
            self._on_pruned(pruned)
