"""Classroom actions decided on the box: a teacher locks, unlocks or messages a group.

The local policy is a short fixed list (``CLASSROOM_ACTIONS``): lock, unlock
and a message, for one group, lasting ``LOCAL_TTL_S`` at most. Nothing else
can be sent from the box: no install, no wipe, no policy, no URL; those
exist only in envelopes signed with the academy's key, which the box does
not hold. :func:`authorise` is the whole decision (no I/O):

    not_classroom    the action is not in the fixed list
    not_your_group   a teacher names a group they do not teach (the IT contact may name any)
    bad_field        the group or the parameters are malformed (checked like academy commands)

An authorised action becomes a command in the SAME durable queue as academy
commands (gateway.commands.queue.insert_command): one delivery per tablet of
the group, delivered, redelivered and expired by the same code, answered by
the tablets in the same way. Its ``key_id`` is ``local`` and it carries no
academy signature: tablets get commands only from the gateway (the school
broker's ACL lets nobody else publish on a tablet's command topic), and the
payload names who asked. In the same transaction a ``local_action`` result is
put in the outbox, so the academy learns what was done, when and by whom,
even if it happened while the uplink was down; progress follows like any
command's.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.commands import queue
from gateway.commands.actions import check_action
from gateway.commands.clock import BoxClock
from gateway.commands.envelope import Command, Targets
from gateway.errors import RejectedInput
from gateway.relay.outbox import enqueue
from gateway.store.database import Database

CLASSROOM_ACTIONS = ("lock", "unlock", "message")
LOCAL_KEY_ID = "local"
LOCAL_TTL_S = 3600.0
GROUP_MAX = 64


@dataclass(frozen=True)
class LocalActor:
    """Who asks: the signed-in account, its role, and the groups a teacher teaches."""

    name: str
    role: str  # "teacher" or "it"
    groups: frozenset[str]
    may_act_on_any_group: bool = False


@dataclass(frozen=True)
class LocalAction:
    """An authorised classroom action, ready to queue."""

    action: str
    group: str
    params: Mapping[str, Any]
    actor: LocalActor


def authorise(actor: LocalActor, action: str, group: str, params: Mapping[str, Any]) -> LocalAction:
    """The local policy (see the module doc): a LocalAction, or RejectedInput saying why."""
    if action not in CLASSROOM_ACTIONS:
        raise RejectedInput("not_classroom", f"{action[:40]!r} is not a classroom action")
    if not group or len(group) > GROUP_MAX or not group.isprintable():
        raise RejectedInput("bad_field", "the group must be 1-64 printable characters")
    if not actor.may_act_on_any_group and group not in actor.groups:
        raise RejectedInput("not_your_group", f"{actor.name} does not teach group {group!r}")
    check_action(action, dict(params))
    return LocalAction(action, group, dict(params), actor)


def local_command(action: LocalAction, school_id: str, now: float) -> Command:
    """The command stored for ``action``: a fresh id, the group as target, one hour."""
    command_id = f"local-{secrets.token_hex(10)}"
    fields = {
        "command_id": command_id,
        "school_id": school_id,
        "issued_at": round(now, 3),
        "not_after": round(now + LOCAL_TTL_S, 3),
        "targets": {"group": action.group},
        "action": action.action,
        "params": dict(action.params),
        "issued_by": {"account": action.actor.name, "role": action.actor.role, "local": True},
    }
    payload = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    return Command(
        command_id=command_id,
        school_id=school_id,
        key_id=LOCAL_KEY_ID,
        issued_at=fields["issued_at"],  # type: ignore[arg-type]
        not_after=fields["not_after"],  # type: ignore[arg-type]
        targets=Targets(group=action.group),
        action=action.action,
        params_json=json.dumps(dict(action.params), separators=(",", ":"), sort_keys=True),
        payload=payload,
        signature=b"",
    )


def local_action_body(command: Command, action: LocalAction, targets: int) -> dict[str, Any]:
    """The upstream ``result`` body saying who did what (docs/protocol.md)."""
    return {
        "type": "local_action",
        "command_id": command.command_id,
        "action": command.action,
        "group": action.group,
        "params": dict(action.params),
        "by": action.actor.name,
        "role": action.actor.role,
        "targets": targets,
        "at": command.issued_at,
        "payload_sha256": hashlib.sha256(command.payload).hexdigest(),
    }


@dataclass(frozen=True)
class Queued:
    command_id: str
    devices: Sequence[str]


class LocalActions:
    """Queues authorised classroom actions in the command queue (see the module doc)."""

    def __init__(
        self,
        db: Database,
        *,
        school_id: str,
        max_unfinished: int,
        on_accepted: Callable[[Sequence[str]], None],
        on_committed: Callable[[], None],
        clock: BoxClock | None = None,
    ) -> None:
        self._db = db
        self._school_id = school_id
        self._max_unfinished = max_unfinished
        self._on_accepted = on_accepted
        self._on_committed = on_committed
        self._clock = clock or BoxClock()

    async def submit(self, action: LocalAction) -> Queued:
        """Commit the command, its deliveries and its upstream report; then wake delivery.

        RejectedInput("queue_full") when too many commands still wait for
        tablets (the same bound as academy commands).
        """
        now = self._clock.wall()
        command = local_command(action, self._school_id, now)
        async with self._db.transaction() as conn:
            unfinished = await queue.unfinished_commands(conn)
            if unfinished >= self._max_unfinished:
                raise RejectedInput(
                    "queue_full", f"{unfinished} commands still wait for tablets; try later"
                )
            devices = await queue.resolve_targets(conn, command.targets)
            deadline = self._clock.deadline(command.not_after, now)
            seq = await queue.insert_command(conn, command, devices, now, deadline)
            await self._clock.checkpoint(conn)
            await enqueue(conn, "result", local_action_body(command, action, len(devices)))
            for progress in await queue.progress_of(conn, [seq]):
                await enqueue(conn, "result", progress.as_body())
        self._on_committed()
        self._on_accepted(devices)
        return Queued(command.command_id, devices)


def groups_allowed(actor: LocalActor, known_groups: Collection[str]) -> list[str]:
    """The groups this person may act on, among those the box knows."""
    if actor.may_act_on_any_group:
        return sorted(known_groups)
    return sorted(g for g in known_groups if g in actor.groups)
