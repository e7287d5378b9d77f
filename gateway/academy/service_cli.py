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

    account = sub.add_parser("account", help="add a console account or change one")
    account.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    account.add_argument(
        "verb", choices=["add", "set"], help="add a new one, or set an existing one"
    )
    account.add_argument("name")
    account.add_argument("--role", choices=["viewer", "operator", "admin"], required=True)
    account.add_argument("--disable", action="store_true", help="refuse its sign-ins")
    account.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (scripts)"
    )
    account.set_defaults(handler=_cmd_account)


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.academy.config import load_academy_config
    from gateway.academy.console.app import run_console
    from gateway.academy.service import serve

    _log_to_stdout(args.verbose)
    config = load_academy_config(args.config)
    asyncio.run(serve(config, args.config, console=run_console))
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


def _read_password(args: argparse.Namespace) -> str:
    import getpass

    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("the two passwords differ")
    return first


def _cmd_account(args: argparse.Namespace) -> int:
    from gateway.academy.commanding import audit
    from gateway.academy.config import load_academy_config
    from gateway.academy.console.accounts import set_account
    from gateway.academy.store.database import connect, migrate
    from gateway.errors import ConfigError, RejectedInput

    config = load_academy_config(args.config)
    password = _read_password(args) if args.verb == "add" or not args.disable else None

    async def save() -> None:
        await migrate(config.database.dsn)
        conn = await connect(config.database.dsn)
        try:
            async with conn.transaction():
                exists = await conn.fetchval(
                    "SELECT 1 FROM accounts WHERE username = $1", args.name.strip()
                )
                if args.verb == "add" and exists:
                    raise ConfigError(f"account {args.name!r} exists: use `account set`")
                if args.verb == "set" and not exists:
                    raise ConfigError(f"no account {args.name!r}: use `account add`")
                await set_account(conn, args.name, args.role, password, disabled=args.disable)
                await audit(
                    conn,
                    "cli",
                    "",
                    "account.save",
                    {"name": args.name, "role": args.role, "disabled": args.disable},
                )
        except RejectedInput as exc:
            raise ConfigError(exc.detail) from exc
        finally:
            await conn.close()

    asyncio.run(save())
    print(f"account {args.name} saved ({args.role}{', disabled' if args.disable else ''})")
    return 0
