"""Start and stop a real Mosquitto process on a loopback port."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from gateway.errors import BrokerError
from gateway.lab.running import StartStop

log = logging.getLogger(__name__)

STAND_IN_ACADEMY_CONFIG = """\
# Stand-in for the academy broker (tests, demo, benchmarks).
per_listener_settings false
allow_anonymous true
persistence false
max_inflight_messages 1000
max_queued_messages 1000000
max_packet_size 1048576
log_dest stdout
log_type error
log_type warning
connection_messages false
listener {port} 127.0.0.1
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_binary() -> str:
    for candidate in ("mosquitto", "/usr/sbin/mosquitto"):
        found = shutil.which(candidate)
        if found:
            return found
    raise BrokerError(
        "mosquitto is not installed: run `sudo apt-get install mosquitto` "
        "(Debian/Raspberry Pi OS package 'mosquitto')"
    )


class MosquittoProcess(StartStop):
    """One broker process. ``config_text`` must contain ``{port}``."""

    def __init__(self, workdir: Path, config_text: str, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._config_text = config_text
        self._process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int:
        """The broker's process id (to signal it); BrokerError when it is not running."""
        if self._process is None or self._process.returncode is not None:
            raise BrokerError(f"mosquitto in {self.workdir} is not running")
        return self._process.pid

    async def start(self, timeout_s: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self._config_text.format(port=self.port))
        log_file = (self.workdir / "mosquitto.log").open("ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                mosquitto_binary(),
                "-c",
                str(conf),
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            log_file.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                raise BrokerError(
                    f"mosquitto exited with {self._process.returncode}; see {self.workdir}"
                )
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return
        await self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout_s} s")

    def pause(self) -> None:
        """SIGSTOP: the broker stalls (connections stay open, nothing is answered)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        os.kill(self.pid, signal.SIGCONT)

    async def kill(self) -> None:
        """SIGKILL, as a power cut: what the broker did not persist is gone."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.kill()
        await process.wait()

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
