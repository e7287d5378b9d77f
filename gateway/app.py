"""The gateway daemon: wires the flows together under one TaskGroup.

``run()`` builds the parts in an order where each needs only what came
before it: the box's identity (keys and certificates, made at first start),
the broker links with their TLS contexts (two sessions on the school broker:
state reports on one, presence, results and commands on the other, so a
flood of reports never queues ahead of them), the store, then the flows
(:class:`Flows`): the outbox drain, state ingest and summaries, the command
flow (delivery, intake, results), the update cache. Every part that commits
rows for the academy wakes the drain (``drain.notify``); the links hand each
message to ``_route_school_message`` / ``_route_academy_message``, which
parse the topic once and pass what they parsed on. Services (each a named task):
see ``_services``. ``stop()`` shuts down in order: publish offline status on
both brokers, cancel the services, close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from gateway import __version__, topics
from gateway.appliance.discovery import announce_until_cancelled, gateway_properties
from gateway.appliance.notify import notify, run_watchdog, watchdog_interval
from gateway.broker.limits import academy_packet_limit, school_packet_limit
from gateway.broker.link import Announcement, BrokerLink, Inbound, InboundHandler, LinkSettings
from gateway.cache.manifest import MAX_MANIFEST_BYTES
from gateway.cache.service import CacheService
from gateway.cache.service import summarize as summarize_cache
from gateway.commands import queue as command_queue
from gateway.commands.clock import BoxClock
from gateway.commands.confirmations import ResultConfirmations
from gateway.commands.delivery import CommandDelivery
from gateway.commands.envelope import VerifyPolicy
from gateway.commands.intake import AcceptedCommands, CommandIntake
from gateway.commands.local import LocalActions
from gateway.commands.results import CommandResults
from gateway.config import AcademyBrokerSection, Config, SchoolBrokerSection
from gateway.errors import BrokerError, GatewayError, RejectedInput
from gateway.health.box import collect_box_health
from gateway.health.metrics import render_metrics, system_readings
from gateway.metrics import Counters, Reading
from gateway.relay import outbox
from gateway.relay.drain import OutboxDrain
from gateway.relay.outbox import OutboxBudget
from gateway.school_console.accounts import ConsoleAccounts
from gateway.school_console.console import install_console
from gateway.school_console.services import BoxServices
from gateway.school_console.setup import ensure_first_it_contact
from gateway.security.admin_token import load_or_create_admin_token
from gateway.security.broker_files import load_identity, reload_broker, write_broker_files
from gateway.security.enroll_http import EnrollmentEndpoint, serve_enrollment
from gateway.security.escrow import EscrowPublisher, public_key_from_config
from gateway.security.identity import Identity
from gateway.security.revocation import Revocation, revoke_tablet
from gateway.security.tls import academy_context, missing_academy_cert, school_broker_context
from gateway.serving import serve_until_cancelled
from gateway.signed import load_public_keys
from gateway.state.ingest import BATCH_SIZE, StateIngest
from gateway.state.intake_budget import TabletBudget
from gateway.state.report import Presence
from gateway.state.shadow import tablet_counts
from gateway.state.summary import SummaryRules
from gateway.state.summary_maker import SummaryMaker
from gateway.store.database import DATABASE_FILE, Database
from gateway.sysupdate.manifest_filter import for_this_box
from gateway.sysupdate.system import read_system_info
from gateway.sysupdate.updater import SystemUpdater
from gateway.web.server import build_app

log = logging.getLogger(__name__)

# How often the gateway looks for the academy client certificate while it is missing.
CERTIFICATE_POLL_S = 10.0
YIELD_EVERY = 10  # state messages routed between two turns of the event loop
MAX_BUDGET_DEVICES = 4_096  # per-tablet budgets kept (least recently seen forgotten first)


def _presence(online: bool, gateway_id: str, store: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"online": online, "gateway_id": gateway_id}
    if store is not None:
        body["store"] = store
    return json.dumps(body).encode()


@dataclass(frozen=True)
class Flows:
    """The parts that work on the store, built once it is open."""

    drain: OutboxDrain
    ingest: StateIngest
    presence: StateIngest  # its own queue: presence never waits behind state reports
    summaries: SummaryMaker
    delivery: CommandDelivery
    intake: CommandIntake
    results: CommandResults
    confirmations: ResultConfirmations
    cache: CacheService
    clock: BoxClock
    system: SystemUpdater


class Gateway:
    """One gateway process: construct with a Config, then ``await run()``.

    ``school_link``, ``academy_link`` and ``cache`` exist once ``run()`` has
    built them (the links need the identity for TLS, the cache the store).
    """

    school_link: BrokerLink
    command_link: BrokerLink
    academy_link: BrokerLink
    cache: CacheService
    _flows: Flows

    def __init__(self, config: Config, counters: Counters | None = None) -> None:
        self.config = config
        self.counters = counters or Counters()
        self.ready = asyncio.Event()
        self.outbox_budget = OutboxBudget(config.uplink.outbox_budget_bytes, self.counters)
        # Parsed once: they sign both commands and cache manifests.
        self._academy_keys = load_public_keys(config.commands.academy_keys)
        self._stop_requested = asyncio.Event()
        self._http_started = asyncio.Event()
        self._started_at = time.monotonic()
        self._db: Database | None = None
        # When the uplink went down (None while connected), and why it cannot connect.
        self._uplink_down_since: float | None = time.time()
        self._uplink_problem: str | None = None
        tablets = config.tablets
        self.tablet_budget = TabletBudget(
            tablets.max_messages_per_s, tablets.message_burst, max_devices=MAX_BUDGET_DEVICES
        )
        self._state_messages = 0
        self.console: BoxServices | None = None

    def stop(self) -> None:
        """Ask ``run`` to shut down in order (safe from a signal handler)."""
        self._stop_requested.set()

    async def run(self) -> None:
        g = self.config.gateway
        g.state_dir.mkdir(parents=True, exist_ok=True)
        admin_token = load_or_create_admin_token(g.state_dir)
        # Keys and certificates: made at first start, refused if others can read them.
        identity = load_identity(self.config)
        self.school_link, self.command_link, self.academy_link = self._links()
        self._db = db = await Database.open(g.state_dir / DATABASE_FILE, restore_newer=True)
        outbox.track_peak(db)
        try:
            await self._prepare_school_broker(identity, db)
            self._flows = flows = await self._build_flows(db)
            self.cache = flows.cache
            if self.config.console.enabled:
                self.console = await self._console(flows, identity, db)
            services = self._services(flows, identity, db, admin_token)
            await self._serve(services, flows)
        finally:
            await db.close()
            self._db = None
            log.info("gateway stopped")

    def _links(self) -> tuple[BrokerLink, BrokerLink, BrokerLink]:
        """The school (state, then commands) and academy broker links, TLS included.

        Only when the academy client certificate is not installed yet does the
        academy link get its TLS context later, as it starts (_run_academy_link).
        """
        g = self.config.gateway
        school_link = self._link(
            "school",
            self.config.school_broker,
            client_id=f"gateway-{g.gateway_id}",
            status_topic=topics.GATEWAY_STATUS,
            subscriptions=((topics.TABLET_STATE_FILTER, 1),),
            on_message=self._route_school_message,
            tls=school_broker_context(self.config),
            backoff_cap_s=5.0,
            receive_max=self.config.school_broker.receive_max,
            max_packet_size=school_packet_limit(self.config),
        )
        # The second session: presence and results in, deliveries and result
        # confirmations out. The broker queues for each session apart, so a
        # flood of state reports never fills this one's queue (docs/operations.md).
        # No birth or will of its own: gateway/status belongs to the state session;
        # _announce_ready says "online" again once this one has subscribed.
        broker = self.config.school_broker
        command_link = BrokerLink(
            LinkSettings(
                name="school_commands",
                host=broker.host,
                port=broker.port,
                client_id=f"gateway-{g.gateway_id}-commands",
                keepalive_s=broker.keepalive_s,
                subscriptions=((topics.TABLET_STATUS_FILTER, 1), (topics.TABLET_RESULTS_FILTER, 1)),
                tls=school_broker_context(self.config),
                backoff_cap_s=5.0,
                publish_timeout_s=broker.publish_timeout_s,
                receive_max=broker.receive_max,
                max_packet_size=school_packet_limit(self.config),
            ),
            self.counters,
            on_message=self._route_command_message,
        )
        academy_link = self._link(
            "academy",
            self.config.academy_broker,
            client_id=f"{g.school_id}-{g.gateway_id}",
            status_topic=topics.academy_gateway_status(g.school_id, g.gateway_id),
            subscriptions=(
                (topics.academy_commands(g.school_id), 1),
                (topics.academy_manifest(g.school_id), 1),
            ),
            on_message=self._route_academy_message,
            tls=academy_context(self.config) if missing_academy_cert(self.config) is None else None,
            max_packet_size=academy_packet_limit(self.config, MAX_MANIFEST_BYTES),
        )
        return school_link, command_link, academy_link

    def _link(
        self,
        name: str,
        broker: SchoolBrokerSection | AcademyBrokerSection,
        *,
        client_id: str,
        status_topic: str,
        subscriptions: tuple[tuple[str, int], ...],
        on_message: InboundHandler,
        **settings: Any,
    ) -> BrokerLink:
        """A link that announces this gateway on ``status_topic`` (birth and will)."""
        gateway_id = self.config.gateway.gateway_id
        return BrokerLink(
            LinkSettings(
                name=name,
                host=broker.host,
                port=broker.port,
                client_id=client_id,
                keepalive_s=broker.keepalive_s,
                birth=Announcement(status_topic, _presence(True, gateway_id)),
                will=Announcement(status_topic, _presence(False, gateway_id)),
                subscriptions=subscriptions,
                **settings,
            ),
            self.counters,
            on_message=on_message,
        )

    async def _prepare_school_broker(self, identity: Identity, db: Database) -> None:
        """Write the broker's CRL and ACL; have it reload a re-issued server certificate."""
        await write_broker_files(self.config, identity, db)
        if identity.server_reissued and not self.config.school_broker.lab_plain_listener:
            try:
                await reload_broker(self.config)
            except GatewayError as exc:
                log.error("new server certificate not loaded by the broker yet: %s", exc)

    async def _build_flows(self, db: Database) -> Flows:
        g, uplink, tablets, c = (
            self.config.gateway,
            self.config.uplink,
            self.config.tablets,
            self.config.commands,
        )
        drain = OutboxDrain(
            db,
            self.academy_link,
            self.counters,
            school_id=g.school_id,
            gateway_id=g.gateway_id,
            max_bytes_per_s=uplink.max_bytes_per_s,
            batch_max_bytes=uplink.batch_max_bytes,
        )
        ingest = StateIngest(
            db,
            self.counters,
            self.school_link.ack_all,
            max_report_bytes=tablets.max_report_bytes,
            budget=self.outbox_budget,
            on_committed=drain.notify,
            # A batch never waits for more than the broker may send unacknowledged.
            batch_size=min(BATCH_SIZE, self.config.school_broker.receive_max // 2),
        )
        presence = StateIngest(
            db,
            self.counters,
            self.command_link.ack_all,
            max_report_bytes=tablets.max_report_bytes,
            batch_size=min(BATCH_SIZE, self.config.school_broker.receive_max // 2),
        )
        cache = CacheService(
            self.config,
            db,
            self.counters,
            academy_keys=self._academy_keys,
            wanted=for_this_box(read_system_info(self.config.system_update).compatible),
        )
        await cache.open()
        accepted = AcceptedCommands()
        await accepted.load(db)
        box_clock = BoxClock()  # expiry and replay across wall-clock jumps
        await box_clock.load(db)
        delivery = CommandDelivery(
            db,
            self.command_link,
            self.counters,
            redeliver_after_s=c.redeliver_after_s,
            retention_s=c.retention_s,
            on_committed=drain.notify,
            on_pruned=accepted.forget,
            clock=box_clock,
        )
        await delivery.load()
        intake = CommandIntake(
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
            accepted=accepted,
            on_accepted=delivery.command_accepted,
            on_committed=drain.notify,
            clock=box_clock,
        )
        confirmations = ResultConfirmations(self.command_link, self.counters)
        results = CommandResults(
            db,
            self.counters,
            self.command_link.ack,
            on_committed=drain.notify,
            on_confirm=confirmations.confirm,
        )
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
            on_committed=drain.notify,
        )
        system = SystemUpdater(
            self.config,
            self.counters,
            manifest_items=cache.manifest_items,
            complete=cache.complete_items,
            object_path=cache.paths.object,
            on_outcome=summaries.wake,
        )
        system.load_outcomes()  # the first summary carries the last outcome
        return Flows(
            drain=drain,
            ingest=ingest,
            presence=presence,
            summaries=summaries,
            delivery=delivery,
            intake=intake,
            results=results,
            confirmations=confirmations,
            cache=cache,
            clock=box_clock,
            system=system,
        )

    def _services(
        self, flows: Flows, identity: Identity, db: Database, admin_token: str
    ) -> dict[str, Coroutine[Any, Any, None]]:
        """Every long-running task, by name."""
        http = self.config.http
        web_app = build_app(self.status, admin_token, flows.cache, metrics=self.metrics)
        if self.console is not None:
            install_console(web_app, self.console)
        services: dict[str, Coroutine[Any, Any, None]] = {
            "school-broker": self.school_link.run(),
            "school-broker-commands": self.command_link.run(),
            "academy-broker": self._run_academy_link(),
            "uplink-watch": self._watch_uplink(),
            "state-ingest": flows.ingest.run(),
            "presence-ingest": flows.presence.run(),
            "outbox-drain": flows.drain.run(),
            "cache": flows.cache.run(),
            "command-intake": flows.intake.run(),
            "command-delivery": flows.delivery.run_publisher(),
            "command-expiry": flows.delivery.run_expiry(),
            "command-results": flows.results.run(),
            "result-confirmations": flows.confirmations.run(),
            "ready-for-results": self._announce_ready(),
            "summaries": flows.summaries.run(),
            "system-update": flows.system.run(),
            "store-health": self._report_store_health(db),
            "http": serve_until_cancelled(web_app, http.host, http.port, self._http_started),
        }
        if not self.config.school_broker.lab_plain_listener:
            endpoint = EnrollmentEndpoint(self.config, identity, db, self.counters)
            services["enrollment"] = serve_enrollment(endpoint)
        escrow = self._escrow_publisher(db)
        if escrow is not None:
            services["identity-escrow"] = escrow.run()
        if self.config.discovery.enabled:
            announcement = self._announcement()
            if announcement is not None:
                services["mdns"] = announcement
        return services

    async def _console(self, flows: Flows, identity: Identity, db: Database) -> BoxServices:
        """The school console's view of the gateway (gateway/school_console), and its
        first IT-contact account or set-up code."""
        g, console = self.config.gateway, self.config.console
        secure = not self.config.school_broker.lab_plain_listener
        services = BoxServices(
            config=self.config,
            db=db,
            academy_link=self.academy_link,
            school_link=self.school_link,
            outbox_budget_bytes=self.outbox_budget.budget_bytes,
            last_summary_acked=lambda: flows.drain.last_acked.get("summary"),
            local_actions=LocalActions(
                db,
                school_id=g.school_id,
                max_unfinished=self.config.commands.max_unfinished_commands,
                on_accepted=flows.delivery.command_accepted,
                on_committed=flows.drain.notify,
                clock=flows.clock,
            ),
            cache=flows.cache,
            system=flows.system.status,
            revoke=(
                (lambda device_id: self._revoke_tablet(identity, db, device_id)) if secure else None
            ),
            ca_fingerprint=identity.ca_fingerprint if secure else None,
        )
        await ensure_first_it_contact(
            ConsoleAccounts(db),
            g.state_dir,
            console.first_it_contact,
            console.first_it_password_hash,
        )
        return services

    async def _revoke_tablet(self, identity: Identity, db: Database, device_id: str) -> Revocation:
        """Revoke from the console, and record the tablet offline.

        The broker cannot send the tablet's last will for it: the revoked
        tablet's new ACL denies every topic, its will included. So once its
        session is closed the gateway publishes the offline presence itself,
        retained, replacing the tablet's retained birth.
        """
        result = await revoke_tablet(self.config, identity, db, device_id)
        if result.session_closed:
            try:
                await self.school_link.publish(
                    topics.tablet_status(device_id), b'{"online":false}', qos=1, retain=True
                )
            except BrokerError as exc:
                log.warning(
                    "revoked %s, but its offline presence was not published: %s", device_id, exc
                )
        return result

    async def _serve(self, services: dict[str, Coroutine[Any, Any, None]], flows: Flows) -> None:
        g = self.config.gateway
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coro, name=name) for name, coro in services.items()]
            group.create_task(self._stop_when_asked(tasks), name="shutdown")
            await self._http_started.wait()
            await flows.cache.running.wait()
            self.ready.set()
            notify("READY=1")
            flows.system.mark_ready()  # for the boot health check of a new system
            interval = watchdog_interval()
            if interval is not None:
                tasks.append(group.create_task(run_watchdog(interval), name="systemd-watchdog"))
            log.info("gateway %s of school %s is up", g.gateway_id, g.school_id)

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
            # The one context that cannot be made up front (_links): made now.
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
        await asyncio.gather(
            self.school_link.disconnect(),
            self.command_link.disconnect(),
            self.academy_link.disconnect(),
        )
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

    async def _announce_ready(self) -> None:
        """Say ``gateway/status`` online again once the command session subscribed.

        Tablets re-send their unconfirmed results when they see it: after the
        broker lost its sessions (a power cut), results sent before the
        gateway's subscription was back found nobody to deliver them to.
        """
        payload = _presence(True, self.config.gateway.gateway_id)
        while True:
            await self.command_link.connected.wait()
            try:
                await self.command_link.publish(topics.GATEWAY_STATUS, payload, qos=1, retain=True)
            except BrokerError as exc:
                log.info("could not announce the gateway ready for results: %s", exc)
            await self.command_link.wait_disconnected()

    async def _summary_sections(self) -> dict[str, Any]:
        """What other flows add to each school summary."""
        return {
            "cache": summarize_cache(await self.cache.stats()),
            "system": self._flows.system.block(),
        }

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
            for link in (self.school_link, self.command_link, self.academy_link)
        ]
        gauges.append(
            Reading("tablets_over_budget", len(self.tablet_budget.flooders(time.monotonic())))
        )
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
            gauges += system_readings(self._flows.system.block())
        health = collect_box_health(self.config.gateway.state_dir)
        return render_metrics(self.counters, gauges, health)

    def _within_budget(self, device_id: str, message: Inbound, link: BrokerLink) -> bool:
        """The per-tablet budget: over it, the message is dropped here, cheaply."""
        if self.tablet_budget.allow(device_id, time.monotonic()):
            return True
        self.counters.inc("tablet_messages_over_budget")
        link.ack(message)
        return False

    async def _route_school_message(self, message: Inbound) -> None:
        """The state session: tablets' state reports, within each tablet's budget."""
        self._state_messages += 1
        if self._state_messages % YIELD_EVERY == 0:
            # A flood is read without ever waiting; let other tasks (commands,
            # presence, results) run between bursts.
            await asyncio.sleep(0)
        topic = topics.parse_tablet_topic(message.topic)
        if topic is not None and topic.channel == "state":
            if self._within_budget(topic.device_id, message, self.school_link):
                await self._flows.ingest.accept(message, topic)
        else:
            # Presence and results come on the command session; a copy here comes
            # from a subscription an older version left in this persistent session.
            self.counters.inc("school_messages_ignored")
            self.school_link.ack(message)

    async def _route_command_message(self, message: Inbound) -> None:
        """The command session: presence and results, never queued behind state reports."""
        topic = topics.parse_tablet_topic(message.topic)
        link = self.command_link
        if topic is None or topic.channel not in ("status", "results"):
            self.counters.inc("school_messages_ignored")
            link.ack(message)
        elif not self._within_budget(topic.device_id, message, link):
            return
        elif topic.channel == "results":
            await self._flows.results.accept(message)
        else:
            parsed = await self._flows.presence.accept(message, topic)
            if isinstance(parsed, Presence):  # presence also drives command delivery
                self._flows.delivery.presence(parsed.device_id, parsed.online)

    async def _route_academy_message(self, message: Inbound) -> None:
        school_id = self.config.gateway.school_id
        if message.topic == topics.academy_commands(school_id):
            await self._flows.intake.accept(message)
        elif message.topic == topics.academy_manifest(school_id):
            # Applied and stored (committed) before the acknowledgement; a bad one is
            # counted and logged by the cache, and acknowledged: resending cannot fix it.
            with contextlib.suppress(RejectedInput):
                await self.cache.apply_manifest(message.payload)
            self.academy_link.ack(message)
        else:
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
                # Both sessions on the school broker (state; presence and commands).
                "school": self.school_link.is_connected and self.command_link.is_connected,
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
            "flooding_tablets": [
                dataclasses.asdict(f) for f in self.tablet_budget.flooders(time.monotonic())
            ],
            "tablets": {"known": known, "online": online},
            "outbox": {
                **(await outbox.backlog(self._db) if self._db else {}),
                "budget_bytes": self.outbox_budget.budget_bytes,
                "peak_bytes": await outbox.peak_bytes(self._db) if self._db else 0,
            },
            "cache": await self.cache.stats() if self._db else {},
            "system": self._flows.system.status() if self._db else {},
            "commands": await command_queue.status_view(self._db) if self._db else {},
            "counters": self.counters.snapshot(),
        }
