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


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port`` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    # local_address is ADDR:PORT in hex; state 0A is LISTEN.
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except FileNotFoundError:
            continue
    if not inodes:
        return False
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(f"{fd_dir}/{name}") in inodes:
                return True
        except OSError:
            continue
    return False


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
        # A port we picked ourselves may be taken by another process before the broker
        # binds it (parallel test workers): then the first start moves to another one.
        self._may_move = port is None
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
        for attempt in range(3):
            try:
                await self._start_once(timeout_s)
            except BrokerError:
                if not (self._may_move and attempt < 2 and "in use" in self._log_tail()):
                    raise
                log.info("mosquitto: port %d was taken meanwhile, trying another", self.port)
                self.port = free_port()
            else:
                self._may_move = False  # clients know this port now: a restart keeps it
                return

    async def _start_once(self, timeout_s: float) -> None:
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
                process, self._process = self._process, None
                raise BrokerError(
                    f"mosquitto exited with {process.returncode}; see {self.workdir}; "
                    f"its log ends: {self._log_tail()}"
                )
            # Our process must hold the listening socket: a connection that succeeds
            # could reach another process on that port while ours failed to bind it.
            if listens_on(self._process.pid, self.port):
                return
            await asyncio.sleep(0.02)
        await self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout_s} s")

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.workdir / "mosquitto.log").read_text(errors="replace")
        except OSError as exc:
            return f"(unreadable: {exc})"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty)"

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
