"""Shared fixtures: real Mosquitto brokers on free loopback ports, a gateway
running in-process against them, and an academy-side listener.

Every later test and benchmark builds on these.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway.app import Gateway
from gateway.broker.mosquitto_config import render_mosquitto_config
from gateway.config import config_from_mapping
from gateway.lab.academy import AcademyListener
from gateway.lab.mosquitto import STAND_IN_ACADEMY_CONFIG, MosquittoProcess, free_port
from gateway.security.broker_files import load_identity, prepare_broker_files
from gateway.store.database import Database
from tests.helpers import lab_config, secure_lab_tables


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    """One headless Chromium per test module (tests/browser.py says how to use it)."""
    from tests.browser import chromium

    async with chromium() as launched:
        yield launched


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


# --- The secure school broker (tests/test_security*.py, test_enroll*.py, test_broker_acl*.py)


class SecureSchool:
    """A real Mosquitto running the gateway's secure config, and what it was made from."""

    def __init__(self, broker: MosquittoProcess, tables: dict[str, dict[str, Any]]) -> None:
        self.broker = broker
        self.tables = tables
        self.config = config_from_mapping(tables)
        self.identity = load_identity(self.config)

    @property
    def tls_port(self) -> int:
        return self.config.school_broker.tls_port

    @property
    def state_dir(self) -> Path:
        return self.config.gateway.state_dir


async def start_secure_broker(
    workdir: Path, tables: dict[str, dict[str, Any]]
) -> tuple[MosquittoProcess, dict[str, dict[str, Any]]]:
    """Prepare keys, CRL and ACL like `mosquitto-config` does, then start the broker.

    The reload command sends SIGHUP to this broker, as systemd's reload does.
    """
    config = config_from_mapping(tables)
    db = await Database.open(config.gateway.state_dir / "gateway.db")
    try:
        await prepare_broker_files(config, db)
    finally:
        await db.close()
    # Mosquitto reads the TLS files after dropping to user "mosquitto", which
    # cannot enter pytest's private tmp_path: the lab keeps it as root.
    text = render_mosquitto_config(config, broker_user="root" if os.geteuid() == 0 else None)
    broker = MosquittoProcess(workdir, text, port=config.school_broker.port)
    await broker.start()
    tables["school_broker"]["reload_command"] = ["kill", "-HUP", str(broker.pid)]
    return broker, tables


@pytest.fixture
async def secure_school(tmp_path: Path) -> AsyncIterator[SecureSchool]:
    tables = secure_lab_tables(
        tmp_path / "state", school_port=free_port(), tls_port=free_port(), academy_port=1
    )
    broker, tables = await start_secure_broker(tmp_path / "school-broker", tables)
    try:
        yield SecureSchool(broker, tables)
    finally:
        await broker.stop()


@pytest.fixture
async def start_secure_gateway(
    secure_school: SecureSchool, academy_broker: MosquittoProcess
) -> AsyncIterator[Callable[..., Any]]:
    """Factory: a gateway on the secure school broker, connected to both brokers."""
    running: list[RunningGateway] = []

    async def start(overrides: dict[str, dict[str, Any]] | None = None) -> RunningGateway:
        tables = {k: dict(v) for k, v in secure_school.tables.items()}
        tables["academy_broker"] = {"host": "127.0.0.1", "port": academy_broker.port}
        for section, values in (overrides or {}).items():
            tables.setdefault(section, {}).update(values)
        gateway = Gateway(config_from_mapping(tables))
        task = asyncio.create_task(gateway.run(), name="gateway")
        await asyncio.wait_for(gateway.ready.wait(), 10)
        await asyncio.wait_for(gateway.school_link.connected.wait(), 10)
        handle = RunningGateway(gateway, task)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        if not handle.task.done():
            await handle.stop()
