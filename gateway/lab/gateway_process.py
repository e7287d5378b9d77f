"""The gateway as a subprocess (``python -m gateway run``), for fault tests and benchmarks.

A subprocess can be SIGKILLed like a power cut, and its RSS and disk writes
(``/proc/<pid>/io``) measure the gateway alone. Its live status comes from
the admin API (``GET /api/status`` with the admin token).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

import gateway
from gateway.errors import GatewayError
from gateway.web.admin_token import read_admin_token

SOURCE_ROOT = Path(gateway.__file__).resolve().parents[1]


def toml_text(table: dict[str, dict[str, Any]]) -> str:
    """A TOML file for a two-level table of strings, numbers and booleans."""
    out = []
    for section, values in table.items():
        out.append(f"[{section}]")
        for key, value in values.items():
            out.append(f"{key} = {json.dumps(value)}")
        out.append("")
    return "\n".join(out)


class GatewayProcess:
    """``python -m gateway run --config <file>`` with its log in the state directory."""

    def __init__(self, table: dict[str, dict[str, Any]], workdir: Path) -> None:
        self.table = table
        self.workdir = workdir
        self.state_dir = Path(table["gateway"]["state_dir"])
        self.http_port = int(table["http"]["port"])
        self.config_path = workdir / "gateway.toml"
        self.log_path = workdir / "gateway.log"
        self._process: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        if self._process is None:
            raise GatewayError("gateway process is not running")
        return self._process.pid

    async def start(self) -> None:
        if self._process is not None and self._process.returncode is None:
            raise GatewayError("gateway process already running; stop or kill it first")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(toml_text(self.table))
        with self.log_path.open("ab") as log_file:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "run",
                "--config",
                str(self.config_path),
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(SOURCE_ROOT)},
            )
        self.starts += 1

    async def status(self) -> dict[str, Any] | None:
        """The admin API's status, or None while it does not answer."""
        try:
            token = read_admin_token(self.state_dir)
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.get(
                    f"http://127.0.0.1:{self.http_port}/api/status",
                    headers={"Authorization": f"Bearer {token}"},
                ) as response,
            ):
                if response.status != 200:
                    return None
                body: dict[str, Any] = await response.json()
                return body
        except (aiohttp.ClientError, TimeoutError, GatewayError, OSError):
            return None

    async def wait_connected(self, within_s: float = 30.0) -> dict[str, Any]:
        """Wait until both broker links are up; returns that status."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.returncode is not None:
                raise GatewayError(f"gateway exited with {self._process.returncode}")
            status = await self.status()
            if status and status["brokers"]["school"] and status["brokers"]["academy"]:
                return status
            await asyncio.sleep(0.05)
        raise GatewayError(f"gateway not connected within {within_s} s; see {self.log_path}")

    async def kill(self) -> None:
        """SIGKILL: no flush, no goodbye (a power cut, as far as the process knows)."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGKILL)
        await process.wait()

    async def stop(self) -> int | None:
        """SIGTERM and wait (orderly shutdown)."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return None if process is None else process.returncode
        process.terminate()
        try:
            return await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            return await process.wait()

    def io_and_memory(self) -> dict[str, int]:
        """Bytes written to storage (``/proc/<pid>/io`` write_bytes), write() bytes, and RSS."""
        proc = psutil.Process(self.pid)
        io = proc.io_counters()
        rss = proc.memory_info().rss
        return {"write_bytes": io.write_bytes, "wchar": io.write_chars, "rss": rss}

    async def __aenter__(self) -> GatewayProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            await self.stop()
