"""The school broker as the gateway configures it: each tablet is held to its own topics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiomqtt
import pytest

from gateway.lab.waiting import wait_until
from gateway.security.probe import ACCEPTED, connect_outcome
from gateway.state.shadow import load_tablets
from tests.helpers import good_report
from tests.secure_clients import issue_tablet_files, other_ca, tablet_client, tablet_context

Seen = list[tuple[str, bytes]]


async def collect_until(
    client: aiomqtt.Client, done: Callable[[str, bytes], bool], within_s: float = 10
) -> Seen:
    """Everything ``client`` receives up to and including the message ``done`` accepts."""
    seen: Seen = []
    async with asyncio.timeout(within_s):
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            seen.append((message.topic.value, payload))
            if done(message.topic.value, payload):
                return seen
    return seen  # pragma: no cover - the timeout raises first


@pytest.fixture
def tablets(secure_school, tmp_path):
    """Certificates from the school CA for tab-aaaa and tab-bbbb; returns context(name)."""
    directory = tmp_path / "tablets"
    for device_id in ("tab-aaaa", "tab-bbbb"):
        issue_tablet_files(secure_school.identity.issuer, device_id, directory)
    ca = secure_school.identity.paths.ca_cert
    return lambda device_id: tablet_context(ca, directory, device_id)


class TestTabletIsolation:
    """A tablet reads only its own commands and writes only its own topics."""

    async def test_other_tablets_commands_and_hash_subscription_show_nothing_foreign(
        self, start_secure_gateway, secure_school, tablets
    ):
        gateway = (await start_secure_gateway()).gateway
        port = secure_school.tls_port
        async with (
            tablet_client(port, tablets("tab-bbbb"), "tab-bbbb") as b,
            tablet_client(port, tablets("tab-aaaa"), "tab-aaaa") as a,
        ):
            await b.publish("tablets/tab-bbbb/status", b'{"online":true}', qos=1, retain=True)
            await b.subscribe("tablets/tab-bbbb/commands", qos=1)
            await a.subscribe("tablets/tab-bbbb/commands", qos=1)
            await a.subscribe("tablets/+/status", qos=1)
            await a.subscribe("#", qos=1)
            await gateway.school_link.publish("tablets/tab-bbbb/commands", b"lock tab-bbbb")
            await gateway.school_link.publish("tablets/tab-aaaa/commands", b"lock tab-aaaa")
            seen_by_a = await collect_until(a, lambda _t, p: p == b"lock tab-aaaa")
            seen_by_b = await collect_until(b, lambda _t, p: p == b"lock tab-bbbb")

        assert {topic for topic, _ in seen_by_a} <= {"tablets/tab-aaaa/commands", "gateway/status"}
        assert b"lock tab-bbbb" not in {payload for _, payload in seen_by_a}
        assert seen_by_b == [("tablets/tab-bbbb/commands", b"lock tab-bbbb")]

    async def test_writing_another_tablets_topics_reaches_no_one(
        self, start_secure_gateway, secure_school, tablets
    ):
        gateway = (await start_secure_gateway()).gateway
        port = secure_school.tls_port
        async with (
            tablet_client(port, tablets("tab-bbbb"), "tab-bbbb") as b,
            tablet_client(port, tablets("tab-aaaa"), "tab-aaaa") as a,
        ):
            await b.subscribe("tablets/tab-bbbb/commands", qos=1)
            # tab-aaaa forges tab-bbbb's state and sends tab-bbbb a command, then reports its own.
            await a.publish("tablets/tab-bbbb/state", good_report("tab-bbbb", battery=3), qos=1)
            await a.publish("tablets/tab-bbbb/commands", b"wipe", qos=1)
            await a.publish("gateway/status", b'{"online":false}', qos=1, retain=True)
            await a.publish("tablets/tab-aaaa/state", good_report("tab-aaaa"), qos=1)
            counters = gateway.counters
            assert await wait_until(lambda: counters.get("state_reports_stored") >= 1, 10)
            await gateway.school_link.publish("tablets/tab-bbbb/commands", b"from the gateway")
            seen_by_b = await collect_until(b, lambda _t, p: p == b"from the gateway")

        assert [t.device_id for t in await load_tablets(gateway._db)] == ["tab-aaaa"]
        assert counters.get("state_reports_received") == 1
        assert seen_by_b == [("tablets/tab-bbbb/commands", b"from the gateway")]
        status = await gateway.status()
        assert status["brokers"]["school"] is True

    async def test_a_tablet_cannot_take_another_tablets_client_id(
        self, start_secure_gateway, secure_school, tablets
    ):
        gateway = (await start_secure_gateway()).gateway
        port = secure_school.tls_port
        async with tablet_client(port, tablets("tab-bbbb"), "tab-bbbb") as b:
            await b.subscribe("tablets/tab-bbbb/commands", qos=1)
            # The broker names the client after its certificate, not after what it asks for.
            async with tablet_client(port, tablets("tab-aaaa"), "tab-bbbb"):
                await gateway.school_link.publish("tablets/tab-bbbb/commands", b"still here?")
                seen_by_b = await collect_until(b, lambda _t, p: p == b"still here?")
        assert seen_by_b == [("tablets/tab-bbbb/commands", b"still here?")]


class TestWhoMayConnect:
    """Only a certificate from this school's CA gets in; nothing plain or anonymous."""

    async def test_refused_without_certificate_with_foreign_ca_or_in_plain_tcp(
        self, secure_school, tablets, tmp_path
    ):
        ca = secure_school.identity.paths.ca_cert
        foreign = issue_tablet_files(other_ca(), "tab-cccc", tmp_path / "foreign")
        tls_port, gateway_port = secure_school.tls_port, secure_school.config.school_broker.port
        attempts = {
            "no certificate": (tls_port, tablet_context(ca, tmp_path, None)),
            "certificate from another CA": (tls_port, tablet_context(ca, foreign, "tab-cccc")),
            "plain TCP to the tablet listener": (tls_port, None),
            "plain TCP to the gateway's listener": (gateway_port, None),
            "no certificate on the gateway's listener": (
                gateway_port,
                tablet_context(ca, tmp_path, None),
            ),
        }
        outcomes = {
            what: await connect_outcome("127.0.0.1", port, context, "tab-cccc")
            for what, (port, context) in attempts.items()
        }
        assert all(outcome.startswith("closed") for outcome in outcomes.values()), outcomes
        # The same probe with this school's certificate is let in.
        assert await connect_outcome("127.0.0.1", tls_port, tablets("tab-aaaa"), "x") == ACCEPTED
