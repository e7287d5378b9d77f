"""The network of a box under QEMU, and its technician (helpers, not tests).

The VM itself (card, OVMF, console) is tests/image_kit.py's; this adds:

- The network: QEMU user networking with ``restrict=on``: the guest reaches no
  host and nothing beyond, except ``10.0.2.100:<port>`` for each service the
  test forwards (:mod:`tests.vm_relay` per connection), and the test reaches
  the box's ports through ``hostfwd`` on 127.0.0.1.
- The technician: ``ssh`` as root with the key the provisioning file names
  (sshd on the box accepts keys only), for what a technician would do.
"""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.lab.mosquitto import free_port

GUEST_SERVICES_ADDRESS = "10.0.2.100"  # where the box finds the host's services
RELAY = Path(__file__).with_name("vm_relay.py")
SECTOR = 512


@dataclass(frozen=True)
class Forward:
    """A service of the host the box reaches at GUEST_SERVICES_ADDRESS:guest_port."""

    guest_port: int
    host_port: int

    def option(self) -> str:
        command = f"{sys.executable} {RELAY} 127.0.0.1 {self.host_port}"
        if "," in command:
            command = command.replace(",", ",,")  # QEMU's option syntax
        return f"guestfwd=tcp:{GUEST_SERVICES_ADDRESS}:{self.guest_port}-cmd:{command}"


@dataclass
class VmNetwork:
    """What the box may reach (``forwards``) and which of its ports the test reaches."""

    forwards: list[Forward] = field(default_factory=list)
    box_ports: dict[int, int] = field(default_factory=dict)  # guest port -> host port

    def expose(self, guest_port: int) -> int:
        """A loopback port of the host that reaches ``guest_port`` on the box."""
        if guest_port not in self.box_ports:
            self.box_ports[guest_port] = free_port()
        return self.box_ports[guest_port]

    def nic_option(self) -> str:
        parts = ["user", "model=virtio-net-pci", "restrict=on"]
        parts += [forward.option() for forward in self.forwards]
        parts += [
            f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in self.box_ports.items()
        ]
        return ",".join(parts)


@dataclass
class Technician:
    """SSH to the box as root, with the key the provisioning file lists."""

    key: Path
    port: int

    @classmethod
    def make(cls, directory: Path, port: int) -> Technician:
        directory.mkdir(parents=True, exist_ok=True)
        key = directory / "technician"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e2e@academy", "-f", str(key)],
            check=True, timeout=60,
        )  # fmt: skip
        return cls(key, port)

    @property
    def public_key(self) -> str:
        return self.key.with_suffix(".pub").read_text().strip()

    def ssh_argv(self, command: str) -> list[str]:
        # Each slot makes its own host keys at its first boot: nothing to pin.
        return [
            "ssh", "-i", str(self.key), "-p", str(self.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
            "root@127.0.0.1", command,
        ]  # fmt: skip

    async def run(
        self, command: str, *, stdin: bytes = b"", timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        process = await asyncio.create_subprocess_exec(
            *self.ssh_argv(command),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin), timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            return subprocess.CompletedProcess(command, -9, "", f"timed out after {timeout_s} s")
        assert process.returncode is not None
        return subprocess.CompletedProcess(command, process.returncode, out.decode(), err.decode())

    async def check(self, command: str, *, stdin: bytes = b"", timeout_s: float = 120.0) -> str:
        """Run ``command`` on the box; fail the test with its output if it fails."""
        result = await self.run(command, stdin=stdin, timeout_s=timeout_s)
        assert result.returncode == 0, (
            f"on the box: {command!r} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
        return result.stdout

    async def wait_ready(self, within_s: float) -> bool:
        """Poll until sshd answers (a box boots in minutes under emulation)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            result = await self.run("true", timeout_s=30)
            if result.returncode == 0:
                return True
            await asyncio.sleep(3.0)
        return False

    async def write_file(self, path: str, content: bytes, *, mode: str, owner: str) -> None:
        """Write ``path`` atomically on the box, with ``mode`` and ``owner`` (user:group)."""
        quoted = shlex.quote(path)
        tmp = shlex.quote(f"{path}.tmp")
        await self.check(
            f"cat > {tmp} && chmod {mode} {tmp} && chown {owner} {tmp} && mv {tmp} {quoted}",
            stdin=content,
        )
