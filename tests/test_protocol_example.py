"""The worked example of docs/protocol.md, with mosquitto-clients on the real TLS listener.

A tablet with its enrollment certificate reports, comes online with one
connection (``mosquitto_rr``: subscribe, then birth), gets a command, answers
it and gets the gateway's confirmation (issue 15, items 7 and 8).
"""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from gateway.lab.commands import AcademySigner, results_for
from gateway.lab.waiting import wait_until
from tests.commands_kit import SCHOOL, keys, send
from tests.secure_clients import issue_tablet_files

DEVICE = "tab-0001"

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_rr") is None, reason="needs mosquitto-clients (./dev test installs it)"
)


async def run(*argv: str, timeout_s: float = 30) -> bytes:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode == 0, (argv[0], process.returncode, err.decode())
    return out


class TestWorkedExample:
    """docs/protocol.md, "Worked example", steps 2 to 5, on the TLS listener."""

    async def test_one_connection_gets_the_command_and_the_result_is_confirmed(
        self, start_secure_gateway, secure_school, academy_broker, academy_listener, tmp_path
    ):
        signer = AcademySigner(SCHOOL)
        gateway = (await start_secure_gateway(keys(signer))).gateway
        files = issue_tablet_files(secure_school.identity.issuer, DEVICE, tmp_path / "tablet")
        tablet = [
            *("-h", "127.0.0.1", "-p", str(secure_school.tls_port)),
            *("--cafile", str(secure_school.identity.paths.ca_cert)),
            *("--cert", str(files / f"{DEVICE}.crt"), "--key", str(files / f"{DEVICE}.key")),
            *("-q", "1"),
        ]
        report = {
            "device_id": DEVICE,
            "seq": 1,
            "ts": 1764590400,
            "battery_pct": 80,
            "charging": False,
            "storage_free_mb": 9000,
            "storage_total_mb": 32000,
            "os_version": "13.1.2",
            "locked": False,
            "group": "class-01",
        }
        await run(
            "mosquitto_pub", *tablet, "-t", f"tablets/{DEVICE}/state", "-m", json.dumps(report)
        )
        assert await wait_until(lambda: gateway.counters.get("state_reports_stored") == 1, 10)

        births = gateway.counters.get("presence_updates_stored")
        waiting = asyncio.create_task(
            run(
                "mosquitto_rr",
                *tablet,
                *("-e", f"tablets/{DEVICE}/commands"),
                *("-t", f"tablets/{DEVICE}/status", "-m", '{"online":true}'),
                *("-W", "30"),
            )
        )
        # Its birth comes after its subscription, on the same connection.
        assert await wait_until(
            lambda: gateway.counters.get("presence_updates_stored") > births or waiting.done(), 15
        )
        command_id, envelope = signer.envelope("lock", targets={"group": "class-01"})
        await send(academy_broker, envelope)
        delivery = json.loads(await waiting)
        assert (delivery["command_id"], delivery["action"]) == (command_id, "lock")

        result = json.dumps({"command_id": command_id, "status": "done"})
        confirmation = await run(
            "mosquitto_rr",
            *tablet,
            *("-e", f"tablets/{DEVICE}/results/ack"),
            *("-t", f"tablets/{DEVICE}/results", "-m", result),
            *("-W", "15"),
        )
        assert json.loads(confirmation) == {"command_id": command_id, "status": "done"}
        assert await academy_listener.wait_for(
            lambda: results_for(academy_listener, command_id) == {DEVICE: "done"}, 15
        )
