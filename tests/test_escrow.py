"""Issue 15 item 12: a dead SD card does not lose the school's identity.

The box escrows its identity upstream, sealed to the academy's X25519 key;
a replacement box with a FRESH state directory is restored from that escrow
(`python -m gateway restore`), and a tablet enrolled on the dead box
connects with the certificate it already has and receives a command.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.app import Gateway
from gateway.config import config_from_mapping
from gateway.errors import RejectedInput
from gateway.lab.commands import AcademySigner, rejections
from gateway.lab.config_file import write_config_file
from gateway.lab.mosquitto import free_port
from gateway.lab.waiting import wait_until
from gateway.security import escrow
from gateway.sim.enroll import enroll_tablet
from gateway.topics import academy_commands, academy_gateway_escrow
from tests.conftest import RunningGateway, secure_lab_tables, start_secure_broker
from tests.enroll_kit import make_token, url_for
from tests.helpers import run_cli

SCHOOL = "school-test"


def bundle_of(sealed: bytes, key: X25519PrivateKey) -> dict[str, Any]:
    return escrow.open_sealed(sealed, key)


class TestSealedBox:
    """Only the academy key opens an escrow, and nothing in it can be altered."""

    def test_round_trip_wrong_key_and_tampering(self):
        key = X25519PrivateKey.generate()
        bundle = {"school_id": SCHOOL, "gateway_id": "gw", "created": 1.0, "pki": {"a": "b"}}
        sealed = escrow.seal(bundle, key.public_key())
        assert escrow.open_sealed(sealed, key) == bundle
        assert b'"pki"' not in sealed  # nothing readable in transit or at rest
        with pytest.raises(RejectedInput, match="another academy key"):
            escrow.open_sealed(sealed, X25519PrivateKey.generate())
        moved = json.loads(sealed)
        moved["gateway_id"] = "gw-other"  # the header is authenticated too
        with pytest.raises(RejectedInput, match="altered"):
            escrow.open_sealed(json.dumps(moved).encode(), key)


async def start(tables: dict[str, dict[str, Any]]) -> RunningGateway:
    gateway = Gateway(config_from_mapping(tables))
    task = asyncio.create_task(gateway.run(), name="gateway")
    await asyncio.wait_for(gateway.ready.wait(), 15)
    await asyncio.wait_for(gateway.school_link.connected.wait(), 15)
    await asyncio.wait_for(gateway.academy_link.connected.wait(), 15)
    return RunningGateway(gateway, task)


async def send(academy, envelope: bytes) -> None:
    async with aiomqtt.Client(academy.host, academy.port, identifier="academy-sender") as client:
        await client.publish(academy_commands(SCHOOL), envelope, qos=1)


class TestDeadSdCard:
    """A replacement box restored from the escrow serves the tablets of the dead one."""

    async def test_restored_box_takes_over_tablets_and_replay_protection(
        self, tmp_path: Path, academy_broker, academy_listener
    ):
        academy_key = X25519PrivateKey.generate()
        signer = AcademySigner(SCHOOL)

        def box_tables(name: str) -> dict[str, dict[str, Any]]:
            return secure_lab_tables(
                tmp_path / f"{name}-state",
                school_port=free_port(),
                tls_port=free_port(),
                academy_port=academy_broker.port,
                overrides={
                    "gateway": {"gateway_id": "gw-main"},
                    "commands": {"academy_keys": signer.config_keys()},
                    "escrow": {
                        "academy_public_key": escrow.public_key_text(academy_key.public_key()),
                        "check_s": 1,
                    },
                },
            )

        # The box that will die: a tablet enrolls, a command is accepted.
        old_broker, old_tables = await start_secure_broker(
            tmp_path / "old-broker", box_tables("old")
        )
        old = await start(old_tables)
        secret = await make_token(old, device_id="tab-0001", group="class-01")
        credentials = await enroll_tablet(url_for(old, secret), tmp_path / "tablet")
        first_id, first = signer.envelope("lock", targets={"group": "class-01"})
        await send(academy_broker, first)
        assert await wait_until(lambda: old.gateway.counters.get("commands_accepted") == 1, 15)

        topic = academy_gateway_escrow(SCHOOL, "gw-main")

        def latest_escrow() -> dict[str, Any] | None:
            found = [m.payload for m in academy_listener.messages if m.topic == topic]
            return bundle_of(found[-1], academy_key) if found else None

        def escrow_has_everything() -> bool:
            bundle = latest_escrow()
            return bool(
                bundle
                and [t[0] for t in bundle["tablets"]] == ["tab-0001"]
                and first_id in [c[0] for c in bundle["commands"]]
            )

        assert await academy_listener.wait_for(escrow_has_everything, 20)
        sealed = [m.payload for m in academy_listener.messages if m.topic == topic][-1]
        await old.stop()
        await old_broker.stop()  # the SD card is dead: its state directory is never read again

        # The replacement: a fresh state directory, restored from the escrow.
        new_tables = box_tables("new")
        config_file = write_config_file(new_tables, tmp_path / "new.toml")
        (tmp_path / "escrow.json").write_bytes(sealed)
        (tmp_path / "academy-escrow.key").write_bytes(escrow.private_key_pem(academy_key))
        done = await run_cli(
            "restore",
            "--config",
            str(config_file),
            "--escrow",
            str(tmp_path / "escrow.json"),
            "--key",
            str(tmp_path / "academy-escrow.key"),
        )
        assert done.returncode == 0, done.stderr
        assert "1 tablets" in done.stdout
        again = await run_cli("restore", "--config", str(config_file), "--bundle", "/dev/null")
        assert again.returncode != 0  # never over an existing identity

        new_broker, new_tables = await start_secure_broker(tmp_path / "new-broker", new_tables)
        try:
            new = await start(new_tables)
            received: list[str] = []
            async with aiomqtt.Client(
                "127.0.0.1",
                new_tables["school_broker"]["tls_port"],
                identifier="tab-0001",
                tls_context=credentials.tls_context(),  # the certificate from the dead box
            ) as tablet:
                await tablet.subscribe("tablets/tab-0001/commands", qos=1)
                await tablet.publish("tablets/tab-0001/status", b'{"online": true}', retain=True)
                second_id, second = signer.envelope(
                    "message", targets={"group": "class-01"}, params={"text": "Bonjour"}
                )
                await send(academy_broker, second)

                async def collect() -> None:
                    async for message in tablet.messages:
                        assert isinstance(message.payload, bytes)
                        received.append(json.loads(message.payload)["command_id"])

                reader = asyncio.create_task(collect())
                assert await wait_until(lambda: second_id in received, 20), received
                reader.cancel()
            # The group came back with the tablet; the old command id too.
            await send(academy_broker, first)
            assert await academy_listener.wait_for(
                lambda: any(
                    r["reason"] == "replayed" and r.get("command_id") == first_id
                    for r in rejections(academy_listener)
                ),
                20,
            )
            await new.stop()
        finally:
            await new_broker.stop()
