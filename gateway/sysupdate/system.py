"""What system this box runs: version, RAUC compatible, booted slot, boot id.

Parsing is pure (``booted_slot``, ``compatible_of``); ``read_system_info``
reads the files named by ``[system_update]``. On a development host none of
them exists: the version is ``unknown``, the compatible and slot empty/None.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path

from gateway.config import SystemUpdateSection

UNKNOWN_VERSION = "unknown"
PROC_CMDLINE = Path("/proc/cmdline")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class SystemInfo:
    version: str  # of the running root filesystem, "unknown" when not recorded
    compatible: str  # RAUC compatible of this box, "" when RAUC is not set up
    booted_slot: str | None  # bootname from ``rauc.slot=`` on the kernel command line


def booted_slot(cmdline: str) -> str | None:
    """The value of ``rauc.slot=`` on a kernel command line (the last one wins)."""
    slot = None
    for word in cmdline.split():
        if word.startswith("rauc.slot="):
            slot = word.removeprefix("rauc.slot=") or None
    return slot


def compatible_of(system_conf: str) -> str:
    """``[system] compatible=`` of a RAUC system.conf, "" when absent or unreadable."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(system_conf)
    except configparser.Error:
        return ""
    return parser.get("system", "compatible", fallback="").strip()


def version_of(text: str) -> str:
    """The first line of the version file, or ``unknown``."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    return line[:64] or UNKNOWN_VERSION


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def read_system_info(settings: SystemUpdateSection, cmdline: Path = PROC_CMDLINE) -> SystemInfo:
    return SystemInfo(
        version=version_of(_read(settings.version_file)),
        compatible=compatible_of(_read(settings.rauc_system_conf)),
        booted_slot=booted_slot(_read(cmdline)),
    )


def current_boot_id(path: Path = BOOT_ID) -> str:
    """This boot's random id (changes at every boot), "" when the kernel does not say."""
    return _read(path).strip()
