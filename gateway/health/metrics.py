"""``/metrics`` in the Prometheus text format, through prometheus-client.

The gateway keeps its own counters and gauges as plain mappings (free-form
snake_case names such as ``state_reports_received``); ``render_metrics``
turns one snapshot of them, plus a ``BoxHealth`` reading, into the
exposition body. A custom collector on a private registry means no global
state and nothing to unregister: each scrape renders exactly what it is
given.

Names: every metric is prefixed ``school_gateway_``; counters get the
``_total`` suffix (a name that already ends in ``_total`` is not doubled);
characters Prometheus does not allow become ``_``. When two names end up the
same after that, the first in sorted order wins and the other is logged and
left out, so the output is always a valid exposition.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.health.box import BoxHealth

logger = logging.getLogger(__name__)

PREFIX = "school_gateway_"

# The classic text format that generate_latest writes for names like ours.
# Spelt out rather than CONTENT_TYPE_LATEST, which newer prometheus-client
# releases moved to version=1.0.0 and older ones (Debian's) do not have.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# HELP text for the names the gateway is known to use; any other name gets
# a HELP made from its words.
KNOWN_HELP: dict[str, str] = {
    "state_reports_received": "State reports received from tablets.",
    "state_reports_rejected_not_json": "State reports rejected because they were not JSON.",
}

_INVALID = re.compile(r"[^a-zA-Z0-9_]+")


_TYPE_WORDS = {
    "summary": "summaries",
    "histogram": "histograms",
    "gauge": "gauges",
    "counter": "counters",
}


def metric_name(name: str) -> str | None:
    """The Prometheus name for a gateway counter or gauge name, or None if nothing is left.

    A metric type as a word of the name (``upstream_summary_sent``) is put in
    the plural: Prometheus' linter refuses names that read as a type.
    """
    cleaned = _INVALID.sub("_", name.strip()).strip("_").lower()
    if not cleaned:
        return None
    words = [_TYPE_WORDS.get(word, word) for word in cleaned.split("_")]
    return PREFIX + "_".join(words)


def help_text(name: str, *, counter: bool) -> str:
    """HELP for a gateway metric: the known text, or the name in words."""
    key = name.removesuffix("_total")
    if key in KNOWN_HELP:
        return KNOWN_HELP[key]
    words = _INVALID.sub(" ", key).replace("_", " ").strip() or "unnamed"
    return f"Count of {words}." if counter else f"Current {words}."


def _box_metrics(health: BoxHealth) -> Iterator[Metric]:
    box = PREFIX + "box_"
    yield GaugeMetricFamily(
        box + "cpu_percent", "CPU use since the previous reading, percent.", health.cpu_percent
    )
    yield GaugeMetricFamily(box + "load1", "1-minute load average.", health.load_1m)
    yield GaugeMetricFamily(
        box + "memory_total_bytes", "Physical memory.", health.memory_total_bytes
    )
    yield GaugeMetricFamily(
        box + "memory_available_bytes",
        "Memory available without swapping.",
        health.memory_available_bytes,
    )
    yield GaugeMetricFamily(
        box + "disk_total_bytes",
        "Size of the filesystem holding the state directory.",
        health.disk_total_bytes,
    )
    yield GaugeMetricFamily(
        box + "disk_free_bytes",
        "Free space on the filesystem holding the state directory.",
        health.disk_free_bytes,
    )
    if health.soc_temperature_c is not None:
        yield GaugeMetricFamily(
            box + "soc_temperature_celsius", "SoC temperature.", health.soc_temperature_c
        )
    yield GaugeMetricFamily(box + "uptime_seconds", "Time since boot.", health.uptime_s)
    yield GaugeMetricFamily(
        box + "default_route",
        "1 when the box has a default route out of the LAN.",
        1.0 if health.has_default_route else 0.0,
    )
    addresses = GaugeMetricFamily(
        box + "interface_address_info",
        "IPv4 addresses of the LAN interfaces (value always 1).",
        labels=["interface", "address"],
    )
    for interface in health.interfaces:
        for address in interface.ipv4:
            addresses.add_metric([interface.name, address], 1.0)
    yield addresses


class GatewayCollector(Collector):
    """Yields one snapshot of the gateway's counters, gauges and box health."""

    def __init__(
        self, counters: Mapping[str, int], gauges: Mapping[str, float], health: BoxHealth
    ) -> None:
        self._counters = dict(counters)
        self._gauges = dict(gauges)
        self._health = health

    def collect(self) -> Iterator[Metric]:
        """The metric families, each name once."""
        seen: set[str] = set()
        for box_metric in _box_metrics(self._health):
            seen.add(box_metric.name)
            yield box_metric
        for name, value in sorted(self._counters.items()):
            full = metric_name(name)
            if full is not None:
                full = full.removesuffix("_total")
            if self._claim(full, name, seen):
                assert full is not None
                yield CounterMetricFamily(full, help_text(name, counter=True), value=value)
        for name, gauge_value in sorted(self._gauges.items()):
            full = metric_name(name)
            if self._claim(full, name, seen):
                assert full is not None
                yield GaugeMetricFamily(full, help_text(name, counter=False), value=gauge_value)

    @staticmethod
    def _claim(full: str | None, name: str, seen: set[str]) -> bool:
        if full is None or full in seen:
            logger.warning("metric %r left out: its name is empty or already used", name)
            return False
        seen.add(full)
        return True


def render_metrics(
    counters: Mapping[str, int], gauges: Mapping[str, float], health: BoxHealth
) -> tuple[bytes, str]:
    """The ``/metrics`` body and its Content-Type header value."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(counters, gauges, health))
    return generate_latest(registry), CONTENT_TYPE
