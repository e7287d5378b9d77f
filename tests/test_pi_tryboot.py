"""The Raspberry Pi's RAUC backend (firmware-image/.../rauc-pi-tryboot) over a stand-in config partition.

The script runs as written, in bash, on files in a temporary directory
instead of the card's config partition and /proc/cmdline. What it cannot
show: that the Pi firmware reads autoboot.txt as documented (not tested on
hardware, see docs/firmware-image.md).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BACKEND = (
    REPO / "firmware-image" / "rootfs-arm64" / "usr" / "lib" / "school-gateway" / "rauc-pi-tryboot"
)
FACTORY_AUTOBOOT = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"


class PiCard:
    """The config partition and the kernel command line of a Pi booted from one slot."""

    def __init__(self, directory: Path) -> None:
        self.config = directory / "config"
        self.config.mkdir()
        (self.config / "autoboot.txt").write_text(FACTORY_AUTOBOOT)
        (self.config / "school-gateway-slots").write_text("A=good\nB=bad\n")
        self.cmdline = directory / "cmdline"
        self.boot("A")

    def boot(self, slot: str) -> None:
        """The firmware started ``slot``: its cmdline.txt names it."""
        self.cmdline.write_text(f"console=tty1 root=PARTLABEL=root{slot} rauc.slot={slot} rw\n")

    def next_boot(self, *, tryboot: bool) -> str:
        """The slot the firmware starts next, read from autoboot.txt as the firmware does."""
        section, partitions = "", {}
        for line in (self.config / "autoboot.txt").read_text().splitlines():
            if line.startswith("["):
                section = line
            elif line.startswith("boot_partition="):
                partitions[section] = line.split("=", 1)[1]
        partition = partitions["[tryboot]" if tryboot else "[all]"]
        return {"2": "A", "3": "B"}[partition]

    def rauc(self, *args: str) -> str:
        """One call of the backend as RAUC makes it; its standard output."""
        result = subprocess.run(
            ["bash", str(BACKEND), *args],
            env={
                "PATH": "/usr/bin:/bin",
                "RAUC_PI_CONFIG": str(self.config),
                "RAUC_PI_CMDLINE": str(self.cmdline),
            },
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


@pytest.fixture
def card(tmp_path: Path) -> PiCard:
    return PiCard(tmp_path)


class TestTryboot:
    """Install, trial boot, commit or fall back, as RAUC drives the backend."""

    def test_factory_state(self, card: PiCard) -> None:
        assert card.rauc("get-primary") == "A"
        assert card.rauc("get-current") == "A"
        assert (card.rauc("get-state", "A"), card.rauc("get-state", "B")) == ("good", "bad")
        assert card.next_boot(tryboot=False) == "A"

    def install_b(self, card: PiCard) -> None:
        # rauc install: the target is marked bad before writing, active after.
        card.rauc("set-state", "B", "bad")
        card.rauc("set-primary", "B")

    def test_new_slot_is_tried_once_then_committed_by_mark_good(self, card: PiCard) -> None:
        self.install_b(card)
        assert card.rauc("get-primary") == "B"
        # An ordinary reboot still starts A; `reboot "0 tryboot"` starts B once.
        assert card.next_boot(tryboot=False) == "A"
        assert card.next_boot(tryboot=True) == "B"
        card.boot("B")
        card.rauc("set-state", "B", "good")  # rauc status mark-good, from B
        assert card.next_boot(tryboot=False) == "B"
        assert card.rauc("get-primary") == "B"

    def test_mark_bad_in_the_trial_falls_back(self, card: PiCard) -> None:
        self.install_b(card)
        card.boot("B")
        card.rauc("set-state", "B", "bad")  # the health check failed
        assert card.next_boot(tryboot=False) == "A"
        assert card.rauc("get-primary") == "A"
        assert card.rauc("get-state", "B") == "bad"

    def test_a_trial_that_never_reports_falls_back(self, card: PiCard) -> None:
        """A hang or crash in B: the watchdog's reboot carries no tryboot flag."""
        self.install_b(card)
        card.boot("B")
        assert card.next_boot(tryboot=False) == "A"

    def test_power_cut_during_install_keeps_the_old_slot(self, card: PiCard) -> None:
        card.rauc("set-state", "B", "bad")  # writing B starts ...
        assert card.next_boot(tryboot=False) == "A"  # ... and the power goes
        assert card.rauc("get-primary") == "A"

    def test_mark_good_of_the_committed_slot_changes_nothing(self, card: PiCard) -> None:
        card.rauc("set-state", "A", "good")  # every healthy boot
        assert card.next_boot(tryboot=False) == "A"
        assert (card.config / "autoboot.txt").read_text() == FACTORY_AUTOBOOT

    def test_second_update_goes_back_to_a(self, card: PiCard) -> None:
        self.install_b(card)
        card.boot("B")
        card.rauc("set-state", "B", "good")
        card.rauc("set-state", "A", "bad")
        card.rauc("set-primary", "A")
        assert card.next_boot(tryboot=False) == "B"
        assert card.next_boot(tryboot=True) == "A"
        card.boot("A")
        card.rauc("set-state", "A", "good")
        assert card.next_boot(tryboot=False) == "A"
