"""``python -m gateway console hash-password``: the hash provisioning puts in the config.

It reads the password twice without echo (or once from standard input when
that is not a terminal) and prints the scrypt hash for
``[console] first_it_password_hash`` in the provisioning file.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from gateway.errors import ConfigError
from gateway.web.passwords import hash_password, password_problem


def register(commands: Any) -> None:
    console = commands.add_parser("console", help="the school console (accounts)")
    actions = console.add_subparsers(dest="console_command", required=True, metavar="ACTION")
    hashing = actions.add_parser(
        "hash-password", help="print the hash of the first IT contact's password"
    )
    hashing.set_defaults(handler=_cmd_hash_password)


def _cmd_hash_password(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("IT contact's password: ")
        if getpass.getpass("Again: ") != password:
            raise ConfigError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    problem = password_problem(password)
    if problem is not None:
        raise ConfigError(problem)
    print(hash_password(password))
    return 0
