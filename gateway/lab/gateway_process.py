"""The gateway as a subprocess (``python -m gateway run``), for fault tests and benchmarks.

A subprocess can be SIGKILLed like a power cut, and its RSS and disk writes
(``/proc/<pid>/io``) measure the gateway alone. Its live status comes from
the admin API (``GET /api/status`` with the admin token); its output goes to
``workdir/gateway.log`` and the latest lines are kept (bounded) so callers can
wait for a log line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
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
from gateway.lab.config_file import write_config_file
from gateway.security.admin_token import read_admin_token

SOURCE_ROOT = Path(gateway.__file__).resolve().parents[1]
MAX_LINES = 50_000


class GatewayProcess:
    """``python -m gateway run --config <file>`` with its log in the state directory."""

    def __init__(
        self,
        table: dict[str, dict[str, Any]],
        workdir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        """``env``: extra environment for the process (e.g. libfaketime's, to move its clock)."""
        self.table = table
        self.env = env or {}
        self.workdir = workdir
        self.state_dir = Path(table["gateway"]["state_dir"])
        self.http_port = int(table["http"]["port"])
        self.config_path = workdir / "gateway.toml"
        self.log_path = workdir / "gateway.log"
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=MAX_LINES)
        self.starts = 0

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise GatewayError("gateway process is not running")
        return self._process.pid

    async def start(self) -> None:
        if self.running:
            raise GatewayError("gateway process already running; stop or kill it first")
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_config_file(self.table, self.config_path)
        self.lines.clear()
        self._process = process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(self.config_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(SOURCE_ROOT),
                **self.env,
            },
        )
        self.starts += 1
        self._reader = asyncio.create_task(self._keep_output(process), name="gateway-output")

    async def _keep_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        with self.log_path.open("a") as log_file:
            log_file.write(f"--- start {self.starts} ---\n")
            async for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip()
                log_file.write(line + "\n")
                self.lines.append(line)

    def saw(self, text: str) -> bool:
        """Whether the current run logged a line containing ``text``."""
        return any(text in line for line in self.lines)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def wait_for_line(self, text: str, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while not self.saw(text):
            if time.monotonic() > deadline or not self.running:
                return self.saw(text)
            await asyncio.sleep(0.02)
        return True

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
        await self._end(signal.SIGKILL)

    async def stop(self) -> int | None:
        """SIGTERM and wait (orderly shutdown); the exit status, None if not started."""
        return await self._end(signal.SIGTERM)

    async def _end(self, signum: int) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        return process.returncode

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
