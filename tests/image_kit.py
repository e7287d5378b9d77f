"""Building blocks for the firmware image tests: build once, boot through OVMF and GRUB.

Used by ``tests/test_image_boot.py`` and the end-to-end update tests; plain
functions and classes over ``subprocess`` (no pytest here), so a test, a
fixture or a shell session can use them alike.

- :func:`build_image` runs ``firmware-image/build.sh`` (as root) and caches the
  result under :data:`WORK_DIR`, keyed by every input (the repository files
  that go into the image, the arguments): a second call with the same inputs
  returns at once. One work directory holds one development signing key, so
  every image and bundle built there trust each other.
- :class:`Card` is the box's disk: a qcow2 overlay over the built image (the
  image itself is never written) plus the box's own copy of OVMF's variable
  store, as a real PC keeps its firmware settings.
- :class:`Vm` boots a card under QEMU (amd64: ``-M q35`` with OVMF, TCG only:
  KVM is not usable on the build machine) with the serial console in a file,
  and waits on that file with deadlines (:meth:`Vm.wait_for`), never sleeps.
  ``Vm.kill()`` is a power cut.
- :func:`boot_checks` reads the lines the ``--test`` image's boot-check unit
  prints (services, booted slot, system version, RAUC's boot selection).

The ``--test`` image takes orders from QEMU's fw_cfg (see
``firmware-image/test/boot-check``): ``Vm(fw_cfg={"after-check": "stay"})``
keeps it running after the check, ``"install"`` installs every ``*.raucb`` on
a disk made by :func:`bundle_disk`, ``fw_cfg={"provision": path}`` replaces
its provisioning file.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "firmware-image" / "build.sh"
WORK_DIR = Path(os.environ.get("SCHOOL_GATEWAY_IMAGE_WORK", "/var/tmp/school-gateway-image-work"))
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
GIB = 1024**3
BUILD_TIMEOUT_S = 3600.0
# What goes into an image: a change to any of these makes a new build.
INPUTS = ("firmware-image", "gateway", "systemd", "config", "pyproject.toml")
BUILD_TOOLS = (
    "mmdebstrap", "genimage", "mkfs.vfat", "mcopy", "mke2fs", "grub-mkimage",
    "grub-editenv", "rauc", "mksquashfs", "openssl", "qemu-img", "qemu-system-x86_64",
)  # fmt: skip


class ImageKitError(Exception):
    """A build or a VM did not do what the test needed (the message says what and shows the log)."""


def missing_tools() -> list[str]:
    """The build and boot tools absent from this machine (empty when all are there)."""
    missing = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if not OVMF_CODE.exists():
        missing.append(str(OVMF_CODE))
    return missing


@dataclass(frozen=True)
class Build:
    """One build.sh run: the disk image and/or the bundle, and the keys they trust."""

    arch: str
    version: str
    image: Path | None
    bundle: Path | None
    signing_key: Path
    signing_cert: Path
    keyring: Path
    seconds: float
    log: Path


def inputs_digest(extra: Sequence[str] = ()) -> str:
    """SHA-256 over the files that make an image (paths and contents) and ``extra``."""
    digest = hashlib.sha256()
    for top in INPUTS:
        root = REPO / top
        files = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in files:
            relative = path.relative_to(REPO)
            skip = {"__pycache__", "out", "work"} & set(relative.parts)
            if skip or not path.is_file() or path.suffix == ".pyc":
                continue
            digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update("\0".join(extra).encode())
    return digest.hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One build at a time per work directory, across processes (they share the base and keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_image(
    version: str,
    *,
    arch: str = "amd64",
    bundle: bool = True,
    image: bool = True,
    test: bool = True,
    break_gateway: bool = False,
    fast_bundle: bool = True,
    extra_args: Sequence[str] = (),
    work_dir: Path = WORK_DIR,
) -> Build:
    """Build (or reuse) the image and/or bundle of system ``version``.

    ``image=False`` builds the bundle only. ``break_gateway`` builds a system
    whose gateway.service never starts (the bad update of rollback tests).
    ``fast_bundle`` (default) compresses the bundle with zstd level 3, minutes
    faster to build and install under TCG than RAUC's default gzip.
    ``extra_args`` go to build.sh as they are (e.g. ``--signing-key``).
    """
    args = ["--arch", arch, "--system-version", version]
    args += ["--test"] if test else []
    args += ["--test-break-gateway"] if break_gateway else []
    if bundle:
        args += ["--bundle"] if image else ["--bundle-only"]
        args += ["--fast-bundle"] if fast_bundle else []
    args += list(extra_args)
    label = "-".join(
        [arch, version] + (["test"] if test else []) + (["broken"] if break_gateway else [])
    )
    out = work_dir / "builds" / f"{label}-{inputs_digest(args)}"
    record = out / "build.json"
    with _locked(work_dir / "build.lock"):
        if not record.exists():
            for stale in (work_dir / "builds").glob(f"{label}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            out.mkdir(parents=True)
            log = out / "build.log"
            started = time.monotonic()
            with log.open("w") as handle:
                result = subprocess.run(
                    [str(BUILD_SCRIPT), *args, "--work", str(work_dir / "work"), "--out", str(out)],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    timeout=BUILD_TIMEOUT_S,
                    check=False,
                )
            seconds = time.monotonic() - started
            if result.returncode != 0:
                tail = log.read_text(errors="replace")[-4000:]
                shutil.rmtree(out, ignore_errors=True)
                raise ImageKitError(f"build.sh {' '.join(args)} failed:\n{tail}")
            record.write_text(json.dumps({"args": args, "seconds": round(seconds, 1)}))
    suffix = label.replace(f"{arch}-{version}", arch, 1)
    keys = work_dir / "work" / "dev-keys"
    signing_key, signing_cert, keyring = keys / "signing.key.pem", keys / "signing.cert.pem", None
    for flag, value in itertools.pairwise(args):
        if flag == "--signing-key":
            signing_key = Path(value)
        elif flag == "--signing-cert":
            signing_cert = Path(value)
        elif flag == "--keyring":
            keyring = Path(value)
    return Build(
        arch=arch,
        version=version,
        image=out / f"school-gateway-{suffix}.img" if image else None,
        bundle=out / f"school-gateway-{arch}-{version}.raucb" if bundle else None,
        signing_key=signing_key,
        signing_cert=signing_cert,
        keyring=keyring or signing_cert,
        seconds=float(json.loads(record.read_text())["seconds"]),
        log=out / "build.log",
    )


@dataclass(frozen=True)
class Card:
    """A box's disk (qcow2 over the image) and its firmware variables (OVMF)."""

    disk: Path
    ovmf_vars: Path

    @classmethod
    def create(cls, image: Path, directory: Path, size_bytes: int = 16 * GIB) -> Card:
        """A fresh card of ``size_bytes`` holding ``image`` (bigger: the data partition grows)."""
        directory.mkdir(parents=True, exist_ok=True)
        disk = directory / "card.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image),
             str(disk), str(size_bytes)],
            check=True, timeout=60,
        )  # fmt: skip
        ovmf_vars = directory / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, ovmf_vars)
        return cls(disk=disk, ovmf_vars=ovmf_vars)


