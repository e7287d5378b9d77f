"""Academy envelopes in: verify, commit, then acknowledge.

For each envelope from ``schools/<school>/commands``, in arrival order:

- verify it (gateway.commands.envelope.open_envelope);
- accepted: ONE transaction stores the command, one delivery row per target
  tablet (groups and "all" resolved from the shadow now) and a first
  ``progress`` result for the academy; after COMMIT the message is
  acknowledged to the academy broker. A crash before that commit leaves it
  unacknowledged, and the broker redelivers it to our persistent session;
- rejected: the rejection (reason, detail) is committed to the outbox, then
  the message is acknowledged (redelivering it would not make it valid). It
  is counted under ``command_envelopes_rejected_<reason>`` and logged.

The queue in front is bounded (QUEUE_LIMIT). At the bound ``accept`` waits,
the link stops reading, and the academy broker holds the rest for us (its
in-flight window for our client is full). Nothing is dropped here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.broker.link import Inbound
from gateway.commands import queue
from gateway.commands.clock import BoxClock
from gateway.commands.envelope import COMMAND_ID, Command, VerifyPolicy, open_envelope
from gateway.commands.progress import rejection_body
from gateway.errors import RejectedInput
from gateway.metrics import Counters
from gateway.relay.outbox import enqueue
from gateway.store.database import Database
from gateway.store.health import retry_while_unavailable

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1_000

Acknowledge = Callable[[Inbound], None]
AcceptedHandler = Callable[[Sequence[str]], None]


class AcceptedCommands:
    """The commands on record (id -> sha256 of the payload): replay protection.

    Loaded from the store at start; the intake adds what it accepts and the
    delivery's pruning takes out what leaves the store, so it is never larger
    than the ``commands`` table (``commands.retention_s``).
    """

    def __init__(self) -> None:
        self._payload_sha256: dict[str, str] = {}

    async def load(self, db: Database) -> None:
        self._payload_sha256 = await queue.seen_command_ids(db)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._payload_sha256

    def payload_sha256(self, command_id: str) -> str | None:
        return self._payload_sha256.get(command_id)

    def add(self, command_id: str, payload_sha256: str) -> None:
        self._payload_sha256[command_id] = payload_sha256

    def forget(self, command_ids: Sequence[str]) -> None:
        """Commands pruned from the store (their not_after is long past)."""
        for command_id in command_ids:
            self._payload_sha256.pop(command_id, None)


def claimed_command_id(data: bytes) -> str | None:
    """The command id an envelope claims, best effort, for correlating a rejection."""
    try:
        envelope = json.loads(data)
        fields = json.loads(base64.b64decode(envelope["payload"], validate=True))
        command_id = fields["command_id"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        return None
    return command_id if isinstance(command_id, str) and COMMAND_ID.fullmatch(command_id) else None


class CommandIntake:
    """Turns academy envelopes into committed commands (or committed rejections)."""

    def __init__(
        self,
        db: Database,
        counters: Counters,
        acknowledge: Acknowledge,
        *,
        keys: Mapping[str, Ed25519PublicKey],
        policy: VerifyPolicy,
        max_unfinished: int,
        accepted: AcceptedCommands,
        on_accepted: AcceptedHandler,
        on_committed: Callable[[], None],
        clock: BoxClock | None = None,
    ) -> None:
        self._db = db
        self._counters = counters
        self._acknowledge = acknowledge
        self._keys = keys
        self._policy = policy
        self._max_unfinished = max_unfinished
        self._on_accepted = on_accepted
        self._on_committed = on_committed
        self._clock = clock or BoxClock()
        self._seen = accepted
        self._queue: asyncio.Queue[Inbound] = asyncio.Queue(maxsize=QUEUE_LIMIT)

    async def accept(self, message: Inbound) -> None:
        """Queue one envelope from the academy broker (waits at the bound)."""
        if self._queue.full():
            self._counters.inc("command_intake_queue_full_waits")
        await self._queue.put(message)

    async def run(self) -> None:
        while True:
            message = await self._queue.get()
            await self._take(message)

    async def _take(self, message: Inbound) -> None:
        self._counters.inc("command_envelopes_received")
        now = self._clock.wall()
        try:
            command = open_envelope(
                message.payload,
                self._keys,
                policy=self._policy,
                now=now,
                seen=self._seen.__contains__,
            )
        except RejectedInput as exc:
            await self._reject(message, exc, now)
            return
        unfinished, devices = await retry_while_unavailable(
            lambda: self._commit(message, command, now)
        )
        self._acknowledge(message)
        self._on_committed()
        if devices is None:
            self._count_rejection(_full(unfinished), command.command_id)
            return
        self._accepted(command, devices)

    async def _commit(
        self, message: Inbound, command: Command, now: float
    ) -> tuple[int, list[str] | None]:
        """Store the command and its deliveries, or its queue_full rejection."""
        async with self._db.transaction() as conn:
            unfinished = await queue.unfinished_commands(conn)
            if unfinished >= self._max_unfinished:
                await enqueue(conn, "rejection", self._rejection(message, _full(unfinished), now))
                return unfinished, None
            devices = await queue.resolve_targets(conn, command.targets)
            deadline = self._clock.deadline(command.not_after, now)
            seq = await queue.insert_command(conn, command, devices, now, deadline)
            await self._clock.checkpoint(conn)
            for progress in await queue.progress_of(conn, [seq]):
                await enqueue(conn, "result", progress.as_body())
        return unfinished, devices

    def _accepted(self, command: Command, devices: list[str]) -> None:
        self._seen.add(command.command_id, command.payload_sha256)
        self._counters.inc("commands_accepted")
        self._counters.inc("command_deliveries_created", len(devices))
        log.info(
            "command %s accepted: %s for %d tablets (%s), key %s",
            command.command_id,
            command.action,
            len(devices),
            json.dumps(command.targets.as_dict())[:80],
            command.key_id,
        )
        self._on_accepted(devices)

    def _rejection(self, message: Inbound, exc: RejectedInput, now: float) -> dict[str, object]:
        return rejection_body(
            exc.reason,
            exc.detail,
            envelope_sha256=hashlib.sha256(message.payload).hexdigest(),
            command_id=claimed_command_id(message.payload),
            at=now,
        )

    async def _reject(self, message: Inbound, exc: RejectedInput, now: float) -> None:
        command_id = claimed_command_id(message.payload)
        if exc.reason == "replayed" and command_id is not None:
            # Reached only after the signature verified: the envelope is well formed.
            payload = base64.b64decode(json.loads(message.payload)["payload"])
            if self._seen.payload_sha256(command_id) == hashlib.sha256(payload).hexdigest():
                exc = RejectedInput(
                    exc.reason,
                    f"{exc.detail}; identical envelope (a redelivery), not executed again",
                )
        body = self._rejection(message, exc, now)
        await retry_while_unavailable(lambda: self._enqueue_rejection(body))
        self._acknowledge(message)
        self._on_committed()
        self._count_rejection(exc, command_id)

    async def _enqueue_rejection(self, body: dict[str, object]) -> None:
        async with self._db.transaction() as conn:
            await enqueue(conn, "rejection", body)

    def _count_rejection(self, exc: RejectedInput, command_id: str | None) -> None:
        self._counters.inc("command_envelopes_rejected", reason=exc.reason)
        log.warning("rejected command envelope (claimed id %s): %s", command_id, exc)


def _full(unfinished: int) -> RejectedInput:
    return RejectedInput(
        "queue_full", f"{unfinished} commands still wait for tablets; try again later"
    )
