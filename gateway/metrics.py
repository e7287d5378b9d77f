"""The gateway's metrics: one declared catalogue, counted in-process, shown at /metrics.

Every series has a fixed name and fixed label names, declared once in
:data:`CATALOGUE` (name, kind, help, labels) and listed by its exposed name in
docs/operations.md (tests/test_metrics.py checks both). What varies (the
reason of a rejection, the link, the kind of an upstream message) is a label
value, never part of a name.

Counting is one call, from anywhere that holds the process's :class:`Counters`::

    counters.inc("state_reports_stored", len(reports))
    counters.inc("tablet_messages_rejected", channel="state", reason=exc.reason)

A name that is not declared, or labels other than the declared ones, raise
:class:`UndeclaredMetric` at the call: a programming error, found by the
first test that reaches the line. To add a metric: add it to CATALOGUE and a
row to the table in docs/operations.md.

Counters are prometheus-client ``Counter`` objects on a registry of this
``Counters`` (no global state: two gateways in one test process do not
share); they are exposed as ``school_gateway_<name>_total``. Gauges are read
when /metrics is scraped (gateway.health.metrics) and exposed as
``school_gateway_<name>``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client.core import Metric

NAMESPACE = "school_gateway"


@dataclass(frozen=True)
class MetricSpec:
    """One declared metric: its name without prefix or ``_total``, and its label names."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    labels: tuple[str, ...] = ()

    @property
    def exposed(self) -> str:
        """The name a scraper sees."""
        suffix = "_total" if self.kind == "counter" else ""
        return f"{NAMESPACE}_{self.name}{suffix}"


def _counter(name: str, help_text: str, *labels: str) -> MetricSpec:
    return MetricSpec(name, "counter", help_text, labels)


def _gauge(name: str, help_text: str, *labels: str) -> MetricSpec:
    return MetricSpec(name, "gauge", help_text, labels)


