"""systemd/academy.service: systemd accepts it, and it is hardened like the gateway's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.systemd_kit import REPO, analyze, executables, exposure, make_root

ACADEMY_UNIT = REPO / "systemd" / "academy.service"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = make_root(tmp_path / "root", (REPO / "systemd" / "gateway.service").read_text())
    text = ACADEMY_UNIT.read_text()
    (root / "etc" / "systemd" / "system" / "academy.service").write_text(text)
    for program in executables(text):
        stub = root / program.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


class TestAcademyUnit:
    """The academy's unit, checked by systemd-analyze."""

    def test_verifies_cleanly(self, root: Path) -> None:
        result = analyze(root, "verify", "--man=no", "academy.service")
        lines = (result.stdout + result.stderr).splitlines()
        assert [line for line in lines if "academy" in line] == []

    def test_exposure_at_most_2_5(self, root: Path) -> None:
        assert exposure(root, "academy.service") <= 2.5

    def test_runs_serve_with_the_shipped_config_path(self) -> None:
        text = ACADEMY_UNIT.read_text()
        assert "academy serve --config /etc/school-academy/academy.toml" in text
