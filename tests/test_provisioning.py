"""The image's provisioning step (firmware-image/rootfs/usr/lib/school-gateway/provision)
on a scratch root: the config, and the technicians' SSH keys (issue 16 item 8)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.config import load_config

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "firmware-image"
PROVISION = IMAGE / "rootfs" / "usr" / "lib" / "school-gateway" / "provision"
SSHD_DROPIN = IMAGE / "rootfs" / "etc" / "ssh" / "sshd_config.d" / "school-gateway.conf"
SSH_UNIT_DROPIN = (
    IMAGE / "rootfs" / "etc" / "systemd" / "system" / "ssh.service.d" / "school-gateway.conf"
)

BASE = """\
[gateway]
school_id = "ecole-jaures"
gateway_id = "gw-ecole-jaures-1"

[academy_broker]
host = "mqtt.academie.example"
"""


def public_key(comment: str) -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{raw.decode()} {comment}"


def keys_table(*keys: str) -> str:
    listed = ", ".join(f'"{key}"' for key in keys)
    return f"\n[technicians]\nssh_keys = [{listed}]\n"


class Box:
    """A scratch root with the image's group file, and the provisioning step run on it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "etc").mkdir(parents=True)
        gid = Path("/proc/self/status").read_text().split("Gid:")[1].split()[0]
        (root / "etc" / "group").write_text(f"root:x:0:\nschool-gateway:x:{gid}:\n")
        self.source = root / "boot" / "firmware" / "school-gateway.toml"
        self.source.parent.mkdir(parents=True)
        self.target = root / "etc" / "school-gateway" / "gateway.toml"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "root" / ".ssh" / "authorized_keys"

    def provision(self, text: str) -> subprocess.CompletedProcess[str]:
        self.source.write_text(text)
        return subprocess.run(
            [sys.executable, str(PROVISION), str(self.source), str(self.target),
             "--root", str(self.root)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip


@pytest.fixture
def box(tmp_path: Path) -> Box:
    if os.geteuid() != 0:
        pytest.skip("the provisioning step runs as root (it chowns the config to root)")
    return Box(tmp_path / "root")


class TestTechnicianKeys:
    """Keys from the provisioning file, and nothing else, let a technician in."""

    def test_keys_written_with_safe_modes(self, box: Box) -> None:
        first, second = public_key("alice@academie"), public_key("bob@academie")
        result = box.provision(BASE + keys_table(first, second))
        assert result.returncode == 0, result.stdout
        assert "SSH: 2 technician key(s) installed" in result.stdout
        lines = box.authorized_keys.read_text().splitlines()
        assert [line for line in lines if not line.startswith("#")] == [first, second]
        assert stat.S_IMODE(box.authorized_keys.stat().st_mode) == 0o600
        assert stat.S_IMODE(box.authorized_keys.parent.stat().st_mode) == 0o700
        # The provisioning file is also the gateway's config: the section is known there.
        assert load_config(box.target).technicians.ssh_keys == (first, second)

    def test_no_keys_no_file_so_sshd_stays_off(self, box: Box) -> None:
        assert box.provision(BASE + keys_table(public_key("alice"))).returncode == 0
        result = box.provision(BASE)  # the school removed the keys: next boot
        assert result.returncode == 0, result.stdout
        assert "no technician keys" in result.stdout and "sshd stays off" in result.stdout
        assert not box.authorized_keys.exists()
        unit = SSH_UNIT_DROPIN.read_text()
        assert "ConditionFileNotEmpty=/root/.ssh/authorized_keys" in unit.splitlines()

    @pytest.mark.parametrize(
        ("key", "problem"),
        [
            ("ssh-ed25519", "must start with a key type"),
            ("ssh-dss AAAAB3NzaC1kc3M= old", "must start with a key type"),
            ("ssh-ed25519 not*base64", "its key is not base64"),
            (
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIO2xD7pq8m9y6v0lZlQ0o7k9WcN3m2mXvYx8Fh3JrXkF x",
                "its key is not a ssh-rsa key",
            ),
        ],
    )
    def test_bad_key_keeps_everything_as_it_was(self, box: Box, key: str, problem: str) -> None:
        good = public_key("alice")
        assert box.provision(BASE + keys_table(good)).returncode == 0
        before = box.authorized_keys.read_text(), box.target.read_text()
        result = box.provision(BASE + "# edited\n" + keys_table(key))
        assert result.returncode == 1
        assert f"[technicians] ssh_keys[0] {problem}" in result.stdout
        assert (box.authorized_keys.read_text(), box.target.read_text()) == before

    def test_sshd_takes_keys_only(self) -> None:
        settings = dict(
            line.split(None, 1)
            for line in SSHD_DROPIN.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        )
        assert settings["PasswordAuthentication"] == "no"
        assert settings["KbdInteractiveAuthentication"] == "no"
        assert settings["AuthenticationMethods"] == "publickey"
        assert settings["PermitRootLogin"] == "prohibit-password"
