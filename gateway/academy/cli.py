"""``python -m gateway academy ...``: the academy's side of the command flow.

    keygen   make an Ed25519 key pair (private PEM mode 0600, public base64)
    sign     print a signed envelope (publish it yourself, e.g. with mosquitto_pub)
    send     sign and publish a command to a school on the academy broker, or
             (--manifest FILE) the school's cache manifest, retained
    watch    print results, progress and rejections coming back from the school

This is also the reference for an academy platform integrating with the
gateway (docs/protocol.md, "Commands").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiomqtt

from gateway import topics
from gateway.academy.signing import (
    build_payload,
    generate_key_pair,
    load_private_key,
    new_command_id,
    parse_ttl,
)
from gateway.cache.manifest import parse_manifest, sign_manifest
from gateway.commands.actions import check_action
from gateway.errors import BrokerError, ConfigError, RejectedInput
from gateway.signed import sign_envelope

Decoder = Callable[[bytes], list[dict[str, Any]]]


def register(commands: Any) -> None:
    """Add ``academy`` and its subcommands to the CLI's subparsers."""
    academy = commands.add_parser("academy", help="academy side: keys, send commands, watch")
    sub = academy.add_subparsers(dest="academy_command", required=True, metavar="ACTION")

    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair")
    keygen.add_argument("--out", type=Path, required=True, help="directory for the key files")
    keygen.add_argument("--key-id", default="academy-1", help="key id to print in the snippet")
    keygen.set_defaults(handler=_cmd_keygen)

    sign = sub.add_parser("sign", help="print a signed command envelope")
    _command_arguments(sign)
    sign.set_defaults(handler=_cmd_sign)

    send = sub.add_parser("send", help="sign and publish a command to a school")
    send.add_argument("--broker", required=True, help="academy broker host:port")
    _command_arguments(send)
    send.set_defaults(handler=_cmd_send)

    watch = sub.add_parser("watch", help="print results and rejections from a school")
    watch.add_argument("--broker", required=True, help="academy broker host:port")
    watch.add_argument("--school", required=True)
    watch.add_argument("--command", default=None, help="only this command id")
    watch.add_argument(
        "--until-complete", action="store_true", help="exit when --command is complete"
    )
    watch.add_argument("--timeout", type=float, default=None, help="give up after S seconds")
    watch.add_argument("--json", action="store_true", help="print decoded messages as JSON")
    watch.set_defaults(handler=_cmd_watch)

    from gateway.academy.service_cli import register_service

    register_service(sub)


def _command_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--school", required=True, help="school id")
    parser.add_argument("--key", type=Path, required=True, help="academy private key (PEM)")
    parser.add_argument("--key-id", required=True, help="key id the gateways know it by")
    parser.add_argument("--action", help="the command's action (not with --manifest)")
    parser.add_argument(
        "--manifest",
        type=Path,
        help="instead of a command: a cache manifest (JSON: serial, items) to sign",
    )
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--device", action="append", help="target device id (repeatable)")
    who.add_argument("--group", help="target group (classroom)")
    who.add_argument("--all", action="store_true", help="every tablet of the school")
    parser.add_argument("--ttl", default="1d", help="time to live: 90, 45s, 30m, 2h, 1d")
    parser.add_argument("--param", action="append", default=[], help="k=v (string value)")
    parser.add_argument("--param-json", action="append", default=[], help="k=JSON value")
    parser.add_argument("--id", default=None, help="command id (default: a new one)")


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--param {item!r} must be key=value")
        params[key] = value
    for item in args.param_json:
        key, sep, value = item.partition("=")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--param-json {item!r}: value is not JSON: {exc}") from exc
        if not sep:
            raise ConfigError(f"--param-json {item!r} must be key=JSON")
    return params