def bundle_disk(bundles: Sequence[Path], path: Path) -> Path:
    """A vfat disk image labelled BUNDLE holding ``bundles`` as 1.raucb, 2.raucb, ... (mtools)."""
    total = sum(bundle.stat().st_size for bundle in bundles)
    kib = (total * 11 // 10) // 1024 + 16 * 1024
    path.unlink(missing_ok=True)
    subprocess.run(
        ["mkfs.vfat", "-C", "-n", "BUNDLE", str(path), str(kib)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    for number, bundle in enumerate(bundles, start=1):
        subprocess.run(
            ["mcopy", "-i", str(path), str(bundle), f"::{number}.raucb"],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
    return path


class Vm:
    """One QEMU run of a card: amd64 PC (q35, OVMF, GRUB on the card), TCG, no network card.

    The serial console goes to ``console``; everything the tests learn comes
    from there. The VM reboots in place (a reboot is part of an update) unless
    ``no_reboot``. ``fw_cfg`` items reach the ``--test`` image's units;
    ``drives`` are extra raw disks (read-only); ``extra_args`` go to QEMU as
    they are (e.g. a user-mode network card for the end-to-end tests).
    """

    def __init__(
        self,
        card: Card,
        console: Path,
        *,
        fw_cfg: Mapping[str, str | Path] | None = None,
        drives: Sequence[Path] = (),
        extra_args: Sequence[str] = (),
        memory_mb: int = 1024,
        cpus: int = 2,
        no_reboot: bool = False,
    ) -> None:
        self.card = card
        self.console = console
        self.fw_cfg = dict(fw_cfg or {})
        self.drives = list(drives)
        self.extra_args = list(extra_args)
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.no_reboot = no_reboot
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr: IO[bytes] | None = None
        self.started_at = 0.0

    def command(self) -> list[str]:
        """The QEMU command line."""
        command = [
            "qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-nodefaults",
            "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-display", "none", "-monitor", "none", "-serial", f"file:{self.console}",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.card.ovmf_vars}",
            "-drive", f"file={self.card.disk},if=virtio,format=qcow2",
        ]  # fmt: skip
        for drive in self.drives:
            command += ["-drive", f"file={drive},if=virtio,format=raw,readonly=on"]
        for name, value in self.fw_cfg.items():
            kind = "file" if isinstance(value, Path) else "string"
            command += ["-fw_cfg", f"name=opt/school-gateway/{name},{kind}={value}"]
        if not any(arg in ("-nic", "-netdev", "-device") for arg in self.extra_args):
            command += ["-nic", "none"]
        if self.no_reboot:
            command.append("-no-reboot")
        return command + self.extra_args

    def start(self) -> Vm:
        """Power the box on."""
        self.console.unlink(missing_ok=True)
        self.started_at = time.monotonic()
        self.stderr = (self.console.parent / f"{self.console.name}.qemu-stderr").open("wb")
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self.stderr,
        )  # fmt: skip
        return self

    def __enter__(self) -> Vm:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def running(self) -> bool:
        """Whether QEMU still runs."""
        return self.process is not None and self.process.poll() is None

    def console_text(self, start: int = 0) -> str:
        """The serial console so far (from character ``start``), carriage returns removed."""
        if not self.console.exists():
            return ""
        return self.console.read_text(errors="replace").replace("\r", "")[start:]

    def mark(self) -> int:
        """The console's current length: pass it to :meth:`wait_for` to see only what follows."""
        return len(self.console_text())

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout_s: float, *, after: int = 0
    ) -> re.Match[str]:
        """Poll the console (after character ``after``) until ``pattern`` appears; fail with its tail.

        The match's positions count from ``after``; :meth:`mark` gives an absolute one.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.console_text(after)
            match = regex.search(text)
            if match is not None:
                return match
            if not self.running():
                raise ImageKitError(
                    f"QEMU exited ({self.exit_code()}) before {regex.pattern!r} appeared;"
                    f" console tail:\n{self.console_text()[-6000:]}"
                )
            if time.monotonic() > deadline:
                raise ImageKitError(
                    f"{regex.pattern!r} did not appear within {timeout_s:.0f} s;"
                    f" console tail:\n{self.console_text()[-6000:]}"
                )
            time.sleep(0.5)

    def wait_exit(self, timeout_s: float) -> int:
        """Wait for the VM to power off; fail with the console tail after ``timeout_s``."""
        assert self.process is not None, "start() first"
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ImageKitError(
                f"the VM did not power off within {timeout_s:.0f} s;"
                f" console tail:\n{self.console_text()[-6000:]}"
            ) from None
        self._close()
        return code

    def exit_code(self) -> int | None:
        """QEMU's exit status, None while it runs."""
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        """Pull the power: SIGKILL to QEMU, nothing flushed or shut down."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=60)
        self._close()

    def _close(self) -> None:
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None

    def seconds(self) -> float:
        """Time since the VM was powered on."""
        return time.monotonic() - self.started_at


BOOT_CHECK = re.compile(r"BOOT-CHECK gateway\.service=(\S+) mosquitto\.service=(\S+)")
BOOT_EXTRA = re.compile(
    r"BOOT-CHECK-EXTRA ssh=(\S+) ssh\.service=(\S+) data_bytes=(\d+) slot=(\S+) version=(\S+)"
)
BOOT_RAUC = re.compile(r"BOOT-CHECK-RAUC booted=(\S+) grubenv=(.*)")


@dataclass(frozen=True)
class BootCheck:
    """What one boot of a ``--test`` image reported on its console."""

    gateway: str
    mosquitto: str
    ssh: str
    ssh_service: str
    data_bytes: int
    slot: str
    version: str
    rauc_booted: str
    grubenv: Mapping[str, str]


def boot_checks(text: str) -> list[BootCheck]:
    """Every boot check in a console text, oldest first (one per boot)."""
    checks = []
    for block in text.split("BOOT-CHECK-END")[:-1]:
        services = list(BOOT_CHECK.finditer(block))
        extra = list(BOOT_EXTRA.finditer(block))
        rauc = list(BOOT_RAUC.finditer(block))
        if not (services and extra and rauc):
            continue
        gateway, mosquitto = services[-1].groups()
        ssh, ssh_service, data_bytes, slot, version = extra[-1].groups()
        booted, grubenv = rauc[-1].groups()
        pairs = (item.split("=", 1) for item in grubenv.strip().split(";") if "=" in item)
        checks.append(
            BootCheck(
                gateway=gateway,
                mosquitto=mosquitto,
                ssh=ssh,
                ssh_service=ssh_service,
                data_bytes=int(data_bytes),
                slot=slot,
                version=version,
                rauc_booted=booted,
                grubenv={key: value.strip('"') for key, value in pairs},
            )
        )
    return checks
