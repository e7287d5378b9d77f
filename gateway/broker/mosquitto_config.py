"""Render the school broker's Mosquitto config from config/mosquitto.conf.template."""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.config import Config
from gateway.errors import ConfigError

TEMPLATE_NAME = "mosquitto.conf.template"


def find_template() -> Path:
    """The template in the source tree, or where the wheel installed it."""
    candidates = [
        Path(__file__).resolve().parents[2] / "config" / TEMPLATE_NAME,
        Path(sys.prefix) / "share" / "school-gateway" / TEMPLATE_NAME,
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(f"Mosquitto template {TEMPLATE_NAME} not found in {candidates}")


def render_mosquitto_config(config: Config, template: Path | None = None) -> str:
    """The broker config text for ``config``'s school broker."""
    text = (template or find_template()).read_text()
    broker = config.school_broker
    return text.format(
        host=broker.host,
        port=broker.port,
        max_inflight_messages=broker.max_inflight_messages,
        max_queued_messages=broker.max_queued_messages,
        persistence_dir=config.gateway.state_dir / "mosquitto",
    )


def write_mosquitto_config(config: Config, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    (config.gateway.state_dir / "mosquitto").mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    tmp.write_text(render_mosquitto_config(config))
    tmp.replace(output)
