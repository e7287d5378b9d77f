"""The command line as an operator uses it: run, status, mosquitto-config, demo."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

from gateway.lab.config_file import write_config_file
from gateway.lab.waiting import wait_until
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


class TestDemo:
    """`demo` runs everything on loopback and ends with its summary line."""

    async def test_demo_runs_for_a_duration(self):
        result = await run_cli(
            "demo", "--tablets", "5", "--duration", "4", "--interval", "0.5", within_s=240
        )
        assert result.returncode == 0, result.stderr
        last = result.stdout.strip().splitlines()[-1]
        assert last.startswith("demo summary: ")
        summary = json.loads(last.removeprefix("demo summary: "))
        assert summary["tablets"] == 5
        assert summary["state_reports_received"] >= 5
        assert summary["state_relayed_upstream"] >= 5
        # Three gateways (the demo's own and two more schools) reached the academy's store.
        assert summary["academy_schools"] == 3
        assert summary["academy_tablets"] >= 5
        assert "demo: academy console http://127.0.0.1:" in result.stdout

    async def test_ctrl_c_stops_cleanly_with_a_summary(self):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "demo",
            "--tablets",
            "3",
            "--interval",
            "0.5",
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stdout is not None
        lines: list[str] = []

        async def read_lines() -> None:
            assert process.stdout is not None
            async for raw in process.stdout:
                lines.append(raw.decode())

        reader = asyncio.create_task(read_lines())
        try:
            assert await wait_until(lambda: any("academy" in line for line in lines), 60)
            process.send_signal(signal.SIGINT)
            await asyncio.wait_for(process.wait(), 60)
            await reader
        finally:
            if process.returncode is None:
                process.kill()  # never leave a hung demo behind
                await process.wait()
        assert process.returncode == 0
        assert lines[-1].startswith("demo summary: ")
        assert json.loads(lines[-1].removeprefix("demo summary: "))["interrupted"] is True
