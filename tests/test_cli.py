"""The command line as an operator uses it: run, status, mosquitto-config (demo: test_demo.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

from gateway.lab.config_file import write_config_file
from tests.helpers import REPO, lab_tables, run_cli


class TestDaemonAndStatus:
    """`run` serves; `status` shows the live view, or the stored one when it is down."""

    async def test_status_of_running_and_stopped_gateway(
        self, tmp_path, school_broker, academy_broker
    ):
        tables = lab_tables(
            tmp_path / "state", school_port=school_broker.port, academy_port=academy_broker.port
        )
        config = write_config_file(tables, tmp_path / "gateway.toml")
        daemon = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(config),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:

            async def live_status() -> dict:
                result = await run_cli("status", "--config", str(config), "--json")
                assert result.stdout, result.stderr
                return json.loads(result.stdout)

            status: dict = {}
            deadline = asyncio.get_running_loop().time() + 90
            while asyncio.get_running_loop().time() < deadline:
                if daemon.returncode is not None:
                    break
                status = await live_status()
                if status.get("running") and status["brokers"]["academy"]:
                    break
                await asyncio.sleep(0.1)
            if daemon.returncode is not None:
                out, _ = await daemon.communicate()
                raise AssertionError(f"the daemon exited ({daemon.returncode}): {out.decode()}")
            assert status["running"] is True
            assert status["school_id"] == "school-test"
            assert status["brokers"] == {"school": True, "academy": True}

            human = await run_cli("status", "--config", str(config))
            assert "gateway gw-test (school school-test)" in human.stdout
            assert "brokers: school connected, academy connected" in human.stdout
            assert "system: version unknown on slot ? (no RAUC)" in human.stdout
            # No IT contact yet: the console's one-time set-up code, shown only here.
            code = (tmp_path / "state" / "console-setup-code").read_text().strip()
            assert f"console set-up code: {code[:4]}-{code[4:8]}-{code[8:]}" in human.stdout
        finally:
            if daemon.returncode is None:
                daemon.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(daemon.communicate(), 20)
        assert daemon.returncode == 0, out.decode()
        assert "gateway stopped" in out.decode()

        stopped = await run_cli("status", "--config", str(config))
        assert "gateway NOT RUNNING" in stopped.stdout
        assert "tablets: 0 known (who is online is unknown" in stopped.stdout
        # The system block, read from its files while the gateway is down (a dev host: no RAUC).
        assert "system: version unknown on slot ? (no RAUC)" in stopped.stdout
        assert "last update: none recorded" in stopped.stdout


class TestMosquittoConfig:
    """The school broker config comes from the gateway config."""

    async def test_writes_listener_and_limits(self, tmp_path):
        tables = lab_tables(tmp_path / "state", school_port=18830, academy_port=1)
        config = write_config_file(tables, tmp_path / "gateway.toml")
        out = tmp_path / "broker" / "mosquitto.conf"
        result = await run_cli("mosquitto-config", "--config", str(config), "--output", str(out))
        assert result.returncode == 0, result.stderr
        text = out.read_text()
        assert "listener 18830 127.0.0.1" in text
        assert "max_inflight_messages 1000" in text
        assert f"persistence_location {tmp_path / 'state' / 'mosquitto'}/" in text
