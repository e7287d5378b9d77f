"""Shared fixtures: real Mosquitto brokers on free loopback ports, a gateway
running in-process against them, and an academy-side listener.

Every later test and benchmark builds on these.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.broker.mosquitto_config import render_mosquitto_config
from gateway.config import Config, config_from_mapping
from gateway.lab.academy import AcademyListener
from gateway.lab.mosquitto import STAND_IN_ACADEMY_CONFIG, MosquittoProcess, free_port


def lab_tables(
    state_dir: Path,
    *,
    school_port: int,
    academy_port: int,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Config tables pointing at loopback brokers; ``overrides`` merges per table."""
    table: dict[str, dict[str, Any]] = {
        "gateway": {
            "school_id": "school-test",
            "gateway_id": "gw-test",
            "state_dir": str(state_dir),
        },
        # The lab's anonymous plain listener on loopback (development only): the
        # foundation's tests use plain clients; tests/test_security*.py use
        # secure_lab_tables instead.
        "school_broker": {"host": "127.0.0.1", "port": school_port, "lab_plain_listener": True},
        "academy_broker": {"host": "127.0.0.1", "port": academy_port},
        "http": {"host": "127.0.0.1", "port": free_port()},
    }
    for section, values in (overrides or {}).items():
        table.setdefault(section, {}).update(values)
    return table


def lab_config(
    state_dir: Path,
    *,
    school_port: int,
    academy_port: int,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    """A gateway Config pointing at loopback brokers."""
    tables = lab_tables(
        state_dir, school_port=school_port, academy_port=academy_port, overrides=overrides
    )
    return config_from_mapping(tables)


@pytest.fixture
async def school_broker(tmp_path: Path) -> AsyncIterator[MosquittoProcess]:
    port = free_port()
    config = lab_config(tmp_path / "state", school_port=port, academy_port=1)
    text = render_mosquitto_config(config)
    async with MosquittoProcess(tmp_path / "school-broker", text, port=port) as broker:
        yield broker


@pytest.fixture
async def academy_broker(tmp_path: Path) -> AsyncIterator[MosquittoProcess]:
    async with MosquittoProcess(tmp_path / "academy-broker", STAND_IN_ACADEMY_CONFIG) as broker:
        yield broker


@pytest.fixture
async def academy_listener(academy_broker: MosquittoProcess) -> AsyncIterator[AcademyListener]:
    listener = AcademyListener(academy_broker.host, academy_broker.port)
    task = asyncio.create_task(listener.run(), name="academy-listener")
    await asyncio.wait_for(listener.subscribed.wait(), 10)
    yield listener
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class RunningGateway:
    """A Gateway running in a task of the test's event loop."""

    def __init__(self, gateway: Gateway, task: asyncio.Task[None]) -> None:
        self.gateway = gateway
        self.task = task

    async def stop(self) -> None:
        self.gateway.stop()
        await asyncio.wait_for(self.task, 15)


@pytest.fixture
async def start_gateway(
    tmp_path: Path, school_broker: MosquittoProcess, academy_broker: MosquittoProcess
) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await start_gateway(overrides)`` returns a RunningGateway, connected."""
    running: list[RunningGateway] = []

    async def start(overrides: dict[str, dict[str, Any]] | None = None) -> RunningGateway:
        config = lab_config(
            tmp_path / "state",
            school_port=school_broker.port,
            academy_port=academy_broker.port,
            overrides=overrides,
        )
        gateway = Gateway(config)
        task = asyncio.create_task(gateway.run(), name="gateway")
        await asyncio.wait_for(gateway.ready.wait(), 10)
        await asyncio.wait_for(gateway.school_link.connected.wait(), 10)
        await asyncio.wait_for(gateway.academy_link.connected.wait(), 10)
        handle = RunningGateway(gateway, task)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        if not handle.task.done():
            await handle.stop()
