"""Lab helpers for the command flow: an academy signer, the gateway as a
subprocess, and reading what reached the academy (tests, demo, benchmark)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.academy.cli import upstream_decoder
from gateway.academy.signing import build_payload, public_key_b64
from gateway.lab.academy import AcademyListener
from gateway.signed import sign_envelope

log = logging.getLogger(__name__)


@dataclass
class AcademySigner:
    """An academy key pair and a counter for command ids."""

    school_id: str
    key_id: str = "academy-test-1"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    _next: int = 0

    def config_keys(self) -> dict[str, str]:
        """The ``[commands.academy_keys]`` table enrolling this key."""
        return {self.key_id: public_key_b64(self.key)}

    def new_id(self, prefix: str = "cmd") -> str:
        self._next += 1
        return f"{prefix}-{self._next:04d}-{os.getpid()}"

    def payload(
        self,
        action: str,
        *,
        targets: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        ttl_s: float = 3600.0,
        issued_at: float | None = None,
        command_id: str | None = None,
    ) -> bytes:
        issued = time.time() if issued_at is None else issued_at
        return build_payload(
            command_id=command_id or self.new_id(),
            school_id=self.school_id,
            targets=targets or {"all": True},
            action=action,
            params=params or {},
            issued_at=issued,
            not_after=issued + ttl_s,
        )

    def envelope(self, action: str, **kwargs: Any) -> tuple[str, bytes]:
        """(command id, signed envelope)."""
        payload = self.payload(action, **kwargs)
        return json.loads(payload)["command_id"], sign_envelope(self.key, self.key_id, payload)


class AcademyView:
    """What the academy learned, read incrementally from a listener.

    Each call reads only the messages that arrived since the last one, so
    tests can poll it cheaply while a thousand results stream in.
    """

    def __init__(self, listener: AcademyListener) -> None:
        self._listener = listener
        self._read = 0
        self._decode = upstream_decoder()
        self._seen: set[tuple[str, int]] = set()
        self.messages: list[dict[str, Any]] = []  # distinct, in arrival order
        self.results: dict[str, dict[str, str]] = {}  # command -> device -> status
        self.progress: dict[str, tuple[int, dict[str, Any]]] = {}  # command -> (seq, body)

    def refresh(self) -> AcademyView:
        received = list(itertools.islice(self._listener.messages, self._read, None))
        self._read += len(received)
        for item in received:
            if "/up/" not in item.topic:
                continue
            for message in self._decode(item.payload):
                key = (message["gateway_id"], message["seq"])
                if key in self._seen:
                    continue  # a redelivery: the academy drops it
                self._seen.add(key)
                self.messages.append(message)
                self._index(message)
        return self

    def _index(self, message: dict[str, Any]) -> None:
        body = message["body"]
        if message["kind"] != "result":
            return
        command_id = body["command_id"]
        if body.get("type") == "delivery":
            statuses = self.results.setdefault(command_id, {})
            if statuses.get(body["device_id"]) not in ("done", "failed"):
                statuses[body["device_id"]] = body["status"]
        elif body.get("type") == "progress":
            seq = int(message["seq"])
            if seq > self.progress.get(command_id, (-1, {}))[0]:
                self.progress[command_id] = (seq, body)


_views: weakref.WeakKeyDictionary[AcademyListener, AcademyView] = weakref.WeakKeyDictionary()


def academy_view(listener: AcademyListener) -> AcademyView:
    """The (cached, refreshed) view of what ``listener`` received."""
    view = _views.get(listener)
    if view is None:
        view = _views[listener] = AcademyView(listener)
    return view.refresh()


def upstream(listener: AcademyListener, kind: str | None = None) -> list[dict[str, Any]]:
    """Every distinct upstream message the listener holds (dedup by gateway id and seq)."""
    messages = academy_view(listener).messages
    return [m for m in messages if kind is None or m["kind"] == kind]


def results_for(listener: AcademyListener, command_id: str) -> dict[str, str]:
    """device id -> final (or latest) status the academy received for ``command_id``."""
    return dict(academy_view(listener).results.get(command_id, {}))


def latest_progress(listener: AcademyListener, command_id: str) -> dict[str, Any] | None:
    """The newest progress of ``command_id`` the academy received (highest seq)."""
    found = academy_view(listener).progress.get(command_id)
    return None if found is None else dict(found[1])


def rejections(listener: AcademyListener) -> list[dict[str, Any]]:
    return [m["body"] for m in upstream(listener, "rejection")]
