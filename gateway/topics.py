"""The MQTT topic tree, in one place (see docs/protocol.md).

School broker (tablets <-> gateway):
    tablets/<device>/state      tablet -> gateway   state report (QoS 1)
    tablets/<device>/status     tablet -> gateway   presence: birth / last will (QoS 1, retained)
    tablets/<device>/commands   gateway -> tablet   command deliveries (QoS 1)
    tablets/<device>/results    tablet -> gateway   command results (QoS 1)
    tablets/<device>/results/ack  gateway -> tablet  result committed (QoS 1)
    gateway/status              gateway -> tablets  the gateway's own presence (retained)

Academy broker (gateway <-> academy):
    schools/<school>/gateways/<gw>/status     presence of the gateway (retained)
    schools/<school>/gateways/<gw>/up/<kind>  upstream messages (QoS 1)
    schools/<school>/commands                 signed command envelopes (QoS 1)
    schools/<school>/manifest                 the signed cache manifest (QoS 1, retained)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

DEVICE_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")

TABLET_STATE_FILTER = "tablets/+/state"
TABLET_STATUS_FILTER = "tablets/+/status"
TABLET_RESULTS_FILTER = "tablets/+/results"
GATEWAY_STATUS = "gateway/status"

_TABLET_TOPIC = re.compile(r"tablets/([^/]+)/(state|status|results)")


@dataclass(frozen=True)
class TabletTopic:
    """A parsed tablet topic: which device, which channel."""

    device_id: str
    channel: str


@functools.lru_cache(maxsize=4096)  # every message's topic, parsed twice: router and ingest
def parse_tablet_topic(topic: str) -> TabletTopic | None:
    """The device and channel of a tablet topic, or None if it is not one of ours.

    A topic with a device id that does not match DEVICE_ID_PATTERN is returned
    with that id; the caller rejects it by name.
    """
    match = _TABLET_TOPIC.fullmatch(topic)
    if match is None:
        return None
    return TabletTopic(device_id=match.group(1), channel=match.group(2))


def tablet_commands(device_id: str) -> str:
    return f"tablets/{device_id}/commands"


def tablet_state(device_id: str) -> str:
    return f"tablets/{device_id}/state"


def tablet_status(device_id: str) -> str:
    return f"tablets/{device_id}/status"


def tablet_results(device_id: str) -> str:
    return f"tablets/{device_id}/results"


def tablet_results_ack(device_id: str) -> str:
    return f"tablets/{device_id}/results/ack"


def academy_gateway_status(school_id: str, gateway_id: str) -> str:
    return f"schools/{school_id}/gateways/{gateway_id}/status"


def academy_gateway_escrow(school_id: str, gateway_id: str) -> str:
    """The gateway's sealed identity escrow (retained; gateway.security.escrow)."""
    return f"schools/{school_id}/gateways/{gateway_id}/escrow"


def academy_up(school_id: str, gateway_id: str, kind: str) -> str:
    return f"schools/{school_id}/gateways/{gateway_id}/up/{kind}"


def academy_commands(school_id: str) -> str:
    return f"schools/{school_id}/commands"


def academy_manifest(school_id: str) -> str:
    return f"schools/{school_id}/manifest"
