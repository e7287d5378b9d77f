"""A real RAUC for the host tests: keys, bundles, and ``rauc service`` on a private D-Bus.

Debian builds ``rauc install`` and ``rauc status mark-*`` as D-Bus clients of
``rauc service``. Here the service runs on its own ``dbus-daemon`` (its own
config and socket in the test's directory; ``DBUS_SYSTEM_BUS_ADDRESS`` points
the clients at it), with a system.conf whose two rootfs slots are plain files
and ``bootloader=noop``, and ``--override-boot-slot=A``. Bundles are built in
the test with ``rauc bundle`` and openssl-made keys, in the ``plain`` format:
this host's kernel has no device-mapper, which ``verity`` bundles need to be
mounted for an install.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

COMPAT = "school-gateway-amd64"

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def missing_tools() -> str | None:
    """Why a real rauc service cannot run here, or None."""
    for tool in ("rauc", "dbus-daemon", "openssl", "mksquashfs"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if os.geteuid() != 0:
        return "rauc service needs root (it mounts bundles on loop devices)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices"
    return None


def run(*argv: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, env=env, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {done.stderr}{done.stdout}")
    return done.stdout


@dataclass(frozen=True)
class Signer:
    key: Path
    cert: Path


def make_signer(folder: Path, name: str) -> Signer:
    """A self-signed RSA signing certificate (the keyring is the certificate itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    run(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
        "-out", cert, "-days", "30", "-subj", f"/CN={name}",
    )  # fmt: skip
    return Signer(key, cert)


def rootfs_image(seed: str, size: int = 1024 * 1024) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def make_bundle(
    folder: Path,
    name: str,
    *,
    version: str,
    signer: Signer | None,
    compatible: str = COMPAT,
    image: bytes | None = None,
) -> Path:
    """A plain-format bundle of one ext4 image; ``signer=None`` = an unsigned squashfs."""
    content = folder / f"{name}.content"
    content.mkdir(parents=True)
    (content / "rootfs.ext4").write_bytes(image if image is not None else rootfs_image(name))
    (content / "manifest.raucm").write_text(
        f"[update]\ncompatible={compatible}\nversion={version}\n\n"
        "[bundle]\nformat=plain\n\n[image.rootfs]\nfilename=rootfs.ext4\n"
    )
    bundle = folder / f"{name}.raucb"
    if signer is None:
        run("mksquashfs", content, bundle, "-quiet", "-noappend", "-all-root")
    else:
        run("rauc", "bundle", f"--cert={signer.cert}", f"--key={signer.key}", content, bundle)
    return bundle


class RaucService:
    """dbus-daemon + ``rauc service`` on it, for one test; ``stop()`` ends both."""

    def __init__(self, folder: Path, keyring: Path, booted: str = "A") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.slots = {"A": folder / "slotA.img", "B": folder / "slotB.img"}
        for slot in self.slots.values():
            slot.write_bytes(b"\0" * (2 * 1024 * 1024))
        (folder / "mnt").mkdir()
        (folder / "data").mkdir()
        self.system_conf = folder / "system.conf"
        self.system_conf.write_text(
            f"[system]\ncompatible={COMPAT}\nbootloader=noop\n"
            f"mountprefix={folder / 'mnt'}\ndata-directory={folder / 'data'}\n\n"
            f"[keyring]\npath={keyring}\n\n"
            f"[slot.rootfs.0]\ndevice={self.slots['A']}\ntype=ext4\nbootname=A\n\n"
            f"[slot.rootfs.1]\ndevice={self.slots['B']}\ntype=ext4\nbootname=B\n"
        )
        self.socket = folder / "bus.sock"
        (folder / "bus.conf").write_text(BUS_CONFIG.format(socket=self.socket))
        self.address = f"unix:path={self.socket}"
        self.booted = booted
        self._processes: list[subprocess.Popen[bytes]] = []
        self._log: BinaryIO | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address}

    def start(self, within_s: float = 30.0) -> None:
        self._log = log = (self.folder / "service.log").open("wb")
        self._processes.append(
            subprocess.Popen(
                ["dbus-daemon", "--nofork", f"--config-file={self.folder / 'bus.conf'}"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        self._poll(self.socket.exists, within_s, "dbus-daemon socket")
        self._processes.append(
            subprocess.Popen(
                ["rauc", f"--conf={self.system_conf}", "service",
                 f"--override-boot-slot={self.booted}"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        self._poll(self._answers, within_s, "rauc service on the private bus")

    def _answers(self) -> bool:
        done = subprocess.run(
            ["rauc", "status", "--output-format=json"],
            env=self.env,
            capture_output=True,
            check=False,
            timeout=30,
        )
        return done.returncode == 0

    def _poll(self, predicate: object, within_s: float, what: str) -> None:
        deadline = time.monotonic() + within_s
        while not predicate():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not up within {within_s} s: {self.log()}")
            for process in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{what}: a process exited: {self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        path = self.folder / "service.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def slot_bytes(self, slot: str) -> bytes:
        return self.slots[slot].read_bytes()

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.terminate()
        for process in self._processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if self._log is not None:
            self._log.close()
