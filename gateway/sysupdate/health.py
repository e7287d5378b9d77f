"""``python -m gateway system-update health-check``: root's check at every boot.

Run by ``school-gateway-health-check.service`` (root, oneshot). What it does
depends on the last outcome recorded and the slot the box booted
(``rauc.slot=``), decided by ``boot_verdict`` (pure):

    last outcome          booted slot               then
    installed / booted    the one installed         ``booted``, judge the new system
    health-check-failed   the one installed         judge it again (mark-bad did not
                                                    take; the bootloader's tries still count)
    installed / booted /  the other one             ``rolled-back``; mark-good (the old
    health-check-failed                             slot keeps booting)
    anything else         -                         an established slot: mark-good

Judging waits up to ``system_update.health_deadline_s`` for all of: the
gateway of *this* boot reached READY (``ready.json`` carries this boot's id),
and a tablet-like MQTT connection on the school broker's LAN listener (TLS
with a throw-away client certificate of the school CA, as a tablet has; the
lab's plain listener in development) that reads the gateway's retained
``gateway/status`` saying online. Pass: ``mark-good`` and ``marked-good``.
Fail: ``health-check-failed`` with what was missing, ``mark-bad``, reboot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import secrets
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from gateway import topics
from gateway.config import Config
from gateway.errors import GatewayError, SystemUpdateError
from gateway.security import pki
from gateway.security.identity import PkiPaths
from gateway.sysupdate.files import OUTCOME, READY, append_outcome, read_small, ready_boot_id
from gateway.sysupdate.files import update_dir as _update_dir
from gateway.sysupdate.outcomes import Outcome, outcome, parse_outcomes
from gateway.sysupdate.rauc import Rauc
from gateway.sysupdate.system import PROC_CMDLINE, current_boot_id, read_system_info

log = logging.getLogger(__name__)

PENDING = ("installed", "booted", "health-check-failed")
POLL_S = 2.0
PROBE_CN_PREFIX = "health-check-probe-"


@dataclass(frozen=True)
class Verdict:
    action: str  # judge | rolled-back | established
    last: Outcome | None
    reason: str


def boot_verdict(history: tuple[Outcome, ...], booted: str | None) -> Verdict:
    """What this boot means for the last update (module docstring's table)."""
    last = history[-1] if history else None
    if last is None or last.outcome not in PENDING:
        return Verdict("established", last, "no update waiting for a verdict")
    if booted is None or last.slot is None:
        return Verdict("judge", last, "booted slot unknown: judging this system")
    if booted == last.slot:
        return Verdict("judge", last, f"first boot of slot {booted}")
    why = f" after {last.outcome}: {last.reason}" if last.reason else f" after {last.outcome}"
    return Verdict(
        "rolled-back",
        last,
        f"booted slot {booted}, version {last.version} was installed in slot {last.slot}{why}",
    )


Probe = Callable[[], Awaitable[str | None]]


async def wait_healthy(
    checks: list[tuple[str, Probe]], deadline_s: float, poll_s: float = POLL_S
) -> str | None:
    """None once every check passes within ``deadline_s``; else the last problem seen."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    problem: str | None = "not checked"
    while True:
        problem = None
        for name, check in checks:
            try:
                found = await check()
            except (GatewayError, OSError) as exc:
                found = str(exc)
            if found is not None:
                problem = f"{name}: {found}"
                break
        if problem is None:
            return None
        if loop.time() + poll_s > end:
            return problem
        log.info("not healthy yet (%s)", problem)
        await asyncio.sleep(poll_s)


def ready_check(state_dir: Path, boot_id: str) -> Probe:
    async def check() -> str | None:
        found = ready_boot_id(read_small(_update_dir(state_dir) / READY))
        if found is None:
            return "the gateway never reached READY"
        if found != boot_id:
            return "the gateway has not reached READY since this boot"
        return None

    return check


def _probe_context(config: Config, folder: Path) -> ssl.SSLContext:
    """A tablet's TLS context: a 1-day client certificate of the school CA."""
    paths = PkiPaths.under(config.gateway.state_dir)
    ca_cert = pki.load_certificate(paths.ca_cert.read_bytes(), str(paths.ca_cert))
    ca_key = pki.load_private_key(paths.ca_key.read_bytes(), str(paths.ca_key))
    key = pki.new_private_key()
    cert = pki.issue_client_certificate(
        pki.Issuer(ca_cert, ca_key),
        key.public_key(),
        cn=f"{PROBE_CN_PREFIX}{secrets.token_hex(4)}",
        now=dt.datetime.now(dt.UTC),
        days=1,
    )
    (folder / "probe.key").write_bytes(pki.private_key_pem(key))
    (folder / "probe.crt").write_bytes(pki.certificate_pem(cert))
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(paths.ca_cert))
    context.check_hostname = False  # the school CA is pinned; the address is the box's own
    context.load_cert_chain(str(folder / "probe.crt"), str(folder / "probe.key"))
    return context


