"""Helpers shared by the test modules: lab config tables, a good state report,
the CLI as a subprocess, and what reached the academy. Test modules import from
here, never from each other or from conftest.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Config, config_from_mapping
from gateway.lab.academy import AcademyListener
from gateway.lab.mosquitto import free_port
from gateway.relay import outbox
from gateway.relay.wire import decode_payload
from gateway.sim.model import TabletModel
from gateway.store.database import Database

REPO = Path(__file__).resolve().parents[1]


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


def secure_lab_tables(
    state_dir: Path,
    *,
    school_port: int,
    tls_port: int,
    academy_port: int,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Config tables for the production shape: TLS listeners, ACL, no anonymous access."""
    tables = lab_tables(state_dir, school_port=school_port, academy_port=academy_port)
    tables["school_broker"] = {
        "host": "127.0.0.1",
        "port": school_port,
        "tls_host": "127.0.0.1",
        "tls_port": tls_port,
    }
    tables["enrollment"] = {"host": "127.0.0.1", "port": free_port()}
    for section, values in (overrides or {}).items():
        tables.setdefault(section, {}).update(values)
    return tables


def good_report(device_id: str, seq: int = 1, battery: int = 80) -> bytes:
    model = TabletModel.create(device_id, "class-01", seed=seq)
    model.battery_pct = battery
    model.seq = seq - 1
    return json.dumps(model.report(1_764_000_000.0 + seq)).encode()


async def run_cli(*args: str, within_s: float = 60) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within_s)
    except TimeoutError:
        process.kill()  # never leave a hung CLI behind
        await process.wait()
        raise
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


def academy_view(listener: AcademyListener) -> list[dict[str, Any]]:
    """Every upstream message the academy received, deduplicated by (gateway_id, seq)."""
    seen: set[tuple[str, int]] = set()
    view = []
    for received in list(listener.messages):
        if "/up/" not in received.topic:
            continue
        for message in decode_payload(received.payload):
            key = (message["gateway_id"], message["seq"])
            if key not in seen:
                seen.add(key)
                view.append(message)
    return view


def latest_states(view: list[dict[str, Any]]) -> dict[str, int]:
    """device -> the tablet seq of the state with the highest upstream seq."""
    best: dict[str, tuple[int, int]] = {}
    for message in view:
        if message["kind"] == "state":
            device = message["body"]["device_id"]
            if device not in best or message["seq"] > best[device][0]:
                best[device] = (message["seq"], message["body"]["seq"])
    return {device: tablet_seq for device, (_, tablet_seq) in best.items()}


async def enqueue_results(db_path: Path, command_ids: list[str]) -> None:
    """Put command results in the outbox the way the command flow does (a second connection)."""
    db = await Database.open(db_path)
    try:
        async with db.transaction() as conn:
            for command_id in command_ids:
                await outbox.enqueue(conn, "result", {"command_id": command_id, "status": "done"})
    finally:
        await db.close()


def families(body: bytes) -> dict[str, tuple[str, str, list[tuple[dict[str, str], float]]]]:
    """Parsed exposition: family name -> (type, help, [(labels, value)])."""
    return {
        family.name: (
            family.type,
            family.documentation,
            [(sample.labels, sample.value) for sample in family.samples],
        )
        for family in text_string_to_metric_families(body.decode("utf-8"))
    }
