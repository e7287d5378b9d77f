"""The firmware image boots through its own bootloader, grows its data partition, survives a power cut.

Marker ``image`` (minutes, root, mmdebstrap/genimage/GRUB/RAUC/QEMU+OVMF): run
with ``pytest -m image tests/test_image_boot.py``. The amd64 image is built
once per session (``tests/image_kit.py``, cached by its inputs) and booted as
a PC would: OVMF firmware, GRUB from the EFI partition choosing a root slot
from its grubenv (RAUC's boot counting), the kernel and initrd from that slot.
Under TCG: KVM is not usable on the build machine.

The ``--test`` image carries a unit that prints ``BOOT-CHECK`` lines to the
serial console (services, booted slot, system version, RAUC's view) and then
powers off, or installs bundles when QEMU's fw_cfg says so. The VM has no
network card, so nothing it does can leave the machine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import image_kit
from tests.image_kit import GIB, Build, Card, Vm, boot_checks

BOOT_TIMEOUT_S = 1200.0  # TCG on a loaded 2-core machine; about 3 minutes when quiet
INSTALL_TIMEOUT_S = 1800.0


def image_selected(config: pytest.Config) -> bool:
    """Whether the run asked for image tests (``-m image``)."""
    return "image" in str(config.getoption("markexpr", default="") or "")


@pytest.fixture(scope="session")
def system_v1(request: pytest.FixtureRequest) -> Iterator[Build]:
    """The --test image of system version 1 and its bundle (built once, cached across runs)."""
    if not image_selected(request.config):
        pytest.skip("image test: minutes of build and boot; run with -m image")
    if os.geteuid() != 0:
        pytest.skip("building the image needs root (mmdebstrap, chroot, file ownership)")
    missing = image_kit.missing_tools()
    if missing:
        pytest.skip(
            f"missing {missing}: apt-get install mmdebstrap genimage dosfstools mtools"
            " grub-efi-amd64-bin grub-common rauc squashfs-tools ovmf qemu-system-x86 qemu-utils"
        )
    build = image_kit.build_image("1", bundle=True)
    print(f"\nimage amd64 v1 + bundle: built in {build.seconds:.0f} s ({build.log})")
    yield build


class TestBootCheckParsing:
    """Reading the console lines and forming the QEMU command (no image needed)."""

    def test_boot_check_lines(self) -> None:
        text = (
            "[  OK  ] Started x\n"
            "BOOT-CHECK gateway.service=active mosquitto.service=failed\n"
            "BOOT-CHECK-EXTRA ssh=listening ssh.service=active data_bytes=123 slot=B version=2\n"
            "BOOT-CHECK-RAUC booted=B grubenv=ORDER=B A;A_OK=1;A_TRY=0;B_OK=1;B_TRY=1\n"
            "BOOT-CHECK-END\n"
            "Kernel panic - not syncing\n"
        )
        [check] = boot_checks(text)
        assert (check.gateway, check.mosquitto, check.slot, check.version) == (
            "active", "failed", "B", "2",
        )  # fmt: skip
        assert check.grubenv == {
            "ORDER": "B A",
            "A_OK": "1",
            "A_TRY": "0",
            "B_OK": "1",
            "B_TRY": "1",
        }
        assert boot_checks("Kernel panic - not syncing") == []

    def test_vm_boots_through_firmware_without_network(self, tmp_path: Path) -> None:
        card = Card(disk=tmp_path / "card.qcow2", ovmf_vars=tmp_path / "vars.fd")
        command = Vm(card, tmp_path / "console.log", fw_cfg={"after-check": "stay"}).command()
        assert command[command.index("-nic") + 1] == "none"
        assert "-netdev" not in command and "-kernel" not in command
        assert f"if=pflash,format=raw,unit=0,readonly=on,file={image_kit.OVMF_CODE}" in command
        assert "name=opt/school-gateway/after-check,string=stay" in command


@pytest.mark.image
class TestImageBoot:
    """Version 1 boots from its disk through OVMF and GRUB, and the data partition fills the disk."""

    def test_boots_slot_a_to_ready_and_grows_data(
        self, system_v1: Build, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert system_v1.image is not None
        # A 5 GiB image on a 16 GiB "card".
        assert system_v1.image.stat().st_size == 5 * GIB
        card = Card.create(system_v1.image, tmp_path, size_bytes=16 * GIB)
        with Vm(card, tmp_path / "console.log", no_reboot=True) as vm:
            vm.wait_exit(BOOT_TIMEOUT_S)
            seconds = vm.seconds()
        text = vm.console_text()
        with capsys.disabled():
            print(f"\nimage amd64: power-on to power-off {seconds:.0f} s (OVMF, GRUB, TCG)")
        # Through the firmware and GRUB, which chose slot A from its grubenv.
        assert "Welcome to GRUB!" in text, text[-6000:]
        assert "school-gateway: booting slot A" in text, text[-6000:]
        [check] = boot_checks(text)
        # gateway.service is Type=notify: active means the gateway sent READY=1.
        assert (check.gateway, check.mosquitto) == ("active", "active"), text[-6000:]
        assert (check.slot, check.rauc_booted, check.version) == ("A", "A", "1")
        # The provisioning file gives a technician key: sshd runs and listens.
        assert (check.ssh, check.ssh_service) == ("listening", "active")
        # The 767 MiB data partition (from 4.25 GiB on) grew to the end of the
        # 16 GiB disk: 11.75 GiB, less the filesystem's own.
        assert check.data_bytes > 11 * GIB, check
        # GRUB counted the boot (A_TRY=1); nothing confirmed it in this test image.
        assert check.grubenv["A_OK"] == "1" and check.grubenv["B_OK"] == "0"


@pytest.mark.image
class TestPowerCutDuringInstall:
    """Power cut while RAUC writes the inactive slot: the box still boots its old slot."""

    def test_old_slot_boots_after_power_cut(
        self, system_v1: Build, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert system_v1.image is not None and system_v1.bundle is not None
        card = Card.create(system_v1.image, tmp_path / "card")
        # Two installs of the bundle: the first completes (slot B becomes good
        # and first in ORDER), the second is cut while it rewrites B. A
        # bootloader that trusted B now would boot a half-written system.
        disk = image_kit.bundle_disk([system_v1.bundle, system_v1.bundle], tmp_path / "bundles.img")
        console = tmp_path / "install.log"
        with Vm(card, console, fw_cfg={"after-check": "install"}, drives=[disk]) as vm:
            first = vm.wait_for(
                r"TEST-INSTALL end 1\.raucb rc=(\d+) grubenv=(.*)", INSTALL_TIMEOUT_S
            )
            assert first.group(1) == "0", vm.console_text()[-6000:]
            assert "ORDER=B A" in first.group(2) and "B_OK=1" in first.group(2), first.group(0)
            # RAUC's post-install handler carried the box's identity into slot B.
            identity = vm.wait_for(r"TEST-IDENTITY slot=B (.*)", 120, after=first.end())
            assert identity.group(1).split() == [
                "machine-id=same", "ssh-host-keys=same", "etc-school-gateway=same",
            ], identity.group(0)  # fmt: skip
            # Cut the power as soon as RAUC writes the slot again (no timer).
            after_identity = first.end() + identity.end()  # wait_for matches from `after`
            second = vm.wait_for(
                r"TEST-INSTALL start 2\.raucb", INSTALL_TIMEOUT_S, after=after_identity
            )
            vm.wait_for(
                r"Copying image to rootfs\.1",
                INSTALL_TIMEOUT_S,
                after=after_identity + second.end(),
            )
            vm.kill()
            install_seconds = vm.seconds()
        cut = vm.console_text()
        assert "TEST-INSTALL end 2.raucb" not in cut, "the second install finished before the cut"
        with Vm(card, tmp_path / "after-cut.log", no_reboot=True) as vm:
            vm.wait_exit(BOOT_TIMEOUT_S)
        text = vm.console_text()
        with capsys.disabled():
            print(f"\npower cut: first install + cut after {install_seconds:.0f} s")
        [check] = boot_checks(text)
        assert re.search(r"school-gateway: booting slot A", text), text[-6000:]
        assert (check.slot, check.version) == ("A", "1"), check
        assert (check.gateway, check.mosquitto) == ("active", "active"), text[-6000:]
        # RAUC marked B bad before it started writing it.
        assert check.grubenv["B_OK"] == "0", check.grubenv
