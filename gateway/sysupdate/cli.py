"""``python -m gateway system-update install | health-check | status``.

``install`` and ``health-check`` are root's (their systemd units run them);
``status`` prints the system block for anyone. Each exits 0 when it did its
job, whatever the outcome it recorded (the outcome is the answer, not the
exit code); 2 on a config error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import Config, SystemUpdateSection, add_config_argument, load_config
from gateway.sysupdate.rauc import Rauc

log = logging.getLogger(__name__)


def register(commands: Any) -> None:
    group = commands.add_parser("system-update", help="A/B system updates (root's helpers)")
    actions = group.add_subparsers(dest="system_update_command", required=True, metavar="ACTION")
    install = actions.add_parser("install", help="verify and install the requested bundle")
    install.add_argument("--no-reboot", action="store_true", help="do not reboot afterwards")
    install.set_defaults(handler=_cmd_install)
    health = actions.add_parser("health-check", help="judge this boot, mark the slot")
    health.add_argument("--no-reboot", action="store_true", help="do not reboot afterwards")
    health.set_defaults(handler=_cmd_health_check)
    status = actions.add_parser("status", help="version, slot and the last update (JSON)")
    status.set_defaults(handler=_cmd_status)
    add_config_argument(group, install, health, status)


def _log_to_stdout(verbose: bool) -> None:
    """Log lines to unbuffered stdout: the unit's journal (as ``gateway.cli`` does)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    logging.getLogger("mqtt").setLevel(logging.WARNING)


def _rauc(settings: SystemUpdateSection) -> Rauc:
    return Rauc(settings.rauc_command, settings.rauc_system_conf)


REBOOT_INTO_UPDATE = Path("/usr/lib/school-gateway/reboot-into-update")


def into_update_command(settings: SystemUpdateSection, image_script: Path) -> tuple[str, ...]:
    """How to reboot after an install (``system_update.reboot_into_update_command``)."""
    if settings.reboot_into_update_command:
        return settings.reboot_into_update_command
    if image_script.exists():
        return (str(image_script),)
    return settings.reboot_command


def _rebooter(command: tuple[str, ...], skip: bool) -> Callable[[], None]:
    def reboot() -> None:
        if skip:
            log.info("not rebooting (--no-reboot)")
            return
        log.info("rebooting: %s", " ".join(command))
        try:
            subprocess.run(command, check=False, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("cannot reboot: %s", exc)

    return reboot


def _cmd_install(args: argparse.Namespace) -> int:
    from gateway.sysupdate.install import install_requested

    _log_to_stdout(args.verbose)
    config = load_config(args.config)
    settings = config.system_update
    reboot = _rebooter(into_update_command(settings, REBOOT_INTO_UPDATE), args.no_reboot)
    result = install_requested(config, _rauc(settings), reboot=reboot)
    print(json.dumps({"outcome": result.outcome, "reason": result.reason}))
    return 0


def _cmd_health_check(args: argparse.Namespace) -> int:
    from gateway.sysupdate.health import run_health_check

    _log_to_stdout(args.verbose)
    if not args.config.exists():
        # An unprovisioned box: nothing was installed through the gateway, and the
        # slot it runs must stay bootable.
        log.info("no config at %s: marking the booted slot good", args.config)
        _mark_established(SystemUpdateSection())
        return 0
    config: Config = load_config(args.config)
    settings = config.system_update
    verdict = asyncio.run(
        run_health_check(
            config, _rauc(settings), reboot=_rebooter(settings.reboot_command, args.no_reboot)
        )
    )
    print(json.dumps({"outcome": verdict}))
    return 0


def _mark_established(settings: SystemUpdateSection) -> None:
    from gateway.errors import SystemUpdateError

    try:
        _rauc(settings).mark(good=True)
    except SystemUpdateError as exc:
        log.error("%s", exc)


def _cmd_status(args: argparse.Namespace) -> int:
    from gateway.sysupdate.status import read_system_block

    print(json.dumps(read_system_block(load_config(args.config)), indent=2, sort_keys=True))
    return 0