def build_manifest_envelope(args: argparse.Namespace) -> tuple[int, bytes]:
    """(serial, envelope bytes) of the manifest in ``args.manifest``, checked as the gateway
    will check it."""
    if args.action or args.device or args.group or args.all or args.param or args.param_json:
        raise ConfigError("--manifest takes no --action, targets or parameters")
    try:
        body = json.loads(args.manifest.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--manifest {args.manifest}: cannot read it as JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ConfigError(f"--manifest {args.manifest}: must be a JSON object")
    body.setdefault("type", "cache_manifest")
    body.setdefault("issued_at", int(time.time()))
    try:
        manifest = parse_manifest(json.dumps(body).encode())
    except RejectedInput as exc:
        raise ConfigError(f"not a valid manifest: {exc}") from exc
    return manifest.serial, sign_manifest(body, load_private_key(args.key), args.key_id)


def build_envelope(args: argparse.Namespace) -> tuple[str, bytes]:
    """(command id, envelope bytes) for the command described by ``args``."""
    if not args.action:
        raise ConfigError("--action is required (or --manifest FILE)")
    if not (args.device or args.group or args.all):
        raise ConfigError("one of --device, --group or --all is required")
    params = _params(args)
    try:
        check_action(args.action, params)  # the gateway would reject it anyway
        ttl = parse_ttl(args.ttl)
    except RejectedInput as exc:
        raise ConfigError(f"not a valid command: {exc}") from exc
    if args.all:
        targets: dict[str, Any] = {"all": True}
    elif args.group:
        targets = {"group": args.group}
    else:
        targets = {"devices": list(args.device)}
    now = time.time()
    command_id = args.id or new_command_id()
    payload = build_payload(
        command_id=command_id,
        school_id=args.school,
        targets=targets,
        action=args.action,
        params=params,
        issued_at=now,
        not_after=now + ttl,
    )
    return command_id, sign_envelope(load_private_key(args.key), args.key_id, payload)


def _cmd_keygen(args: argparse.Namespace) -> int:
    path, public = generate_key_pair(args.out)
    print(f"private key: {path} (keep it secret; mode 0600)")
    print(f"public key:  {public}")
    print("enroll it in each gateway's config:")
    print("[commands.academy_keys]")
    print(f'"{args.key_id}" = "{public}"')
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    _, envelope = build_manifest_envelope(args) if args.manifest else build_envelope(args)
    print(envelope.decode())
    return 0


def _broker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--broker {text!r} must be host:port")
    return host, int(port)


async def publish_envelope(
    host: str, port: int, school_id: str, envelope: bytes, *, manifest: bool = False
) -> None:
    """Publish one envelope, QoS 1, and wait for the broker's acknowledgement.

    A manifest is retained: a gateway that connects later gets the latest one.
    """
    if manifest:
        await _publish(host, port, [(topics.academy_manifest(school_id), envelope, True)])
    else:
        await publish_envelopes(host, port, [(school_id, envelope)])


async def publish_envelopes(
    host: str,
    port: int,
    envelopes: Sequence[tuple[str, bytes]],
    *,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Publish each (school, command envelope) to that school's command topic, QoS 1, on
    one connection, waiting for every acknowledgement (the console sends through this)."""
    await _publish(
        host, port, [(topics.academy_commands(s), e, False) for s, e in envelopes], tls=tls
    )


async def _publish(
    host: str,
    port: int,
    messages: Sequence[tuple[str, bytes, bool]],
    *,
    tls: ssl.SSLContext | None = None,
) -> None:
    try:
        async with aiomqtt.Client(host, port, timeout=10, tls_context=tls) as client:
            for topic, payload, retain in messages:
                await client.publish(topic, payload, qos=1, retain=retain)
    except aiomqtt.MqttError as exc:
        raise BrokerError(f"academy broker {host}:{port}: {exc}") from exc


def _cmd_send(args: argparse.Namespace) -> int:
    if args.manifest:
        serial, envelope = build_manifest_envelope(args)
        host, port = _broker(args.broker)
        asyncio.run(publish_envelope(host, port, args.school, envelope, manifest=True))
        print(f"sent manifest {serial} to {topics.academy_manifest(args.school)} (retained)")
        return 0
    command_id, envelope = build_envelope(args)
    host, port = _broker(args.broker)
    asyncio.run(publish_envelope(host, port, args.school, envelope))
    print(f"sent {command_id} ({args.action}) to {topics.academy_commands(args.school)}")
    return 0


def upstream_decoder() -> Decoder:
    """The relay's decoder (single messages and compressed batches) when present."""
    with contextlib.suppress(ImportError, AttributeError):
        decoder: Decoder = importlib.import_module("gateway.relay.wire").decode_payload
        return decoder

    def single_json(payload: bytes) -> list[dict[str, Any]]:
        value = json.loads(payload)
        return value if isinstance(value, list) else [value]

    return single_json


def describe(message: dict[str, Any]) -> str:
    """One line for a decoded upstream message."""
    kind = message.get("kind")
    body = message.get("body", {})
    head = f"{message.get('gateway_id')} #{message.get('seq')}"
    if kind == "rejection":
        return (
            f"rejected  {head} {body.get('command_id')}: {body.get('reason')}: {body.get('detail')}"
        )
    if kind == "result" and body.get("type") == "progress":
        figures = ", ".join(
            f"{body.get(k)} {k}"
            for k in ("targets", "sent", "delivered", "done", "failed", "expired", "waiting")
        )
        done = " COMPLETE" if body.get("complete") else ""
        return f"progress  {head} {body.get('command_id')} {body.get('action')}: {figures}{done}"
    if kind == "result":
        detail = f" ({body['detail']})" if body.get("detail") else ""
        return (
            f"result    {head} {body.get('command_id')} {body.get('device_id')} "
            f"{body.get('status')}{detail}"
        )
    return f"{kind:<9} {head}"


async def watch(
    args: argparse.Namespace,
    out: Callable[[str], None] = print,
    subscribed: asyncio.Event | None = None,
) -> int:
    """Print what comes back; with --until-complete return 0 once it is complete."""
    host, port = _broker(args.broker)
    decode = upstream_decoder()
    seen: set[tuple[str, int]] = set()
    loop = asyncio.get_running_loop()
    deadline = None if args.timeout is None else loop.time() + args.timeout
    try:
        async with aiomqtt.Client(host, port, timeout=10) as client:
            for kind in ("result", "rejection"):
                await client.subscribe(f"schools/{args.school}/gateways/+/up/{kind}", qos=1)
            if subscribed is not None:
                subscribed.set()
            async with contextlib.AsyncExitStack() as stack:
                if deadline is not None:
                    await stack.enter_async_context(asyncio.timeout_at(deadline))
                async for mqtt_message in client.messages:
                    payload = mqtt_message.payload
                    if not isinstance(payload, bytes):
                        continue
                    for message in decode(payload):
                        key = (str(message.get("gateway_id")), int(message.get("seq", -1)))
                        body = message.get("body", {})
                        if key in seen or (args.command and body.get("command_id") != args.command):
                            continue  # a duplicate (delivery is at-least-once) or not asked for
                        seen.add(key)
                        out(json.dumps(message, sort_keys=True) if args.json else describe(message))
                        if args.until_complete and body.get("complete"):
                            return 0
    except TimeoutError:
        return 1
    except aiomqtt.MqttError as exc:
        raise BrokerError(f"academy broker {host}:{port}: {exc}") from exc
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    return asyncio.run(watch(args, out))
