"""How a simulated tablet applies commands (the fleet's ``on_command`` hook).

The rules a real MDM agent follows (docs/protocol.md, "Commands"):

- the command id is the idempotency key: a command already answered is not
  applied again; the tablet answers again with the same result;
- a command whose ``not_after`` has passed is refused (``failed``,
  ``expired``), even if a broker queued it for the tablet while it was away;
- long actions (install_app) answer ``received`` first, then ``done`` or
  ``failed``; the others answer ``done`` or ``failed`` at once;
- a result is kept until the gateway confirms it on ``results/ack`` (after
  its commit) and re-sent on every connect and periodically until then: the
  broker's PUBACK does not survive a power cut of the box.

``SimulatedCommands.memory`` lives in the simulator's process, so it survives
gateway restarts: it is what the tests count applications with.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from gateway import topics
from gateway.sim.fleet import SimulatedTablet
from gateway.sim.model import TabletModel

log = logging.getLogger(__name__)

ANSWER_RECEIVED_FIRST = frozenset({"install_app"})


@dataclass
class CommandMemory:
    """What one simulated tablet did with the commands it got."""

    answers: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (status, detail)
    applications: Counter[str] = field(default_factory=Counter)  # id -> times applied
    deliveries: Counter[str] = field(default_factory=Counter)  # id -> times received
    order: list[str] = field(default_factory=list)  # ids in the order first received
    message: str = ""
    url: str = ""
    policy: dict[str, Any] = field(default_factory=dict)
    reboots: int = 0
    wipes: int = 0
    # (command id, status) -> result payload, until the gateway confirms it
    unconfirmed: dict[tuple[str, str], bytes] = field(default_factory=dict)
    confirmed: set[tuple[str, str]] = field(default_factory=set)
    broker_acked: set[tuple[str, str]] = field(default_factory=set)  # PUBACK from the broker
    resent: int = 0


def apply_action(
    model: TabletModel, memory: CommandMemory, action: str, params: dict[str, Any]
) -> tuple[str, str]:
    """Apply one action to the simulated tablet; return (status, detail)."""
    if action == "lock":
        model.locked = True
    elif action == "unlock":
        model.locked = False
    elif action == "message":
        memory.message = str(params.get("text", ""))
    elif action == "open_url":
        memory.url = str(params.get("url", ""))
    elif action == "install_app":
        model.apps[str(params["package"])] = str(params["version"])
        return "done", f"installed {params['package']} {params['version']}"
    elif action == "remove_app":
        if model.apps.pop(str(params["package"]), None) is None:
            return "failed", f"{params['package']} is not installed"
    elif action == "reboot":
        memory.reboots += 1
    elif action == "wipe":
        memory.wipes += 1
        model.apps.clear()
        model.locked = False
    elif action == "set_policy":
        memory.policy.update(params)
    elif action != "request_state":
        return "failed", f"unknown action {action!r}"
    return "done", ""


class SimulatedCommands:
    """The on_command hook: dedup by command id, apply, answer on the results topic."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.memory: dict[str, CommandMemory] = {}
        self.malformed = 0
        self.refused_expired = 0
        self.refused_results = 0

    def memory_of(self, device_id: str) -> CommandMemory:
        return self.memory.setdefault(device_id, CommandMemory())

    def applications(self, command_id: str) -> dict[str, int]:
        """device id -> how many times that tablet applied ``command_id``."""
        return {
            device: m.applications[command_id]
            for device, m in self.memory.items()
            if command_id in m.applications
        }

    def received(self, command_id: str) -> set[str]:
        """Devices that received ``command_id`` at least once."""
        return {d for d, m in self.memory.items() if m.deliveries[command_id] > 0}

    def answered(self, command_id: str) -> set[str]:
        return {d for d, m in self.memory.items() if command_id in m.answers}

    async def __call__(
        self, tablet: SimulatedTablet, client: aiomqtt.Client, payload: bytes
    ) -> None:
        try:
            delivery = json.loads(payload)
            command_id = delivery["command_id"]
            action = delivery["action"]
            params = delivery.get("params", {})
            not_after = float(delivery["not_after"])
        except (ValueError, TypeError, KeyError):
            self.malformed += 1
            log.warning("tablet %s: malformed command delivery", tablet.device_id)
            return
        memory = self.memory_of(tablet.device_id)
        memory.deliveries[command_id] += 1
        answer = memory.answers.get(command_id)
        if answer is None:
            memory.order.append(command_id)
            if not_after <= self._clock():
                self.refused_expired += 1
                answer = ("failed", "expired")
            else:
                if action in ANSWER_RECEIVED_FIRST:
                    await self._answer(tablet, client, command_id, ("received", ""))
                answer = apply_action(tablet.model, memory, action, params)
                memory.applications[command_id] += 1
            memory.answers[command_id] = answer
        await self._answer(tablet, client, command_id, answer)
        if action == "request_state":
            report = tablet.model.report(self._clock())
            await client.publish(
                topics.tablet_state(tablet.device_id),
                json.dumps(report, separators=(",", ":")).encode(),
                qos=1,
            )

    async def _answer(
        self,
        tablet: SimulatedTablet,
        client: aiomqtt.Client,
        command_id: str,
        answer: tuple[str, str],
    ) -> None:
        memory = self.memory_of(tablet.device_id)
        topic = topics.tablet_results(tablet.device_id)
        status, detail = answer
        key = (command_id, status)
        payload = _result(command_id, status, detail)
        if key not in memory.confirmed:
            memory.unconfirmed[key] = payload
        await client.publish(topic, payload, qos=1)
        memory.broker_acked.add(key)

    def confirmed(self, tablet: SimulatedTablet, payload: bytes) -> None:
        """The gateway committed (or refused) one of this tablet's results."""
        try:
            body = json.loads(payload)
            key = (str(body["command_id"]), str(body["status"]))
        except (ValueError, TypeError, KeyError):
            self.malformed += 1
            log.warning("tablet %s: malformed result confirmation", tablet.device_id)
            return
        memory = self.memory_of(tablet.device_id)
        if "refused" in body:
            self.refused_results += 1
        memory.unconfirmed.pop(key, None)
        memory.confirmed.add(key)

    async def resend(self, tablet: SimulatedTablet, client: aiomqtt.Client) -> None:
        """Publish again every result of this tablet the gateway has not confirmed."""
        memory = self.memory_of(tablet.device_id)
        topic = topics.tablet_results(tablet.device_id)
        for payload in list(memory.unconfirmed.values()):
            await client.publish(topic, payload, qos=1)
            memory.resent += 1

    def unconfirmed(self) -> int:
        """Results of every tablet still waiting for the gateway's confirmation."""
        return sum(len(m.unconfirmed) for m in self.memory.values())


def _result(command_id: str, status: str, detail: str) -> bytes:
    body = {"command_id": command_id, "status": status, "detail": detail}
    return json.dumps(body, separators=(",", ":")).encode()
