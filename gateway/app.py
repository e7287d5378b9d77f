"""The gateway daemon: wires the flows together under one TaskGroup.

Services (each a named task): the school broker link, the academy broker
link, state ingest, the outbox drain, the summary maker, the command flow
(intake of academy envelopes, delivery to tablets, expiry, tablet results),
the update cache and the LAN HTTP server. ``stop()`` shuts down in order:
publish offline status on both brokers, cancel the services, close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Coroutine
from typing import Any

from gateway import __version__, topics
from gateway.appliance.discovery import announce_until_cancelled, gateway_properties
from gateway.appliance.notify import notify, run_watchdog, watchdog_interval
from gateway.broker.link import Announcement, BrokerLink, Inbound, LinkSettings
from gateway.cache.service import CacheService
from gateway.cache.service import summarize as summarize_cache
from gateway.commands import queue as command_queue
from gateway.commands.clock import BoxClock
from gateway.commands.delivery import CommandDelivery
from gateway.commands.envelope import VerifyPolicy
from gateway.commands.intake import CommandIntake
from gateway.commands.results import CommandResults
from gateway.config import Config
from gateway.errors import BrokerError, GatewayError, RejectedInput
from gateway.health.box import collect_box_health
from gateway.health.metrics import render_metrics
from gateway.metrics import Counters, Reading
from gateway.relay import outbox
from gateway.relay.drain import OutboxDrain
from gateway.relay.outbox import OutboxBudget
from gateway.security.admin_token import load_or_create_admin_token
from gateway.security.broker_files import load_identity, reload_broker, write_broker_files
from gateway.security.enroll_http import EnrollmentEndpoint, serve_enrollment
from gateway.security.escrow import EscrowPublisher, public_key_from_config
from gateway.security.tls import academy_context, missing_academy_cert, school_broker_context
from gateway.signed import load_public_keys
from gateway.state.ingest import StateIngest
from gateway.state.report import parse_presence
from gateway.state.shadow import tablet_counts
from gateway.state.summary import SummaryRules
from gateway.state.summary_maker import SummaryMaker
from gateway.store.database import DATABASE_FILE, Database
from gateway.web.server import build_app, serve_until_cancelled

log = logging.getLogger(__name__)

# How often the gateway looks for the academy client certificate while it is missing.
CERTIFICATE_POLL_S = 10.0


def _presence(online: bool, gateway_id: str, store: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"online": online, "gateway_id": gateway_id}
    if store is not None:
        body["store"] = store
    return json.dumps(body).encode()


class Gateway:
    """One gateway process: construct with a Config, then ``await run()``."""

    def __init__(self, config: Config, counters: Counters | None = None) -> None:
        self.config = config
        self.counters = counters or Counters()
        self.ready = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._started_at = time.monotonic()
        self._db: Database | None = None
        g = config.gateway
        self.school_link = BrokerLink(
            LinkSettings(
                name="school",
                host=config.school_broker.host,
                port=config.school_broker.port,
                client_id=f"gateway-{g.gateway_id}",
                keepalive_s=config.school_broker.keepalive_s,
                birth=Announcement(topics.GATEWAY_STATUS, _presence(True, g.gateway_id)),
                will=Announcement(topics.GATEWAY_STATUS, _presence(False, g.gateway_id)),
                subscriptions=(
                    (topics.TABLET_STATE_FILTER, 1),
                    (topics.TABLET_STATUS_FILTER, 1),
                    (topics.TABLET_RESULTS_FILTER, 1),
                ),
                backoff_cap_s=5.0,
            ),
            self.counters,
            on_message=self._route_school_message,
        )
        status_topic = topics.academy_gateway_status(g.school_id, g.gateway_id)
        self.academy_link = BrokerLink(
            LinkSettings(
                name="academy",
                host=config.academy_broker.host,
                port=config.academy_broker.port,
                client_id=f"{g.school_id}-{g.gateway_id}",
                keepalive_s=config.academy_broker.keepalive_s,
                birth=Announcement(status_topic, _presence(True, g.gateway_id)),
                will=Announcement(status_topic, _presence(False, g.gateway_id)),
                subscriptions=(
                    (topics.academy_commands(g.school_id), 1),
                    (topics.academy_manifest(g.school_id), 1),
                ),
            ),
            self.counters,
            on_message=self._route_academy_message,
        )
        self._academy_keys = load_public_keys(config.commands.academy_keys)
        self._ingest: StateIngest | None = None
        self.cache: CacheService | None = None
        self._intake: CommandIntake | None = None
        self._delivery: CommandDelivery | None = None
        self._results: CommandResults | None = None
        self.outbox_budget = OutboxBudget(config.uplink.outbox_budget_bytes, self.counters)
        # When the uplink went down (None while connected), and why it cannot connect.
        self._uplink_down_since: float | None = time.time()
        self._uplink_problem: str | None = None

    def stop(self) -> None:
        """Ask ``run`` to shut down in order (safe from a signal handler)."""
        self._stop_requested.set()

    async def run(self) -> None:
        g = self.config.gateway
        g.state_dir.mkdir(parents=True, exist_ok=True)
        admin_token = load_or_create_admin_token(g.state_dir)
        # Keys and certificates: made at first start, refused if others can read them.
        identity = load_identity(self.config)
        secure = not self.config.school_broker.lab_plain_listener
        self.school_link.settings = dataclasses.replace(
            self.school_link.settings, tls=school_broker_context(self.config)
        )
        self._db = db = await Database.open(g.state_dir / DATABASE_FILE)
        outbox.track_peak(db)
        try:
            await write_broker_files(self.config, identity, db)
            if identity.server_reissued and secure:
                try:
                    await reload_broker(self.config)
                except GatewayError as exc:
                    log.error("new server certificate not loaded by the broker yet: %s", exc)
            uplink, tablets = self.config.uplink, self.config.tablets
            drain = OutboxDrain(
                db,
                self.academy_link,
                self.counters,
                school_id=g.school_id,
                gateway_id=g.gateway_id,
                max_bytes_per_s=uplink.max_bytes_per_s,
                batch_max_bytes=uplink.batch_max_bytes,
            )
            self._ingest = StateIngest(
                db,
                self.counters,
                self.school_link.ack_all,
                max_report_bytes=tablets.max_report_bytes,
                budget=self.outbox_budget,
                on_stored=lambda _reports: drain.notify(),
            )
            self.cache = cache = CacheService(self.config, db, self.counters)
            await cache.open()
            box_clock = BoxClock()  # expiry and replay across wall-clock jumps
            await box_clock.load(db)
            self._delivery = delivery = CommandDelivery(
                db,
                self.school_link,
                self.counters,
                redeliver_after_s=self.config.commands.redeliver_after_s,
                retention_s=self.config.commands.retention_s,
                on_committed=drain.notify,
                on_pruned=lambda ids: intake.forget(ids),  # noqa: PLW0108 (intake comes next)
                clock=box_clock,
            )
            c = self.config.commands
            self._intake = intake = CommandIntake(
                db,
                self.counters,
                self.academy_link.ack,
                keys=self._academy_keys,
                policy=VerifyPolicy(
                    school_id=g.school_id,
                    max_envelope_bytes=c.max_envelope_bytes,
                    clock_skew_s=c.clock_skew_s,
                    max_ttl_s=c.max_ttl_s,
                ),
                max_unfinished=c.max_unfinished_commands,
                on_accepted=delivery.command_accepted,
                clock=box_clock,
                on_committed=drain.notify,
            )
            self._results = results = CommandResults(
                db, self.counters, self.school_link.ack, on_committed=drain.notify
            )
            await intake.load()
            await delivery.load()
            summaries = SummaryMaker(
                db,
                self.outbox_budget,
                self.counters,
                interval_s=uplink.summary_interval_s,
                rules=SummaryRules(
                    low_battery_pct=tablets.low_battery_pct,
                    low_storage_mb=tablets.low_storage_mb,
                    required_apps=tablets.required_apps,
                ),
                health=lambda: collect_box_health(g.state_dir).as_dict(),
                extra=self._summary_sections,
                on_enqueued=drain.notify,
            )
            http_started = asyncio.Event()
            web_app = build_app(self.status, admin_token, cache, metrics=self.metrics)
            services: dict[str, Coroutine[Any, Any, None]] = {
                "school-broker": self.school_link.run(),
                "academy-broker": self._run_academy_link(),
                "uplink-watch": self._watch_uplink(),
                "state-ingest": self._ingest.run(),
                "outbox-drain": drain.run(),
                "cache": cache.run(),
                "command-intake": intake.run(),
                "command-delivery": delivery.run_publisher(),
                "command-expiry": delivery.run_expiry(),
                "command-results": results.run(),
                "summaries": summaries.run(),
                "store-health": self._report_store_health(db),
                "http": serve_until_cancelled(
                    web_app, self.config.http.host, self.config.http.port, http_started
                ),
            }
            if secure:
                endpoint = EnrollmentEndpoint(self.config, identity, db, self.counters)
                services["enrollment"] = serve_enrollment(endpoint)
            escrow = self._escrow_publisher(db)
            if escrow is not None:
                services["identity-escrow"] = escrow.run()
            if self.config.discovery.enabled:
                announcement = self._announcement()
                if announcement is not None:
                    services["mdns"] = announcement
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(coro, name=name) for name, coro in services.items()]
                group.create_task(self._stop_when_asked(tasks), name="shutdown")
                await http_started.wait()
                await cache.running.wait()
                self.ready.set()
                notify("READY=1")
                interval = watchdog_interval()
                if interval is not None:
                    tasks.append(group.create_task(run_watchdog(interval), name="systemd-watchdog"))
                log.info("gateway %s of school %s is up", g.gateway_id, g.school_id)
        finally:
            await db.close()
            self._db = None
            log.info("gateway stopped")

    async def _run_academy_link(self) -> None:
        """The academy link, once its client certificate is there (looked for every 10 s).

        Installing the certificate the academy signed needs no restart.
        """
        missing = missing_academy_cert(self.config)
        if missing is not None:
            log.error("academy uplink not started: %s", missing)
            self._uplink_problem = missing
            # A file to look for: no event to wait on.
            while missing_academy_cert(self.config) is not None:  # noqa: ASYNC110
                await asyncio.sleep(CERTIFICATE_POLL_S)
            log.info("academy client certificate found: starting the uplink")
            self._uplink_problem = None
        self.academy_link.settings = dataclasses.replace(
            self.academy_link.settings, tls=academy_context(self.config)
        )
        await self.academy_link.run()

    async def _watch_uplink(self) -> None:
        """Remember since when the academy link is down, for ``status``."""
        while True:
            await self.academy_link.connected.wait()
            self._uplink_down_since = None
            await self.academy_link.wait_disconnected()
            self._uplink_down_since = time.time()

    async def _stop_when_asked(self, tasks: list[asyncio.Task[None]]) -> None:
        await self._stop_requested.wait()
        notify("STOPPING=1")
        log.info("shutting down")
        await asyncio.gather(self.school_link.disconnect(), self.academy_link.disconnect())
        for task in tasks:
            task.cancel()

    def _escrow_publisher(self, db: Database) -> EscrowPublisher | None:
        e = self.config.escrow
        if not e.academy_public_key:
            log.warning(
                "identity escrow is off (escrow.academy_public_key unset): a dead SD card "
                "would lose the school CA and every enrollment"
            )
            return None

        async def publish(topic: str, payload: bytes) -> None:
            await self.academy_link.publish(topic, payload, qos=1, retain=True)

        return EscrowPublisher(
            self.config,
            db,
            publish,
            recipient=public_key_from_config(e.academy_public_key),
            interval_s=e.interval_s,
            check_s=e.check_s,
        )

    async def _report_store_health(self, db: Database) -> None:
        """Tell the academy when the store stops (and starts again) taking writes.

        The outbox cannot hold this news while the disk is full, so it goes
        straight onto the retained gateway status topic (docs/protocol.md).
        """
        g = self.config.gateway
        topic = topics.academy_gateway_status(g.school_id, g.gateway_id)
        while True:
            await db.health.changed.wait()
            db.health.changed.clear()
            store = {"writable": db.health.writable, "error": db.health.error}
            try:
                await self.academy_link.publish(
                    topic, _presence(True, g.gateway_id, store), qos=1, retain=True
                )
            except BrokerError as exc:
                log.info("store health not reported upstream (academy link: %s)", exc)

    async def _summary_sections(self) -> dict[str, Any]:
        """What other flows add to each school summary."""
        if self.cache is None:
            return {}
        return {"cache": summarize_cache(await self.cache.stats())}

    def _announcement(self) -> Coroutine[Any, Any, None] | None:
        """The mDNS announcement on the box's LAN addresses, or None without any."""
        health = collect_box_health(self.config.gateway.state_dir)
        addresses = [a for iface in health.interfaces for a in iface.ipv4]
        if not addresses:
            log.warning("mDNS: no LAN address to announce on")
            return None
        g, http = self.config.gateway, self.config.http
        return announce_until_cancelled(
            f"School gateway {g.gateway_id}",
            http.port,
            addresses,
            gateway_properties(
                school_id=g.school_id,
                gateway_id=g.gateway_id,
                broker_port=self.config.school_broker.tls_port,
                cache_url=f"http://{addresses[0]}:{http.port}/content/",
            ),
        )

    async def metrics(self) -> tuple[bytes, str]:
        """``/metrics``: counters, backlog and tablet gauges, box health (Prometheus text)."""
        gauges = [
            Reading("broker_link_up", float(link.is_connected), {"link": link.settings.name})
            for link in (self.school_link, self.academy_link)
        ]
        if self._db is not None:
            backlog = await outbox.backlog(self._db)
            known, online = await tablet_counts(self._db)
            gauges += [
                Reading("outbox_rows", backlog["rows"]),
                Reading("outbox_bytes", backlog["bytes"]),
                Reading("outbox_oldest_age_seconds", backlog["oldest_age_s"]),
                Reading("tablets_known", known),
                Reading("tablets_online", online),
                Reading("store_writable", float(self._db.health.writable)),
            ]
        health = collect_box_health(self.config.gateway.state_dir)
        return render_metrics(self.counters, gauges, health)

    async def _route_school_message(self, message: Inbound) -> None:
        topic = topics.parse_tablet_topic(message.topic)
        if topic is not None and topic.channel == "status" and self._delivery and message.payload:
            # Presence also drives command delivery, as it arrives (the shadow
            # stores it too, through state ingest below).
            try:
                presence = parse_presence(topic.device_id, message.payload)
            except RejectedInput:
                pass  # state ingest rejects and counts it
            else:
                self._delivery.presence(presence.device_id, presence.online)
        if topic is not None and topic.channel in ("state", "status") and self._ingest:
            await self._ingest.accept(message)
            return
        if topic is not None and topic.channel == "results" and self._results:
            await self._results.accept(message)
            return
        self.counters.inc("school_messages_ignored")
        self.school_link.ack(message)

    async def _route_academy_message(self, message: Inbound) -> None:
        if message.topic == topics.academy_commands(self.config.gateway.school_id) and self._intake:
            await self._intake.accept(message)
            return
        if message.topic == topics.academy_manifest(self.config.gateway.school_id) and self.cache:
            # Applied and stored (committed) before the acknowledgement; a bad one is
            # counted and logged by the cache, and acknowledged: resending cannot fix it.
            with contextlib.suppress(RejectedInput):
                await self.cache.apply_manifest(message.payload)
            self.academy_link.ack(message)
            return
        self.counters.inc("academy_messages_ignored")
        self.academy_link.ack(message)

    async def status(self) -> dict[str, Any]:
        """What ``school-gateway status`` and the admin API show."""
        g = self.config.gateway
        known, online = await tablet_counts(self._db) if self._db else (0, 0)
        return {
            "school_id": g.school_id,
            "gateway_id": g.gateway_id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "brokers": {
                "school": self.school_link.is_connected,
                "academy": self.academy_link.is_connected,
            },
            "uplink": {
                "down_since": self._uplink_down_since,
                "down_for_s": (
                    None
                    if self._uplink_down_since is None
                    else round(time.time() - self._uplink_down_since, 1)
                ),
                "problem": self._uplink_problem,
            },
            "store": self._db.health.as_dict() if self._db else {},
            "tablets": {"known": known, "online": online},
            "outbox": {
                **(await outbox.backlog(self._db) if self._db else {}),
                "budget_bytes": self.outbox_budget.budget_bytes,
                "peak_bytes": await outbox.peak_bytes(self._db) if self._db else 0,
            },
            "cache": await self.cache.stats() if self.cache and self._db else {},
            "commands": await command_queue.status_view(self._db) if self._db else {},
            "counters": self.counters.snapshot(),
        }
