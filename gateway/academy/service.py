"""``python -m gateway academy serve``: the ingest workers, the pruning and the console.

``serve`` applies the schema migrations, then runs ``ingest.workers``
worker processes (``python -m gateway academy ingest --worker N``, each
with its own event loop and PostgreSQL connection, so two workers use two
cores) and, in its own process, the retention pruning and the web console.
A worker that exits is started again after a capped, jittered delay (it
resumes its persistent MQTT session: what it had not acknowledged comes
back). SIGTERM/SIGINT stop the workers (SIGTERM, then SIGKILL after 10 s)
and the service.

Pruning (every ``retention.prune_interval_s``): summaries older than
``retention.summaries_s``, dedup keys older than ``ingest.dedup_window_s``,
refused-payload records older than ``retention.refused_payloads_s``,
expired sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import gateway
from gateway.academy.config import AcademyConfig
from gateway.academy.ingest.worker import IngestWorker
from gateway.academy.store.database import DATABASE_ERRORS, connect, is_transient, migrate
from gateway.backoff import backoff_delay
from gateway.errors import StoreError

log = logging.getLogger(__name__)

SOURCE_ROOT = Path(gateway.__file__).resolve().parents[1]
STOP_GRACE_S = 10.0

PRUNE_STATEMENTS = (
    ("summaries", "DELETE FROM summaries WHERE received_at < $1", "summaries_s"),
    ("upstream_seen", "DELETE FROM upstream_seen WHERE received_at < $1", "dedup_window_s"),
    ("refused_payloads", "DELETE FROM refused_payloads WHERE received_at < $1", "refused_s"),
)


async def migrate_when_ready(config: AcademyConfig, *, within_s: float = 120.0) -> None:
    """Apply the migrations, waiting for PostgreSQL to accept connections (start-up order)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    attempt = 0
    while True:
        try:
            await migrate(config.database.dsn, timeout_s=config.database.connect_timeout_s)
            return
        except StoreError as exc:
            cause = exc.__cause__
            if cause is None or not is_transient(cause) or loop.time() > deadline:
                raise
            delay = backoff_delay(attempt, base_s=0.2, cap_s=5.0)
            attempt += 1
            log.warning("academy store not ready (%s); again in %.1f s", exc, delay)
            await asyncio.sleep(delay)


async def run_worker(config: AcademyConfig, index: int) -> None:
    """One ingest worker process until SIGTERM/SIGINT."""
    await migrate_when_ready(config)
    worker = IngestWorker(config, index)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        if task is not None:
            loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await worker.run()


async def prune_once(config: AcademyConfig) -> dict[str, int]:
    """Delete what is past its retention; return rows deleted per table."""
    now = datetime.datetime.now(datetime.UTC)
    ages = {
        "summaries_s": config.retention.summaries_s,
        "dedup_window_s": config.ingest.dedup_window_s,
        "refused_s": config.retention.refused_payloads_s,
    }
    deleted: dict[str, int] = {}
    conn = await connect(config.database.dsn, timeout_s=config.database.connect_timeout_s)
    try:
        for table, statement, age_key in PRUNE_STATEMENTS:
            cutoff = now - datetime.timedelta(seconds=ages[age_key])
            status = await conn.execute(statement, cutoff)
            deleted[table] = int(status.rsplit(" ", 1)[-1])
        status = await conn.execute("DELETE FROM sessions WHERE expires_at < $1", now)
        deleted["sessions"] = int(status.rsplit(" ", 1)[-1])
    except DATABASE_ERRORS as exc:
        raise StoreError(f"pruning failed: {exc}") from exc
    finally:
        await conn.close()
    return deleted


async def prune_forever(config: AcademyConfig) -> None:
    while True:
        try:
            deleted = await prune_once(config)
            if any(deleted.values()):
                log.info("academy: pruned %s", deleted)
        except StoreError as exc:
            log.warning("academy: %s", exc)
        await asyncio.sleep(config.retention.prune_interval_s)


class WorkerProcesses:
    """The ingest worker subprocesses, restarted when they exit."""

    def __init__(self, config: AcademyConfig, config_path: Path) -> None:
        self.config = config
        self.config_path = config_path
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0

    async def start(self, index: int) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "academy",
            "ingest",
            "--config",
            str(self.config_path),
            "--worker",
            str(index),
            stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(SOURCE_ROOT)},
        )
        self.processes[index] = process
        log.info("academy: ingest worker %d started (pid %d)", index, process.pid)
        return process

    async def keep(self, index: int) -> None:
        """Run worker ``index`` for ever: start it again each time it exits."""
        attempt = 0
        while True:
            process = await self.start(index)
            code = await process.wait()
            self.restarts += 1
            delay = backoff_delay(
                attempt, base_s=0.5, cap_s=self.config.ingest.restart_backoff_cap_s
            )
            attempt = min(attempt + 1, 10)
            log.warning(
                "academy: ingest worker %d exited with %s; starting it again in %.1f s",
                index,
                code,
                delay,
            )
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.terminate()
        for process in self.processes.values():
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            except TimeoutError:
                process.kill()
                await process.wait()


ConsoleRunner = Callable[[AcademyConfig], Coroutine[Any, Any, None]]


async def serve(
    config: AcademyConfig, config_path: Path, console: ConsoleRunner | None = None
) -> None:
    """Workers + pruning (+ the console), until SIGTERM/SIGINT."""
    await migrate_when_ready(config)
    workers = WorkerProcesses(config, config_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(workers.keep(i), name=f"ingest-worker-{i}")
                for i in range(1, config.ingest.workers + 1)
            ]
            tasks.append(group.create_task(prune_forever(config), name="prune"))
            if console is not None:
                tasks.append(group.create_task(console(config), name="console"))
            await stop.wait()
            log.info("academy: stopping")
            for task in tasks:
                task.cancel()
    finally:
        await workers.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