def tablet_check(config: Config, folder: Path) -> Probe:
    """Connect as a tablet would and read the gateway's retained ``gateway/status``."""
    broker = config.school_broker

    async def check() -> str | None:
        if broker.lab_plain_listener:
            host, port, context = broker.host, broker.port, None
        else:
            host = "127.0.0.1" if broker.tls_host in ("0.0.0.0", "") else broker.tls_host
            port, context = broker.tls_port, _probe_context(config, folder)
        try:
            async with (
                asyncio.timeout(10),
                aiomqtt.Client(
                    host,
                    port,
                    identifier=f"{PROBE_CN_PREFIX}{secrets.token_hex(4)}",
                    tls_context=context,
                    timeout=5,
                ) as client,
            ):
                await client.subscribe(topics.GATEWAY_STATUS, qos=1)
                async for message in client.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    try:
                        online = json.loads(payload).get("online") is True
                    except (ValueError, AttributeError):
                        online = False
                    return None if online else "the gateway says it is offline"
        except aiomqtt.MqttError as exc:
            return f"no tablet connection on {host}:{port}: {exc}"
        except TimeoutError:
            return f"no gateway status on {host}:{port} within 10 s"
        return "the broker closed the connection"

    return check


async def run_health_check(
    config: Config,
    rauc: Rauc,
    *,
    reboot: Callable[[], None],
    cmdline: Path = PROC_CMDLINE,
    boot_id: str | None = None,
    clock: Callable[[], float] = time.time,
) -> str:
    """Record this boot's verdict (module docstring); returns the outcome, or ``established``."""
    settings = config.system_update
    folder = _update_dir(config.gateway.state_dir)
    info = read_system_info(settings, cmdline)
    history = parse_outcomes(read_small(folder / OUTCOME) or b"")
    verdict = boot_verdict(history, info.booted_slot)
    last = verdict.last
    log.info("health check: %s (%s)", verdict.action, verdict.reason)
    if verdict.action == "established" or last is None:
        _mark(rauc, good=True)
        return "established"
    if verdict.action == "rolled-back":
        record = outcome(
            last.version,
            last.sha256,
            "rolled-back",
            at=clock(),
            reason=verdict.reason,
            slot=info.booted_slot,
        )
        append_outcome(folder, record)
        _mark(rauc, good=True)
        return "rolled-back"
    if last.outcome == "installed":
        append_outcome(
            folder, outcome(last.version, last.sha256, "booted", at=clock(), slot=last.slot)
        )
    with tempfile.TemporaryDirectory(prefix="health-check-") as scratch:
        problem = await wait_healthy(
            [
                ("gateway", ready_check(config.gateway.state_dir, boot_id or current_boot_id())),
                ("tablets", tablet_check(config, Path(scratch))),
            ],
            settings.health_deadline_s,
        )
    if problem is None:
        _mark(rauc, good=True)
        append_outcome(
            folder, outcome(last.version, last.sha256, "marked-good", at=clock(), slot=last.slot)
        )
        return "marked-good"
    append_outcome(
        folder,
        outcome(
            last.version,
            last.sha256,
            "health-check-failed",
            at=clock(),
            reason=f"not healthy within {settings.health_deadline_s:.0f} s: {problem}",
            slot=last.slot,
        ),
    )
    _mark(rauc, good=False)
    reboot()
    return "health-check-failed"


def _mark(rauc: Rauc, *, good: bool) -> None:
    try:
        rauc.mark(good)
    except SystemUpdateError as exc:
        log.error("%s", exc)
