"""The firmware image builds and boots: gateway.service and mosquitto.service come up.

Marker ``image`` (minutes, root, mmdebstrap/genimage/QEMU): run with
``pytest -m image tests/test_image_boot.py``. ``SCHOOL_GATEWAY_IMAGE_ARCH``
picks the variant: ``arm64`` (the Raspberry Pi image, booted under QEMU's
``virt`` machine by emulation) or ``amd64`` (same recipe with the PC kernel,
booted with KVM when ``SCHOOL_GATEWAY_IMAGE_KVM=1``, else emulated too).

The ``--test`` image carries a one-shot unit that prints one ``BOOT-CHECK``
line to the serial console and powers the VM off; the VM has no network
card at all, so nothing it does can leave the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "firmware-image" / "build.sh"
ARCH = os.environ.get("SCHOOL_GATEWAY_IMAGE_ARCH", "arm64")
BUILD_TIMEOUT_S = 3600.0
BOOT_TIMEOUT_S = {"arm64": 1800.0, "amd64": 900.0}
BOOT_CHECK = re.compile(r"BOOT-CHECK gateway\.service=(\S+) mosquitto\.service=(\S+)")
BUILD_TOOLS = ("mmdebstrap", "genimage", "mkfs.vfat", "mcopy", "mke2fs")


@dataclass(frozen=True)
class BuiltImage:
    """A --test image and the kernel and initrd to boot it with."""

    arch: str
    image: Path
    kernel: Path
    initrd: Path
    build_seconds: float


def kvm_wanted() -> bool:
    """KVM only on request (``SCHOOL_GATEWAY_IMAGE_KVM=1``) and when /dev/kvm is usable.

    Opt-in because a usable-looking /dev/kvm may hang the guest (nested
    virtualisation on the build machine stops it right after "Probing EDD").
    """
    wanted = os.environ.get("SCHOOL_GATEWAY_IMAGE_KVM") == "1"
    return wanted and os.access("/dev/kvm", os.R_OK | os.W_OK)


DISK_BYTES = 8 * 1024**3  # the virtual card: bigger than the image, so the data partition grows
BOOT_EXTRA = re.compile(r"BOOT-CHECK-EXTRA ssh=(\S+) ssh\.service=(\S+) data_bytes=(\d+)")


def card(image: BuiltImage, directory: Path) -> Path:
    """A copy-on-write 'SD card' of DISK_BYTES over the image (the image is never written)."""
    overlay = directory / "card.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.image),
         str(overlay), str(DISK_BYTES)],
        check=True, timeout=60,
    )  # fmt: skip
    return overlay


def qemu_command(
    image: BuiltImage, console: Path, *, kvm: bool, disk: Path | None = None
) -> list[str]:
    """The QEMU command line: no network card, serial console into a file."""
    drive = (
        f"file={disk},if=virtio,format=qcow2"
        if disk is not None
        else f"file={image.image},if=virtio,format=raw,snapshot=on"
    )
    common = [
        "-m", "1024",
        "-smp", "2",
        "-nic", "none",
        "-no-reboot",
        "-display", "none",
        "-monitor", "none",
        "-serial", f"file:{console}",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-drive", drive,
    ]  # fmt: skip
    cmdline = "root=LABEL=rootA rw panic=-1 systemd.show_status=1"
    if image.arch == "arm64":
        # cortex-a72 is the Raspberry Pi 4's core, and much faster to
        # emulate than -cpu max (no pointer-authentication emulation).
        return [
            "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", *common,
            "-append", f"{cmdline} console=ttyAMA0",
        ]  # fmt: skip
    accel = ["-accel", "kvm", "-cpu", "kvm64"] if kvm else ["-accel", "tcg"]
    return [
        "qemu-system-x86_64",
        "-M",
        "q35",
        *accel,
        *common,
        "-append",
        f"{cmdline} console=ttyS0",
    ]


def boot_check(console_text: str) -> tuple[str, str] | None:
    """The states the test unit printed for gateway.service and mosquitto.service."""
    match = BOOT_CHECK.search(console_text)
    return None if match is None else (match.group(1), match.group(2))


class TestBootCheckParsing:
    """Reading the console line and forming the QEMU command (no image needed)."""

    def test_boot_check_line(self) -> None:
        text = (
            "[  OK  ] Started x\r\nBOOT-CHECK gateway.service=active mosquitto.service=failed\r\n"
        )
        assert boot_check(text) == ("active", "failed")
        assert boot_check("Kernel panic - not syncing") is None

    def test_vm_has_no_network(self, tmp_path: Path) -> None:
        image = BuiltImage("arm64", tmp_path / "i.img", tmp_path / "k", tmp_path / "r", 0.0)
        command = qemu_command(image, tmp_path / "console.log", kvm=False)
        assert command[command.index("-nic") + 1] == "none"
        assert "-netdev" not in command
        assert "snapshot=on" in command[command.index("-drive") + 1]


def image_selected(config: pytest.Config) -> bool:
    """Whether the run asked for image tests (``-m image``)."""
    return "image" in str(config.getoption("markexpr", default="") or "")


@pytest.fixture(scope="module")
def built_image(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BuiltImage]:
    """Build the --test image once for the module (minutes; the base stage is cached)."""
    if not image_selected(request.config):
        pytest.skip("image test: minutes of build and boot; run with -m image")
    if os.geteuid() != 0:
        pytest.skip("building the image needs root (mmdebstrap, chroot, file ownership)")
    missing = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing {missing}: apt-get install mmdebstrap genimage dosfstools mtools")
    qemu = "qemu-system-aarch64" if ARCH == "arm64" else "qemu-system-x86_64"
    if shutil.which(qemu) is None:
        pytest.skip(f"{qemu} missing: apt-get install qemu-system-arm qemu-system-x86")
    out = tmp_path_factory.mktemp("image")
    started = time.monotonic()
    result = subprocess.run(
        [str(BUILD), "--arch", ARCH, "--test", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    build_seconds = time.monotonic() - started
    (out / "build.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"build.sh failed:\n{(result.stdout + result.stderr)[-4000:]}"
    suffix = f"{ARCH}-test"
    image = BuiltImage(
        arch=ARCH,
        image=out / f"school-gateway-{suffix}.img",
        kernel=out / f"vmlinuz-{suffix}",
        initrd=out / f"initrd.img-{suffix}",
        build_seconds=build_seconds,
    )
    yield image
    for path in (image.image, image.kernel, image.initrd):
        path.unlink(missing_ok=True)


@pytest.mark.image
class TestImageBoot:
    """The test image boots and both services are active."""

    def test_services_active_after_boot(
        self, built_image: BuiltImage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        console = tmp_path / "console.log"
        command = qemu_command(
            built_image,
            console,
            kvm=ARCH == "amd64" and kvm_wanted(),
            disk=card(built_image, tmp_path),
        )
        started = time.monotonic()
        with subprocess.Popen(command, stdin=subprocess.DEVNULL) as vm:
            try:
                # The VM powers itself off after the check: wait for that exit.
                vm.wait(timeout=BOOT_TIMEOUT_S[ARCH])
            except subprocess.TimeoutExpired:
                pass
            finally:
                if vm.poll() is None:
                    vm.kill()
        boot_seconds = time.monotonic() - started
        text = console.read_text(errors="replace") if console.exists() else ""
        with capsys.disabled():
            print(
                f"\nimage {built_image.arch}: build {built_image.build_seconds:.0f} s,"
                f" boot to power-off {boot_seconds:.0f} s"
            )
        states = boot_check(text)
        assert states == ("active", "active"), f"console tail:\n{text[-6000:]}"
        extra = BOOT_EXTRA.search(text)
        with capsys.disabled():
            print(f"image {built_image.arch}: {extra.group(0) if extra else 'no BOOT-CHECK-EXTRA'}")
        assert extra is not None, f"console tail:\n{text[-6000:]}"
        # The provisioning file gives a technician key: sshd runs and listens.
        assert extra.group(1, 2) == ("listening", "active"), f"console tail:\n{text[-6000:]}"
        # The 1 GiB data partition grew to the end of the 8 GiB card (about 3.7 GiB).
        assert int(extra.group(3)) > 2 * 1024**3, f"console tail:\n{text[-6000:]}"
