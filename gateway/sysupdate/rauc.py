"""The RAUC command line, for root's helpers: a thin adapter, errors translated at the edge.

Debian builds ``rauc install`` and ``rauc status mark-*`` as D-Bus clients of
``rauc service`` (``rauc.service``, D-Bus activated); ``rauc info`` works
alone. Every failure becomes a SystemUpdateError carrying RAUC's last message
lines (what the outcome record and ``status`` show).
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import SystemUpdateError

log = logging.getLogger(__name__)

INFO_TIMEOUT_S = 300.0
INSTALL_TIMEOUT_S = 3600.0
MARK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class BundleInfo:
    compatible: str
    version: str


def parse_info(output: str) -> BundleInfo:
    """``rauc info --output-format=json`` output (RAUC 1.8) into a BundleInfo."""
    try:
        body = json.loads(output)
    except ValueError as exc:
        raise SystemUpdateError(f"rauc info printed no JSON: {output[:200]!r}") from exc
    if not isinstance(body, dict):
        raise SystemUpdateError("rauc info printed no JSON object")
    compatible, version = body.get("compatible"), body.get("version")
    if not isinstance(compatible, str) or not isinstance(version, str | None):
        raise SystemUpdateError("rauc info names no compatible")
    return BundleInfo(compatible=compatible, version=version or "")


def inactive_slot(status: dict[str, Any]) -> str | None:
    """The bootname of the rootfs slot that is not booted (``rauc status`` JSON), or None."""
    booted = status.get("booted")
    slots = status.get("slots")
    if not isinstance(slots, list):
        return None
    for entry in slots:
        if not isinstance(entry, dict):
            continue
        for slot in entry.values():
            if (
                isinstance(slot, dict)
                and slot.get("class") == "rootfs"
                and slot.get("state") != "booted"
                and isinstance(slot.get("bootname"), str)
                and slot.get("bootname") != booted
            ):
                return str(slot["bootname"])
    return None


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[:400]


class Rauc:
    """``rauc`` run as a child process (``system_update.rauc_command``)."""

    def __init__(self, command: Sequence[str], system_conf: Path | None = None) -> None:
        self.command = tuple(command)
        self.system_conf = system_conf

    def _run(self, args: Sequence[str], timeout_s: float, what: str) -> str:
        argv = [*self.command, *args]
        log.info("running %s", " ".join(argv))
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SystemUpdateError(f"{what}: cannot run {argv[0]}: {exc}") from exc
        if done.returncode != 0:
            raise SystemUpdateError(
                f"{what} failed (exit {done.returncode}): {_tail(done.stderr or done.stdout)}"
            )
        return done.stdout

    def info(self, bundle: Path, keyring: Path) -> BundleInfo:
        """Verify ``bundle``'s signature against ``keyring``; its compatible and version."""
        args = [f"--keyring={keyring}", "info", "--output-format=json", str(bundle)]
        if self.system_conf is not None and self.system_conf.exists():
            args.insert(0, f"--conf={self.system_conf}")
        return parse_info(self._run(args, INFO_TIMEOUT_S, "rauc info"))

    def install(self, bundle: Path) -> None:
        self._run(["install", str(bundle)], INSTALL_TIMEOUT_S, "rauc install")

    def status(self) -> dict[str, Any]:
        output = self._run(["status", "--output-format=json"], MARK_TIMEOUT_S, "rauc status")
        try:
            body = json.loads(output)
        except ValueError as exc:
            raise SystemUpdateError(f"rauc status printed no JSON: {output[:200]!r}") from exc
        return body if isinstance(body, dict) else {}

    def mark(self, good: bool) -> None:
        """``rauc status mark-good`` / ``mark-bad`` of the booted slot."""
        word = "mark-good" if good else "mark-bad"
        self._run(["status", word, "booted"], MARK_TIMEOUT_S, f"rauc status {word}")
