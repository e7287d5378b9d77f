"""``python -m gateway academy serve|ingest|migrate``: the academy service's commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/school-academy/academy.toml")


def _log_to_stdout(verbose: bool) -> None:
    """Log to unbuffered stdout, as the gateway does; journald takes it from there."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    logging.getLogger("mqtt").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def register_service(sub: Any) -> None:
    """Add the service's subcommands to ``academy``'s subparsers."""
    serve = sub.add_parser("serve", help="run the academy service (ingest workers + console)")
    serve.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    serve.set_defaults(handler=_cmd_serve)

    ingest = sub.add_parser("ingest", help="run one ingest worker (serve runs them)")
    ingest.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ingest.add_argument("--worker", type=int, default=1, help="worker number (1..)")
    ingest.set_defaults(handler=_cmd_ingest)

    migrate = sub.add_parser("migrate", help="apply the academy store's schema migrations")
    migrate.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    migrate.set_defaults(handler=_cmd_migrate)


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.academy.config import load_academy_config
    from gateway.academy.service import serve

    _log_to_stdout(args.verbose)
    config = load_academy_config(args.config)
    asyncio.run(serve(config, args.config))
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from gateway.academy.config import load_academy_config
    from gateway.academy.service import run_worker

    _log_to_stdout(args.verbose)
    config = load_academy_config(args.config)
    if not 1 <= args.worker <= 1000:
        raise SystemExit("--worker must be 1..1000")
    asyncio.run(run_worker(config, args.worker))
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.academy.config import load_academy_config
    from gateway.academy.store.database import migrate

    config = load_academy_config(args.config)
    applied = asyncio.run(migrate(config.database.dsn))
    print(f"applied migrations: {applied or 'none (up to date)'}")
    return 0
