"""``/metrics`` in the Prometheus text format, through prometheus-client.

One scrape renders the process's :class:`~gateway.metrics.Counters`, the
gauges read for it (outbox, tablets, links) and a ``BoxHealth`` reading.
Every name and label set comes from the catalogue in gateway/metrics.py; a
gauge that is not declared there is refused (UndeclaredMetric). A private
registry per scrape means no global state and nothing to unregister.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.health.box import BoxHealth
from gateway.metrics import Counters, Reading, spec_for

# The classic text format that generate_latest writes for names like ours.
# Spelt out rather than CONTENT_TYPE_LATEST, which newer prometheus-client
# releases moved to version=1.0.0 and older ones (Debian's) do not have.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def box_readings(health: BoxHealth) -> list[Reading]:
    """The box's health as gauge readings."""
    readings = [
        Reading("box_cpu_percent", health.cpu_percent),
        Reading("box_load1", health.load_1m),
        Reading("box_memory_total_bytes", health.memory_total_bytes),
        Reading("box_memory_available_bytes", health.memory_available_bytes),
        Reading("box_disk_total_bytes", health.disk_total_bytes),
        Reading("box_disk_free_bytes", health.disk_free_bytes),
        Reading("box_uptime_seconds", health.uptime_s),
        Reading("box_default_route", 1.0 if health.has_default_route else 0.0),
    ]
    if health.soc_temperature_c is not None:
        readings.append(Reading("box_soc_temperature_celsius", health.soc_temperature_c))
    readings += [
        Reading("box_interface_address_info", 1.0, {"interface": i.name, "address": address})
        for i in health.interfaces
        for address in i.ipv4
    ]
    return readings


def system_readings(system: Mapping[str, Any]) -> list[Reading]:
    """The ``system`` block (gateway.sysupdate) as gauges: what runs, and the last outcome."""
    slot = system.get("booted_slot") or ""
    readings = [Reading("system_info", 1.0, {"version": str(system["version"]), "slot": slot})]
    last = system.get("last_update")
    if last:
        labels = {"version": str(last["version"]), "outcome": str(last["outcome"])}
        readings.append(Reading("system_last_update_timestamp_seconds", float(last["at"]), labels))
    return readings


def gauge_families(readings: Iterable[Reading]) -> list[Metric]:
    """One family per declared gauge name, in the order first read."""
    families: dict[str, GaugeMetricFamily] = {}
    for reading in readings:
        spec = spec_for(reading.name, "gauge", reading.labels)
        family = families.get(spec.name)
        if family is None:
            family = families[spec.name] = GaugeMetricFamily(
                spec.exposed, spec.help, labels=spec.labels
            )
        family.add_metric([reading.labels[label] for label in spec.labels], reading.value)
    return list(families.values())


class _Scrape(Collector):
    def __init__(self, counters: Counters, gauges: list[Metric]) -> None:
        self._counters = counters
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        yield from self._counters.collect()
        yield from self._gauges


def render_metrics(
    counters: Counters, gauges: Iterable[Reading], health: BoxHealth
) -> tuple[bytes, str]:
    """The ``/metrics`` body and its Content-Type header value."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(counters, gauge_families([*gauges, *box_readings(health)])))
    return generate_latest(registry), CONTENT_TYPE
