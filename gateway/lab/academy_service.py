"""Academy service processes for fault tests, the benchmark and the demo.

``AcademyProcess`` runs ``python -m gateway academy <command> --config <file>``
(``ingest --worker N`` or ``serve``) as a subprocess that can be SIGKILLed;
its output goes to ``workdir/<name>.log`` and its latest lines are kept
(bounded) so a caller can wait for one.
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

import gateway
from gateway.errors import GatewayError
from gateway.lab.config_file import write_config_file

SOURCE_ROOT = Path(gateway.__file__).resolve().parents[1]
MAX_LINES = 20_000
CONNECTED = "subscribed on the academy broker"


def write_academy_config(tables: dict[str, dict[str, Any]], path: Path) -> Path:
    return write_config_file(tables, path)


class AcademyProcess:
    """One academy service process (an ingest worker, or ``serve``)."""

    def __init__(self, config_path: Path, workdir: Path, *args: str, name: str) -> None:
        self.config_path = config_path
        self.workdir = workdir
        self.args = args
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=MAX_LINES)
        self.starts = 0

    @classmethod
    def worker(cls, config_path: Path, workdir: Path, index: int) -> AcademyProcess:
        return cls(config_path, workdir, "ingest", "--worker", str(index), name=f"worker-{index}")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise GatewayError(f"{self.name} is not running")
        return self._process.pid

    async def start(self) -> None:
        if self.running:
            raise GatewayError(f"{self.name} already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lines.clear()
        self._process = process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "academy",
            *self.args[:1],
            "--config",
            str(self.config_path),
            *self.args[1:],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(SOURCE_ROOT)},
        )
        self.starts += 1
        self._reader = asyncio.create_task(self._keep_output(process), name=f"{self.name}-output")

    async def _keep_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        with self.log_path.open("a") as log_file:
            log_file.write(f"--- start {self.starts} ---\n")
            async for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip()
                log_file.write(line + "\n")
                self.lines.append(line)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def wait_for_line(self, text: str, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while not self.count(text):
            if time.monotonic() > deadline or not self.running:
                return bool(self.count(text))
            await asyncio.sleep(0.02)
        return True

    async def start_connected(self, within_s: float = 30.0) -> None:
        """Start, and return once it subscribed on the academy broker."""
        await self.start()
        if not await self.wait_for_line(CONNECTED, within_s):
            raise GatewayError(f"{self.name} did not connect within {within_s} s; {self.log_path}")

    async def kill(self) -> None:
        """SIGKILL: no goodbye, nothing flushed."""
        await self._end(signal.SIGKILL)

    async def stop(self) -> int | None:
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
