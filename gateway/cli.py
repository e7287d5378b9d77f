"""Command line: ``python -m gateway <command>``.

    run               the daemon (under systemd on the box)
    status            what the running gateway sees (admin API, or the store)
    demo              brokers, gateway and simulated tablets on loopback
    sim               simulated tablets against a broker
    mosquitto-config  write the school broker's config from the gateway config
    enroll            enrollment tokens, enrolled tablets, revocation (gateway.security.cli)
    academy           the academy's side: keys, signed commands, watch results
    cache import DIR  seed the update cache from a folder (USB drive), verifying hashes
    decode            print an upstream payload (academy side) as JSON lines
    console           the school console: hash-password for provisioning
    system-update     A/B system updates: install, health-check (root's units), status

Each flow adds its own commands through a ``register(subparsers)`` function.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.errors import GatewayError

log = logging.getLogger("gateway")

DEFAULT_CONFIG = Path("/etc/school-gateway/gateway.toml")


def setup_logging(verbose: bool = False) -> None:
    """Log to unbuffered stdout; journald takes it from there."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    logging.getLogger("mqtt").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import Gateway
    from gateway.config import load_config

    setup_logging(args.verbose)
    config = load_config(args.config)
    gateway = Gateway(config)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, gateway.stop)
        await gateway.run()

    asyncio.run(main())
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from gateway.school_console.setup import console_setup_code
    from gateway.status_view import fetch_status, render_status

    status = asyncio.run(fetch_status(args.config))
    code = console_setup_code(args.config)
    if code is not None:
        status["console_setup_code"] = code
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(render_status(status))
        if code is not None:
            print(f"console set-up code: {code} (type it at http://<this box>/setup)")
    return 0


def _cmd_mosquitto_config(args: argparse.Namespace) -> int:
    from gateway.broker.mosquitto_config import (
        render_mosquitto_config,
        state_dir_owner,
        write_mosquitto_config,
    )
    from gateway.config import load_config

    config = load_config(args.config)
    if not config.school_broker.lab_plain_listener:
        from gateway.security.broker_files import prepare_broker_files_now

        prepare_broker_files_now(config)  # the CA, certificates, CRL and ACL it refers to
    user = state_dir_owner(config)  # Mosquitto started as root drops to this user
    if args.output is None:
        print(render_mosquitto_config(config, broker_user=user), end="")
    else:
        write_mosquitto_config(config, args.output, broker_user=user)
    return 0


def _cmd_sim(args: argparse.Namespace) -> int:
    from gateway.sim.run import run_sim

    setup_logging(args.verbose)
    return asyncio.run(run_sim(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return asyncio.run(run_demo(args))


def _add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="school broker host")
    parser.add_argument("--port", type=int, default=1883, help="school broker port")
    parser.add_argument("--tablets", type=int, default=20, help="how many tablets")
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds between reports (0 = flat out)"
    )
    parser.add_argument("--reports", type=int, default=None, help="stop after N reports each")
    parser.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    parser.add_argument("--prefix", default="tab", help="device id prefix")
    parser.add_argument("--seed", type=int, default=1)


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tablets", type=int, default=20, help="simulated tablets")
    parser.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between reports")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep state here (default: a temp dir)"
    )
    parser.add_argument(
        "--cut-at", type=float, default=None, help="cut the uplink after S seconds (default: 1/3)"
    )
    parser.add_argument(
        "--cut-for", type=float, default=None, help="for S seconds (default: 1/3 of the run)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the gateway daemon")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    run.set_defaults(handler=_cmd_run)

    status = commands.add_parser("status", help="show what the running gateway sees")
    status.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_cmd_status)

    mosquitto = commands.add_parser("mosquitto-config", help="write the school broker config")
    mosquitto.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    mosquitto.add_argument("--output", type=Path, default=None, help="file (default: stdout)")
    mosquitto.set_defaults(handler=_cmd_mosquitto_config)

    from gateway.cache.cli import register as register_cache

    register_cache(commands, DEFAULT_CONFIG)

    # The kit's commands (sim, demo): their options here, their code imported only
    # when they run, so the daemon never loads the kit (tests/test_layering.py).
    sim = commands.add_parser("sim", help="simulate tablets against a school broker")
    _add_sim_arguments(sim)
    sim.set_defaults(handler=_cmd_sim)

    from gateway.security.cli import register as register_enroll

    register_enroll(commands, DEFAULT_CONFIG)

    from gateway.security.escrow_cli import register as register_escrow

    register_escrow(commands)

    demo = commands.add_parser("demo", help="run everything on loopback and show what flows")
    _add_demo_arguments(demo)
    demo.set_defaults(handler=_cmd_demo)

    from gateway.academy.cli import register as register_academy

    register_academy(commands)
    from gateway.school_console.cli import register as register_console

    register_console(commands)
    from gateway.relay.decode import register as register_decode

    register_decode(commands)
    from gateway.sysupdate.cli import register as register_system_update

    register_system_update(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
