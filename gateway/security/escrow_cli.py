"""``python -m gateway escrow keygen|open`` and ``python -m gateway restore``.

    escrow keygen --out FILE
        (academy) a new X25519 escrow key pair: the private key to FILE (0600),
        the public key printed for every box's ``escrow.academy_public_key``
    escrow open --escrow SEALED --key FILE --out BUNDLE
        (academy) open a box's escrow (the retained message of
        ``schools/<school>/gateways/<gw>/escrow``) into a plain bundle (0600)
    restore --config CONFIG (--bundle BUNDLE | --escrow SEALED --key FILE)
        (replacement box, gateway stopped) write the bundle into the config's
        empty state directory; then start the gateway as usual

See docs/operations.md ("A box died") and docs/security.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.config import add_config_argument, load_config
from gateway.errors import RejectedInput, SecurityError
from gateway.security import escrow
from gateway.security.keyfiles import write_private_file


def register(commands: Any) -> None:
    group = commands.add_parser("escrow", help="identity escrow keys and bundles (academy side)")
    actions = group.add_subparsers(dest="escrow_command", required=True, metavar="ACTION")
    keygen = actions.add_parser("keygen", help="make the academy's escrow key pair")
    keygen.add_argument("--out", type=Path, required=True, help="private key file to write")
    keygen.set_defaults(handler=_cmd_keygen)
    opener = actions.add_parser("open", help="open a sealed escrow into a plain bundle")
    opener.add_argument("--escrow", type=Path, required=True, help="the sealed escrow message")
    opener.add_argument("--key", type=Path, required=True, help="the academy's private key")
    opener.add_argument("--out", type=Path, required=True, help="bundle file to write (0600)")
    opener.set_defaults(handler=_cmd_open)

    restore = commands.add_parser("restore", help="restore a dead box's identity into this one")
    restore.add_argument("--bundle", type=Path, help="a bundle made by `escrow open`")
    restore.add_argument("--escrow", type=Path, help="a sealed escrow message (needs --key)")
    restore.add_argument("--key", type=Path, help="the academy's escrow private key")
    restore.set_defaults(handler=_cmd_restore)
    add_config_argument(restore)


def _cmd_keygen(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise SecurityError(f"{args.out} exists; not overwriting an escrow key")
    key = X25519PrivateKey.generate()
    write_private_file(args.out, escrow.private_key_pem(key))
    print(f"private key written to {args.out} (keep it offline; it opens every box's escrow)")
    print("put this in every box's config, [escrow] academy_public_key:")
    print(f"  {escrow.public_key_text(key.public_key())}")
    return 0


def _open(sealed: Path, key: Path) -> dict[str, Any]:
    try:
        message = sealed.read_bytes()
    except OSError as exc:
        raise SecurityError(f"{sealed}: cannot read: {exc.strerror}") from exc
    try:
        return escrow.open_sealed(message, escrow.load_private_key(key))
    except RejectedInput as exc:
        raise SecurityError(f"{sealed}: {exc.detail}") from exc


def _cmd_open(args: argparse.Namespace) -> int:
    bundle = _open(args.escrow, args.key)
    write_private_file(args.out, json.dumps(bundle).encode())
    print(
        f"escrow of {bundle['school_id']}/{bundle['gateway_id']}: "
        f"{len(bundle.get('tablets', []))} tablets; bundle written to {args.out} (secret: it "
        "holds the school CA key)"
    )
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.bundle is not None:
        try:
            bundle = json.loads(args.bundle.read_bytes())
        except (OSError, ValueError) as exc:
            raise SecurityError(f"{args.bundle}: not a readable escrow bundle: {exc}") from exc
    elif args.escrow is not None and args.key is not None:
        bundle = _open(args.escrow, args.key)
    else:
        raise SecurityError("restore needs --bundle FILE, or --escrow FILE and --key FILE")
    print(asyncio.run(escrow.restore_state(config, bundle)))
    return 0