CATALOGUE: tuple[MetricSpec, ...] = (
    # State flow: tablets -> shadow -> outbox.
    _counter("state_reports_received", "State reports received from tablets."),
    _counter("state_reports_stored", "State reports committed to the store."),
    _counter("presence_updates_stored", "Tablet presence (online/offline) updates stored."),
    _counter(
        "tablet_messages_rejected",
        "Tablet state and status messages rejected.",
        "channel",
        "reason",
    ),
    _counter("state_ingest_queue_full_waits", "Times state ingest waited on its full queue."),
    _counter("summaries_made", "School summaries made and put in the outbox."),
    _counter("school_messages_ignored", "Messages on the school broker no flow takes."),
    _counter(
        "tablet_messages_over_budget",
        "Tablet messages dropped unread: the tablet exceeded its message budget.",
    ),
    _counter("academy_messages_ignored", "Messages from the academy no flow takes."),
    # Relay: outbox -> academy.
    _counter("upstream_batches_sent", "Upstream batches the academy broker acknowledged."),
    _counter("upstream_bytes_sent", "Payload bytes of acknowledged upstream batches."),
    _counter("upstream_messages_sent", "Outbox rows acknowledged by the academy.", "kind"),
    _counter("upstream_batches_failed", "Upstream batches not acknowledged (sent again later)."),
    _counter("upstream_paced_waits", "Times the drain waited for the uplink rate limit."),
    _counter("outbox_shed", "Outbox rows dropped at the outbox budget.", "kind"),
    _counter("outbox_over_budget", "Times results and rejections alone exceeded the budget."),
    # Broker links.
    _counter("broker_connects", "Connections made to a broker.", "link"),
    _counter("broker_connection_errors", "Failed or lost broker connections.", "link"),
    _counter("broker_tls_refused", "Broker connections refused during the TLS handshake.", "link"),
    _counter(
        "broker_intake_pauses",
        "Times a link's in-flight window (receive_max) filled: the broker held messages back.",
        "link",
    ),
    _counter(
        "broker_intake_resumes", "Times acknowledgements opened a full in-flight window.", "link"
    ),
    _counter(
        "broker_receive_max_overruns",
        "Times a broker sent more unacknowledged messages than the link's receive_max.",
        "link",
    ),
    _counter(
        "broker_read_pauses",
        "Times a link stopped reading its socket (more than receive_max messages waiting).",
        "link",
    ),
    _counter(
        "broker_keepalive_timeouts", "Connections dropped: a ping had no answer in time.", "link"
    ),
    _counter(
        "broker_link_down",
        "Broker connections that failed or ended, by cause or reason code.",
        "link",
        "reason",
    ),
    _counter(
        "broker_refusals",
        "Publishes (puback) and subscriptions (suback) a broker refused, by reason code.",
        "link",
        "packet",
        "reason",
    ),
    # Commands: academy -> tablets.
    _counter("command_envelopes_received", "Command envelopes received from the academy."),
    _counter("command_envelopes_rejected", "Command envelopes rejected.", "reason"),
    _counter("command_intake_queue_full_waits", "Times command intake waited on its full queue."),
    _counter("commands_accepted", "Commands accepted and stored."),
    _counter("command_deliveries_created", "Deliveries created (one per target tablet)."),
    _counter("command_deliveries_published", "Command deliveries published to tablets."),
    _counter("command_deliveries_expired", "Deliveries that expired before completion."),
    _counter("command_redelivery_wakes", "Deliveries woken for sending again."),
    _counter("command_wake_overflows", "Wake-ups dropped because the wake set was full."),
    _counter("commands_pruned", "Finished commands removed after their retention."),
    _counter("command_results_received", "Command results received from tablets."),
    _counter("command_results_recorded", "Command results that changed a delivery."),
    _counter("command_results_repeated", "Command results already recorded (repeats)."),
    _counter("command_results_rejected", "Command results rejected.", "reason"),
    _counter("command_results_queue_full_waits", "Times result intake waited on its full queue."),
    _counter("command_result_confirmations_sent", "Result confirmations published to tablets."),
    _counter(
        "command_result_confirmations_dropped",
        "Result confirmations not published (queue full or publish failed; tablets re-send).",
    ),
    _counter("command_delivery_pauses", "Failed or timed-out delivery publishes (retried)."),
    _counter("command_birth_wakes", "Tablet births that woke their unanswered deliveries."),
    # Update cache.
    _counter("cache_requests", "Content requests from tablets."),
    _counter("cache_hits", "Content requests served from the cache."),
    _counter("cache_misses", "Content requests for files not cached yet."),
    _counter("cache_requests_unknown", "Content requests for hashes no manifest lists."),
    _counter("cache_requests_unavailable", "Content requests answered 503 (not available)."),
    _counter("cache_requests_rejected", "Content requests rejected.", "reason"),
    _counter("cache_lan_bytes_served", "Bytes served to tablets on the LAN."),
    _counter("cache_manifests_applied", "Signed manifests applied."),
    _counter(
        "cache_manifests_unchanged",
        "Manifests received again with the serial already applied (the retained one).",
    ),
    _counter("cache_manifest_rejected", "Manifests rejected.", "reason"),
    _counter("cache_manifest_fetch_errors", "Failed manifest fetches."),
    _counter("cache_items_refused", "Manifest items refused (too large for the cache)."),
    _counter("cache_items_imported", "Files imported from a folder (USB drive)."),
    _counter("cache_downloads_started", "Downloads from the origin started."),
    _counter("cache_downloads_completed", "Downloads from the origin verified and stored."),
    _counter("cache_downloads_resumed", "Downloads resumed with a range request."),
    _counter("cache_hash_mismatches", "Downloads whose hash did not match (discarded)."),
    _counter("cache_origin_errors", "Failed requests to the origin."),
    _counter("cache_origin_bytes", "Bytes downloaded from the origin."),
    _counter("cache_disk_read_errors", "Cache files that could not be read to serve them."),
    _counter("cache_evictions", "Files evicted from the cache."),
    _counter("cache_write_errors", "Downloads failed: the disk did not take a chunk (full?)."),
    # System updates (gateway/sysupdate).
    _counter("system_update_requests", "Install requests written for root's update helper."),
    _counter("system_update_errors", "System update files that could not be read or written."),
    # Enrollment.
    _counter("enrollments", "Tablets enrolled."),
    _counter("enrollment_rejected", "Enrollment requests rejected.", "reason"),
    # Gauges, read at each scrape.
    _gauge("outbox_rows", "Rows waiting in the outbox."),
    _gauge("outbox_bytes", "Bytes waiting in the outbox."),
    _gauge("outbox_oldest_age_seconds", "Age of the oldest row waiting in the outbox."),
    _gauge("tablets_known", "Tablets in the shadow."),
    _gauge("tablets_online", "Tablets online now."),
    _gauge("tablets_over_budget", "Tablets whose messages were dropped in the last minute."),
    _gauge("store_writable", "1 while the state store takes writes, 0 while the disk refuses."),
    _gauge("broker_link_up", "1 while the link to a broker is connected.", "link"),
    _gauge("box_cpu_percent", "CPU use since the previous reading, percent."),
    _gauge("box_load1", "1-minute load average."),
    _gauge("box_memory_total_bytes", "Physical memory."),
    _gauge("box_memory_available_bytes", "Memory available without swapping."),
    _gauge("box_disk_total_bytes", "Size of the filesystem holding the state directory."),
    _gauge("box_disk_free_bytes", "Free space on the filesystem holding the state directory."),
    _gauge("box_soc_temperature_celsius", "SoC temperature (absent without a sensor)."),
    _gauge("box_uptime_seconds", "Time since boot."),
    _gauge("box_default_route", "1 when the box has a default route out of the LAN."),
    _gauge(
        "system_info",
        "This box's system: version and booted slot (value always 1).",
        "version",
        "slot",
    ),
    _gauge(
        "system_last_update_timestamp_seconds",
        "When the last system update outcome was recorded; its version and outcome as labels.",
        "version",
        "outcome",
    ),
    _gauge(
        "box_interface_address_info",
        "IPv4 addresses of the LAN interfaces (value always 1).",
        "interface",
        "address",
    ),
)

