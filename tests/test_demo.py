"""`./dev demo` (`python -m gateway demo`): everything on loopback, ended by its summary line.

Apart from tests/test_cli.py so that quick mode's parallel workers can run the two
long parts of the command line's tests at the same time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

from gateway.lab.waiting import wait_until
from tests.helpers import REPO, run_cli


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
