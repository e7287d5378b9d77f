"""``python -m gateway system-update install``: root's side of an install request.

Run by ``school-gateway-system-update.service`` (root, oneshot) when the
gateway wrote ``request.json``. Checks, in order (the first that fails
decides; a refusal writes nothing to any slot and is never tried again):

    malformed      the request is not what files.parse_request accepts      refused
    window         outside system_update.window (a request left over from
                   a power cut): dropped, the gateway asks again in the window
    not_in_cache   the bundle path is not <state_dir>/cache/objects/<sha256>,
                   or is a link, or not a regular file                      refused
    size, sha256   the file is not the manifest's size and SHA-256           refused
    attempts       installing was tried max_attempts times                  failed
    signature      ``rauc info --keyring`` refuses it (unsigned, another
                   key, truncated, corrupt)                                  refused
    compatible     the bundle's compatible is not this box's                 refused
    version        the bundle's version is not the manifest's               refused

then ``installing``, ``rauc install`` (``failed`` with RAUC's message, or
``installed`` into the inactive slot), the request is removed, and the box
reboots. ``rauc install`` checks the signature and compatible again itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.cache.offpeak import in_windows, parse_windows
from gateway.config import Config
from gateway.errors import GatewayError, RejectedInput, SystemUpdateError
from gateway.sysupdate.files import (
    OUTCOME,
    REQUEST,
    InstallRequest,
    append_outcome,
    parse_request,
    read_small,
    update_dir,
)
from gateway.sysupdate.outcomes import outcome, parse_outcomes
from gateway.sysupdate.rauc import Rauc, inactive_slot
from gateway.sysupdate.system import SystemInfo, read_system_info

log = logging.getLogger(__name__)

MAX_REQUEST_AGE_S = 24 * 3600.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class InstallResult:
    outcome: str  # an outcome, or "none" (no request) / "dropped" (stale request)
    reason: str = ""


class Refused(Exception):
    """One check failed: ``reason`` is what the outcome record says."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_bundle_file(path: Path, expected: Path, request: InstallRequest) -> None:
    """The bundle is the cache's complete object for the request, byte for byte."""
    if os.path.realpath(path) != str(expected) or path != expected:
        raise Refused(f"bundle path {path} is not the cache's object {expected}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise Refused(f"cannot open the bundle {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise Refused(f"bundle {path} is not a regular file")
        if info.st_size != request.size:
            raise Refused(f"bundle is {info.st_size} bytes, the manifest says {request.size}")
        digest = hashlib.sha256()
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != request.sha256:
        raise Refused(f"bundle sha256 is {digest.hexdigest()}, the manifest says {request.sha256}")


def check_bundle_info(
    rauc: Rauc, bundle: Path, keyring: Path, info: SystemInfo, request: InstallRequest
) -> None:
    try:
        bundle_info = rauc.info(bundle, keyring)
    except SystemUpdateError as exc:
        raise Refused(f"signature check failed: {exc}") from exc
    if bundle_info.compatible != info.compatible:
        raise Refused(
            f"bundle is for compatible {bundle_info.compatible!r}, this box is {info.compatible!r}"
        )
    if bundle_info.version != request.version:
        raise Refused(
            f"bundle says version {bundle_info.version!r}, the manifest says {request.version!r}"
        )


def install_requested(
    config: Config,
    rauc: Rauc,
    *,
    reboot: Callable[[], None],
    clock: Callable[[], float] = time.time,
) -> InstallResult:
    """Handle ``request.json`` if there is one (module docstring).

    Whatever goes wrong, the request does not stay: left in place, the path
    unit would start this helper again and again.
    """
    try:
        return _install_requested(config, rauc, reboot=reboot, clock=clock)
    except (GatewayError, OSError) as exc:
        folder = update_dir(config.gateway.state_dir)
        (folder / REQUEST).unlink(missing_ok=True)
        log.error("install request dropped: %s", exc)
        return InstallResult("dropped", str(exc))


def _install_requested(
    config: Config,
    rauc: Rauc,
    *,
    reboot: Callable[[], None],
    clock: Callable[[], float],
) -> InstallResult:
    settings = config.system_update
    folder = update_dir(config.gateway.state_dir)
    request_path = folder / REQUEST
    data = read_small(request_path)
    if data is None:
        return InstallResult("none", "no install request")
    now = clock()
    info = read_system_info(settings)

    def finish(what: str, reason: str, request: InstallRequest | None) -> InstallResult:
        version, sha = (request.version, request.sha256) if request else ("unknown", "")
        append_outcome(folder, outcome(version, sha, what, at=clock(), reason=reason))
        request_path.unlink(missing_ok=True)
        log.log(logging.ERROR if what != "installed" else logging.INFO, "%s: %s", what, reason)
        return InstallResult(what, reason)

    try:
        request = parse_request(data)
    except RejectedInput as exc:
        return finish("refused", f"malformed install request: {exc.detail}", None)
    local = time.localtime(now)
    window = parse_windows((settings.window,), key="system_update.window")
    if now - request.requested_at > MAX_REQUEST_AGE_S or not in_windows(
        window, local.tm_hour * 60 + local.tm_min
    ):
        request_path.unlink(missing_ok=True)
        log.warning("dropped the request for %s: outside the window", request.version)
        return InstallResult("dropped", f"outside the maintenance window {settings.window}")
    expected = (config.gateway.state_dir / "cache" / "objects" / request.sha256).resolve()
    history = parse_outcomes(read_small(folder / OUTCOME) or b"")
    tries = sum(1 for o in history if o.sha256 == request.sha256 and o.outcome == "installing")
    try:
        check_bundle_file(Path(request.bundle), expected, request)
        if tries >= settings.max_attempts:
            return finish("failed", f"tried {tries} times already; not again", request)
        check_bundle_info(rauc, expected, settings.keyring, info, request)
    except Refused as exc:
        return finish("refused", exc.reason, request)
    # Every attempt is recorded as one "installing" before anything can fail, so
    # attempts are counted whatever happens next (a power cut included).
    append_outcome(folder, outcome(request.version, request.sha256, "installing", at=clock()))
    try:
        slot = inactive_slot(rauc.status())
        rauc.install(expected)
    except SystemUpdateError as exc:
        return finish("failed", str(exc), request)
    append_outcome(
        folder, outcome(request.version, request.sha256, "installed", at=clock(), slot=slot)
    )
    request_path.unlink(missing_ok=True)
    log.info("installed system version %s into slot %s; rebooting", request.version, slot)
    reboot()
    return InstallResult("installed", f"slot {slot}")