SPECS: Mapping[str, MetricSpec] = {spec.name: spec for spec in CATALOGUE}


class UndeclaredMetric(LookupError):
    """A metric name or label set that CATALOGUE does not declare (a programming error)."""


def spec_for(name: str, kind: str, labels: Mapping[str, str]) -> MetricSpec:
    """The declared spec of ``name``, checked against the kind and label names given."""
    spec = SPECS.get(name)
    if spec is None or spec.kind != kind:
        raise UndeclaredMetric(
            f"{kind} {name!r} is not declared: add it to gateway/metrics.py CATALOGUE "
            "and to the metrics table of docs/operations.md"
        )
    if set(labels) != set(spec.labels):
        raise UndeclaredMetric(f"{name!r} takes labels {list(spec.labels)}, not {sorted(labels)}")
    return spec


@dataclass(frozen=True)
class Reading:
    """One gauge value read at scrape time."""

    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


def _series(name: str, labels: Mapping[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


class Counters:
    """The process's counters (every rejection, drop and shed), by declared name."""

    def __init__(self) -> None:
        self._registry = CollectorRegistry(auto_describe=True)
        self._counters = {
            spec.name: PromCounter(
                spec.name,
                spec.help,
                spec.labels,
                namespace=NAMESPACE,
                registry=self._registry,
            )
            for spec in CATALOGUE
            if spec.kind == "counter"
        }
        # (name, sorted label items) -> the labelled child, to skip .labels() on hot paths.
        self._children: dict[tuple[str, tuple[tuple[str, str], ...]], PromCounter] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        """Add ``amount`` to the series ``name`` with ``labels`` (declared ones, all of them)."""
        if not labels:
            counter = self._counters.get(name)
            if counter is None or SPECS[name].labels:
                spec_for(name, "counter", labels)  # raises, naming the problem
            else:
                counter.inc(amount)
                return
        key = (name, tuple(sorted(labels.items())))
        child = self._children.get(key)
        if child is None:
            spec_for(name, "counter", labels)
            child = self._children[key] = self._counters[name].labels(**labels)
        child.inc(amount)

    def get(self, name: str, **labels: str) -> int:
        """The count of ``name`` with ``labels``; the sum over any label left out."""
        if name not in self._counters:
            spec_for(name, "counter", {})
        total = 0.0
        for family in self._counters[name].collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and all(
                    sample.labels.get(key) == value for key, value in labels.items()
                ):
                    total += sample.value
        return int(total)

    def snapshot(self) -> dict[str, int]:
        """Every series counted so far (not zero), as ``name`` or ``name{label="value"}``."""
        values: dict[str, int] = {}
        for name, counter in self._counters.items():
            for family in counter.collect():
                for sample in family.samples:
                    if sample.name.endswith("_total") and sample.value:
                        values[_series(name, sample.labels)] = int(sample.value)
        return dict(sorted(values.items()))

    def collect(self) -> Iterator[Metric]:
        """The counter families for /metrics (without prometheus-client's ``_created``)."""
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family
