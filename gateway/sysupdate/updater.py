"""SystemUpdater: the gateway's side of system updates (unprivileged).

One task of the gateway. Every ``system_update.check_interval_s`` it asks
``decision.choose_update`` whether to install the manifest's system bundle,
and when the answer is ``install`` it writes ``request.json`` (atomically,
files.py); root's helper does the rest. Every ``OUTCOME_POLL_S`` it re-reads
``outcome.json`` when it changed and then wakes the summary maker, so each
outcome goes upstream at once. Once the gateway is READY, ``mark_ready``
writes ``ready.json`` for the boot health check.

Nothing here can stop the gateway: an unreadable file is logged and counted,
and tried again at the next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.cache.manifest import ManifestItem
from gateway.cache.offpeak import in_windows, parse_windows
from gateway.config import Config
from gateway.metrics import Counters
from gateway.sysupdate.decision import Decision, choose_update
from gateway.sysupdate.files import (
    OUTCOME,
    READY,
    REQUEST,
    InstallRequest,
    read_small,
    ready_marker,
    update_dir,
    write_atomically,
)
from gateway.sysupdate.outcomes import Outcome, parse_outcomes, system_block
from gateway.sysupdate.system import SystemInfo, current_boot_id, read_system_info

log = logging.getLogger(__name__)

OUTCOME_POLL_S = 5.0


class SystemUpdater:
    """Construct, then run ``run()`` as a task; ``mark_ready()`` once the gateway is READY.

    ``manifest_items``, ``complete`` and ``object_path`` are the update cache's
    current manifest items, the sha256s it holds complete and hash-checked, and
    where such an item's file is.
    """

    def __init__(
        self,
        config: Config,
        counters: Counters,
        *,
        manifest_items: Callable[[], tuple[ManifestItem, ...]],
        complete: Callable[[], set[str]],
        object_path: Callable[[str], Path],
        on_outcome: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = config.system_update
        self.windows = parse_windows((self.settings.window,), key="system_update.window")
        self.dir = update_dir(config.gateway.state_dir)
        self._counters = counters
        self._manifest_items = manifest_items
        self._complete = complete
        self._object_path = object_path
        self._on_outcome = on_outcome
        self._clock = clock
        self.info: SystemInfo = read_system_info(self.settings)
        self.outcomes: tuple[Outcome, ...] = ()
        self._outcome_stamp: tuple[int, int] | None = None
        self.decision: Decision | None = None

    def window_open(self, now: float) -> bool:
        local = time.localtime(now)
        return in_windows(self.windows, local.tm_hour * 60 + local.tm_min)

    def load_outcomes(self) -> bool:
        """Re-read ``outcome.json`` if it changed; True when it did."""
        path = self.dir / OUTCOME
        try:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        except OSError as exc:
            self._counters.inc("system_update_errors")
            log.warning("cannot read %s: %s", path, exc)
            return False
        if stamp == self._outcome_stamp:
            return False
        self._outcome_stamp = stamp
        try:
            data = read_small(path)
        except OSError as exc:
            self._counters.inc("system_update_errors")
            log.warning("cannot read %s: %s", path, exc)
            return False
        self.outcomes = parse_outcomes(data) if data is not None else ()
        if self.outcomes:
            last = self.outcomes[-1]
            log.info(
                "system update %s: %s%s",
                last.version,
                last.outcome,
                f" ({last.reason})" if last.reason else "",
            )
        return True

    def decide(self) -> Decision:
        now = self._clock()
        decision = choose_update(
            self._manifest_items(),
            complete=self._complete(),
            info=self.info,
            history=self.outcomes,
            enabled=self.settings.enabled,
            window_open=self.window_open(now),
            window=self.settings.window,
            request_pending=(self.dir / REQUEST).exists(),
            max_attempts=self.settings.max_attempts,
        )
        if decision != self.decision:
            log.info("system update: %s", decision.reason)
        self.decision = decision
        return decision

    def request_install(self, item: ManifestItem) -> None:
        """Write ``request.json`` for ``item``; root's path unit picks it up."""
        request = InstallRequest(
            bundle=str(self._object_path(item.sha256).resolve()),
            sha256=item.sha256,
            size=item.size,
            version=item.version,
            compatible=item.compatible,
            requested_at=self._clock(),
        )
        write_atomically(self.dir / REQUEST, request.render(), mode=0o640)
        self._counters.inc("system_update_requests")
        log.info("requested the install of system version %s (%s)", item.version, item.sha256)

    def check(self) -> Decision:
        """One turn: outcomes, decision, request."""
        if self.load_outcomes() and self._on_outcome is not None:
            self._on_outcome()
        decision = self.decide()
        if decision.action == "install" and decision.item is not None:
            try:
                self.request_install(decision.item)
            except OSError as exc:
                self._counters.inc("system_update_errors")
                log.error("cannot write the install request in %s: %s", self.dir, exc)
        return decision

    def mark_ready(self) -> None:
        """Tell the boot health check that the gateway of this boot reached READY."""
        try:
            write_atomically(
                self.dir / READY,
                ready_marker(current_boot_id(), self.info.version, self._clock()),
            )
        except OSError as exc:
            self._counters.inc("system_update_errors")
            log.error("cannot write %s: %s", self.dir / READY, exc)

    async def run(self) -> None:
        with contextlib.suppress(OSError):
            self.dir.mkdir(parents=True, exist_ok=True)
        next_decision = 0.0
        while True:
            now = time.monotonic()
            if now >= next_decision:
                self.check()
                next_decision = now + self.settings.check_interval_s
            elif self.load_outcomes() and self._on_outcome is not None:
                self._on_outcome()
            await asyncio.sleep(min(OUTCOME_POLL_S, self.settings.check_interval_s))

    def block(self) -> dict[str, Any]:
        """The summary's ``system`` block."""
        return system_block(self.info, self.outcomes)

    def status(self) -> dict[str, Any]:
        """``status`` and the console: the block, plus what the updater waits for."""
        block = self.block()
        block["enabled"] = self.settings.enabled
        block["window"] = self.settings.window
        block["next"] = None if self.decision is None else self.decision.reason
        return block
