"""``python -m gateway decode``: print upstream payloads as JSON lines.

For academy developers: give it one MQTT payload from ``.../up/<kind>`` (a
file, or stdin) and it prints every upstream message it holds, one JSON
object per line (see gateway.relay.wire and docs/protocol.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.relay.wire import decode_payload


def register(commands: Any) -> None:
    """Add the ``decode`` subcommand to the CLI's subparsers."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "decode", help="print an upstream payload (single message or batch) as JSON lines"
    )
    parser.add_argument(
        "payload", type=Path, nargs="?", default=None, help="payload file (default: stdin)"
    )
    parser.set_defaults(handler=_cmd_decode)


def _cmd_decode(args: argparse.Namespace) -> int:
    raw = args.payload.read_bytes() if args.payload else sys.stdin.buffer.read()
    for message in decode_payload(raw):
        sys.stdout.write(json.dumps(message, separators=(",", ":"), sort_keys=True) + "\n")
    return 0
