"""Whether this box installs a system bundle now: one pure function.

``choose_update`` looks at the manifest's system items, what the cache holds
complete, the running system, the outcome record and the clock, and answers
``install`` (write the request now), ``wait`` (an update is coming: say why)
or ``none`` (nothing to do: say why). Rules, in the order they are checked:

    disabled      system_update.enabled is false                     -> none
    no_rauc       this box has no RAUC compatible (a dev host)       -> none
    no_update     no system item for this box's compatible           -> none
    current       the item's version is the running one              -> none
    not_again     this bundle was refused, failed its health check
                  or rolled back before                              -> none
    attempts      tried max_attempts times already                   -> none
    in_flight     installed and waiting for the reboot, or booted
                  and waiting for the health check                   -> wait
    requested     a request is already waiting for the helper        -> wait
    downloading   the bundle is not complete and hash-checked yet    -> wait
    window        outside system_update.window                       -> wait
    install                                                          -> install
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from gateway.cache.manifest import SYSTEM_KIND, ManifestItem
from gateway.sysupdate.outcomes import NEVER_AGAIN, Outcome
from gateway.sysupdate.system import SystemInfo


@dataclass(frozen=True)
class Decision:
    action: str  # install | wait | none
    rule: str  # the rule that decided (module docstring)
    reason: str  # for a person (status, console)
    item: ManifestItem | None = None


def system_item_for(items: Sequence[ManifestItem], compatible: str) -> ManifestItem | None:
    """The manifest's system item for ``compatible`` (the manifest allows at most one)."""
    for item in items:
        if item.kind == SYSTEM_KIND and item.compatible == compatible:
            return item
    return None


def choose_update(
    items: Sequence[ManifestItem],
    *,
    complete: Collection[str],
    info: SystemInfo,
    history: Sequence[Outcome],
    enabled: bool,
    window_open: bool,
    window: str,
    request_pending: bool,
    max_attempts: int,
) -> Decision:
    """See the module docstring. ``complete``: sha256s cached and hash-checked."""
    if not enabled:
        return Decision("none", "disabled", "system updates are off (system_update.enabled)")
    if not info.compatible:
        return Decision("none", "no_rauc", "this box has no RAUC compatible (no system.conf)")
    item = system_item_for(items, info.compatible)
    if item is None:
        return Decision("none", "no_update", f"no system update for {info.compatible}")
    label = f"version {item.version} ({item.sha256[:12]})"
    if item.version == info.version:
        return Decision("none", "current", f"running {label} already", item)
    own = [o for o in history if o.sha256 == item.sha256]
    refused = [o for o in own if o.outcome in NEVER_AGAIN]
    if refused:
        last = refused[-1]
        why = f": {last.reason}" if last.reason else ""
        return Decision(
            "none",
            "not_again",
            f"{label} was {last.outcome}{why}; it is not tried again (publish a new bundle)",
            item,
        )
    tries = sum(1 for o in own if o.outcome == "installing")
    if tries >= max_attempts:
        return Decision(
            "none", "attempts", f"{label} was tried {tries} times; it is not tried again", item
        )
    if own and own[-1].outcome in ("installed", "booted"):
        waits = "the reboot" if own[-1].outcome == "installed" else "the health check"
        return Decision(
            "wait", "in_flight", f"{label} {own[-1].outcome}; waiting for {waits}", item
        )
    if request_pending:
        return Decision("wait", "requested", f"install of {label} requested", item)
    if item.sha256 not in complete:
        return Decision("wait", "downloading", f"{label} is being fetched by the cache", item)
    if not window_open:
        return Decision(
            "wait", "window", f"{label} is ready; waiting for the maintenance window {window}", item
        )
    return Decision("install", "install", f"installing {label}", item)
