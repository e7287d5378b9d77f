"""The system block for people: ``python -m gateway status`` lines, and the stored view.

``read_system_block`` reads the same files the running gateway reads, for
``status`` when the gateway is down (and for the root helpers' own output).
"""

from __future__ import annotations

import time
from typing import Any

from gateway.config import Config
from gateway.sysupdate.files import OUTCOME, read_small, update_dir
from gateway.sysupdate.outcomes import parse_outcomes, system_block
from gateway.sysupdate.system import read_system_info


def read_system_block(config: Config) -> dict[str, Any]:
    try:
        data = read_small(update_dir(config.gateway.state_dir) / OUTCOME)
    except OSError:
        data = None
    block = system_block(
        read_system_info(config.system_update), parse_outcomes(data) if data else ()
    )
    block["enabled"] = config.system_update.enabled
    block["window"] = config.system_update.window
    return block


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def render_system(block: dict[str, Any]) -> list[str]:
    """``system: version 2 on slot B (school-gateway-amd64)`` and the last update."""
    slot = block.get("booted_slot") or "?"
    compatible = block.get("compatible") or "no RAUC"
    lines = [f"system: version {block.get('version', '?')} on slot {slot} ({compatible})"]
    last = block.get("last_update")
    if last:
        reason = f": {last['reason']}" if last.get("reason") else ""
        into = f" (slot {last['slot']})" if last.get("slot") else ""
        lines.append(
            f"  last update: version {last['version']} {last['outcome'].upper()}{into} "
            f"at {_when(last['at'])}{reason}"
        )
    else:
        lines.append("  last update: none recorded")
    if block.get("enabled") is False:
        lines.append("  updates: off (system_update.enabled = false)")
    elif block.get("next"):
        lines.append(f"  updates: {block['next']} (window {block.get('window')})")
    return lines
