"""`academy serve` as systemd runs it: workers + console, a dead worker started again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import aiomqtt
import asyncpg
import psutil

from gateway.academy.ingest.lab import line, payload, state_body
from gateway.academy.signing import generate_key_pair
from gateway.lab.academy_service import SOURCE_ROOT, AcademyProcess, write_academy_config
from gateway.lab.mosquitto import MosquittoProcess, free_port
from gateway.lab.waiting import wait_until
from tests.academy.conftest import academy_tables, until


def account_command(config: Path, *args: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "academy", "account", "--config", str(config), *args],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=SOURCE_ROOT,
    )


class TestServe:
    """The service's process tree and its accounts command."""

    async def test_workers_console_and_a_killed_worker_comes_back(
        self, tmp_path: Path, academy_dsn: str, academy_broker: MosquittoProcess
    ) -> None:
        key_path, _ = generate_key_pair(tmp_path / "keys")
        port = free_port()
        config = write_academy_config(
            academy_tables(
                academy_dsn,
                academy_broker.port,
                ingest={"workers": 2, "restart_backoff_cap_s": 0.5},
                console={"port": port, "key_file": str(key_path)},
            ),
            tmp_path / "academy.toml",
        )
        added = account_command(
            config, "add", "ada", "--role", "admin", "--password-stdin", password="a long password"
        )
        assert added.returncode == 0, added.stderr
        again = account_command(
            config, "add", "ada", "--role", "viewer", "--password-stdin", password="another one!"
        )
        assert again.returncode == 2 and "exists" in again.stderr

        serve = AcademyProcess(config, tmp_path, "serve", name="serve")
        await serve.start()
        try:
            assert await wait_until(
                lambda: serve.count("subscribed on the academy broker") >= 2, 60
            )
            assert await serve.wait_for_line("academy console on", 30)
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/signin") as r,
            ):
                assert r.status == 200
                assert "Se connecter" in await r.text()

            pids = {
                int(m.group(1)): int(m.group(2))
                for m in (
                    re.search(r"ingest worker (\d) started \(pid (\d+)\)", x) for x in serve.lines
                )
                if m
            }
            os.kill(pids[1], signal.SIGKILL)
            assert await wait_until(
                lambda: serve.count("subscribed on the academy broker") >= 3, 60
            )
            assert serve.count("ingest worker 1 exited") == 1

            topic = "schools/school-s/gateways/gw-s/up/state"
            async with aiomqtt.Client(academy_broker.host, academy_broker.port) as client:
                for seq in range(1, 21):
                    body = state_body(f"tab-{seq:04d}", ts=float(seq))
                    await client.publish(
                        topic, payload([line("school-s", "gw-s", seq, "state", body)]), qos=1
                    )
            conn = await asyncpg.connect(academy_dsn)
            try:
                assert await until(conn, "SELECT count(*) FROM tablets", 20, 30) == 20
                audit = await conn.fetchval(
                    "SELECT count(*) FROM audit_log WHERE action = 'account.save'"
                )
                assert audit == 1
            finally:
                await conn.close()
        finally:
            assert await serve.stop() == 0
        assert not any(
            psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
            for pid in pids.values()
        )
