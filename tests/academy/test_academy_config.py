"""The academy's config file: the shipped one loads, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.academy.config import AcademyConfig, academy_config_from_mapping, load_academy_config
from gateway.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "academy.toml"


class TestAcademyConfig:
    """config/academy.toml and its rules."""

    def test_shipped_file_is_the_defaults(self) -> None:
        loaded = load_academy_config(SHIPPED)
        defaults = AcademyConfig(source=SHIPPED)
        assert loaded == defaults

    def test_unknown_key_is_named(self) -> None:
        with pytest.raises(ConfigError, match=r"unknown key ingest\.worker"):
            academy_config_from_mapping({"ingest": {"worker": 3}})

    def test_out_of_range_is_named(self) -> None:
        with pytest.raises(ConfigError, match=r"ingest\.workers must be >= 1"):
            academy_config_from_mapping({"ingest": {"workers": 0}})
