"""Config loading: defaults that work, one clear message naming key and file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """
[gateway]
school_id = "school-0042"
gateway_id = "gw-0042"
state_dir = "/tmp/x"

[academy_broker]
host = "academy.example"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


class TestShippedDefault:
    """The documented default config/gateway.toml loads as it is."""

    def test_default_file_loads(self):
        config = load_config(REPO / "config" / "gateway.toml")
        assert config.gateway.state_dir == Path("/var/lib/school-gateway")
        assert config.uplink.outbox_budget_bytes == 2_000_000
        assert config.cache.offpeak_windows == ("22:00-06:00",)

    def test_minimal_file_gets_defaults(self, tmp_path):
        config = load_config(write(tmp_path, MINIMAL))
        assert config.school_broker.port == 1883
        assert config.academy_broker.host == "academy.example"
        assert config.http.port == 8080


class TestBadConfig:
    """Each mistake stops start-up with one message that names the key and the file."""

    @pytest.mark.parametrize(
        ("extra", "message"),
        [
            ("[uplink]\nmax_bytes_per_sec = 5\n", "unknown key uplink.max_bytes_per_sec"),
            ("[uplink]\nmax_bytes_per_s = 'fast'\n", "uplink.max_bytes_per_s must be an integer"),
            ("[uplink]\nmax_bytes_per_s = 5\n", "uplink.max_bytes_per_s must be >= 100"),
            ("[school_broker]\nport = 70000\n", "school_broker.port must be <= 65535"),
            ("[http]\nport = true\n", "http.port must be an integer"),
            ("[cache]\noffpeak_windows = '22:00-06:00'\n", "cache.offpeak_windows must be a list"),
            ("[tablets]\nrequired_apps = 3\n", "tablets.required_apps must be a table"),
            ("[surprise]\nx = 1\n", "unknown key surprise"),
        ],
    )
    def test_bad_value_names_the_key_and_file(self, tmp_path, extra, message):
        path = write(tmp_path, MINIMAL + extra)
        with pytest.raises(ConfigError) as error:
            load_config(path)
        assert message in str(error.value)
        assert str(path) in str(error.value)

    def test_missing_required_key(self, tmp_path):
        path = write(tmp_path, MINIMAL.replace('gateway_id = "gw-0042"\n', ""))
        with pytest.raises(ConfigError, match=r"missing required key gateway\.gateway_id"):
            load_config(path)

    def test_bad_identifier(self, tmp_path):
        path = write(tmp_path, MINIMAL.replace("school-0042", "School 42"))
        with pytest.raises(ConfigError, match=r"gateway\.school_id must match"):
            load_config(path)

    def test_not_toml(self, tmp_path):
        path = write(tmp_path, "[gateway\nschool_id = 1")
        with pytest.raises(ConfigError, match="not valid TOML"):
            load_config(path)

    def test_daemon_refuses_to_start_with_one_clear_line(self, tmp_path):
        path = write(tmp_path, MINIMAL + "[uplink]\nmax_bytes_per_s = 'fast'\n")
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "run", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )
        assert result.returncode == 2
        assert result.stderr.strip() == (
            f"error: {path}: uplink.max_bytes_per_s must be an integer, got str 'fast'"
        )
