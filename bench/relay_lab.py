"""Shared parts of the relay benchmarks: raw publishers, a bare subscriber, helpers.

The Python simulator (one aiomqtt client per tablet) cannot publish tens of
thousands of reports per second on its own, so the benchmarks use a lighter
raw publisher: one paho client per process publishing valid state reports
(docs/protocol.md) on the topics of many tablets, QoS 1, from the same
TabletModel the simulator uses. They run in their own processes
(multiprocessing, spawn) so that the gateway subprocess is measured alone.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402

from gateway.sim.model import TabletModel, device_id_for, group_for  # noqa: E402

INFLIGHT = 1_000


def _client(host: str, port: int, name: str) -> paho.Client:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name, clean_session=True)
    client.max_inflight_messages_set(INFLIGHT)
    client.max_queued_messages_set(INFLIGHT * 4)
    client.connect(host, port, keepalive=60)
    client.loop_start()
    return client


def _publish(client: paho.Client, topic: str, payload: bytes) -> paho.MQTTMessageInfo:
    while True:
        info = client.publish(topic, payload, qos=1)
        if info.rc == paho.MQTT_ERR_SUCCESS:
            return info
        if info.rc != paho.MQTT_ERR_QUEUE_SIZE:
            raise RuntimeError(f"publish failed: {paho.error_string(info.rc)}")
        time.sleep(0.001)  # the publisher's own window is full


def models(first: int, count: int) -> list[TabletModel]:
    return [
        TabletModel.create(device_id_for("tab", i), group_for(i), seed=i)
        for i in range(first, first + count)
    ]


def paced_publisher(  # noqa: PLR0917 - a multiprocessing target takes positional args
    host: str,
    port: int,
    first: int,
    count: int,
    reports_per_tablet: int,
    sim_start: float,
    sim_interval_s: float,
    allowed: Any,
    published: Any,
    published_bytes: Any,
) -> None:
    """One report per tablet per simulated interval; never more than ``allowed`` in total.

    ``allowed`` (set by the benchmark from the gateway's committed count) keeps
    the school broker's per-client queue from overflowing: "as fast as the
    gateway takes them".
    """
    client = _client(host, port, f"bench-pub-{first}")
    tablets = models(first, count)
    last: paho.MQTTMessageInfo | None = None
    sent = size = 0
    for minute in range(reports_per_tablet):
        for model in tablets:
            while published.value >= allowed.value:
                time.sleep(0.005)
            model.advance()
            report = model.report(sim_start + minute * sim_interval_s + model.rng.uniform(0, 50))
            payload = json.dumps(report, separators=(",", ":")).encode()
            last = _publish(client, f"tablets/{model.device_id}/state", payload)
            sent += 1
            size += len(payload)
            if sent % 200 == 0:
                with published.get_lock():
                    published.value += 200
                with published_bytes.get_lock():
                    published_bytes.value += size
                size = 0
    if last is not None:
        last.wait_for_publish(60)
    with published.get_lock():
        published.value += sent % 200
    with published_bytes.get_lock():
        published_bytes.value += size
    client.loop_stop()
    client.disconnect()


def flat_out_publisher(  # noqa: PLR0917 - a multiprocessing target
    host: str, port: int, first: int, count: int, duration_s: float, published: Any
) -> None:
    """Every tablet reports again as soon as the broker takes it, for ``duration_s``."""
    client = _client(host, port, f"bench-flat-{first}")
    tablets = models(first, count)
    deadline = time.monotonic() + duration_s
    sent = 0
    while time.monotonic() < deadline:
        for model in tablets:
            model.advance()
            payload = json.dumps(model.report(time.time()), separators=(",", ":")).encode()
            _publish(client, f"tablets/{model.device_id}/state", payload)
            sent += 1
        with published.get_lock():
            published.value = sent
    client.loop_stop()
    client.disconnect()


def bare_subscriber(host: str, port: int, duration_s: float, ready: Any, per_second: Any) -> None:
    """The reference: a plain aiomqtt subscriber (QoS 1) counting state reports per second."""
    import asyncio

    import aiomqtt

    async def main() -> None:
        counts: dict[int, int] = {}
        async with aiomqtt.Client(
            host, port, identifier="bench-bare", max_queued_incoming_messages=20_000
        ) as client:
            await client.subscribe("tablets/+/state", qos=1)
            ready.set()
            try:
                async with asyncio.timeout(duration_s):
                    async for _message in client.messages:
                        second = int(time.time())
                        counts[second] = counts.get(second, 0) + 1
            except TimeoutError:
                pass
        per_second.put(counts)

    asyncio.run(main())
