"""``python -m gateway cache ...``: seed the cache from a folder, show its stats.

``cache import DIR`` asks the running gateway (admin API) to import, so its
in-memory index stays right; if the gateway is not running it opens the
store itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config import add_config_argument, load_config
from gateway.errors import CacheError, GatewayError
from gateway.metrics import Counters
from gateway.security.admin_token import admin_api_url, admin_headers
from gateway.signed import load_public_keys
from gateway.store.database import DATABASE_FILE, Database


def register(commands: Any, default_config: Path) -> None:
    cache = commands.add_parser("cache", help="the update cache")
    actions = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    imp = actions.add_parser("import", help="import files matching manifest hashes (USB drive)")
    imp.add_argument("dir", type=Path)
    imp.set_defaults(handler=_cmd_import)
    add_config_argument(cache, imp)


def _cmd_import(args: argparse.Namespace) -> int:
    report = asyncio.run(import_directory(args.config, args.dir.resolve()))
    print(json.dumps(report, indent=2, sort_keys=True))
    if report.get("note"):
        print(f"note: {report['note']}", file=sys.stderr)
    return 1 if report.get("failed") else 0


async def import_directory(config_path: Path, folder: Path) -> dict[str, Any]:
    config = load_config(config_path)
    url = admin_api_url(config, "/api/cache/import")
    try:
        headers = admin_headers(config.gateway.state_dir)
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
            session.post(url, json={"dir": str(folder)}, headers=headers) as response,
        ):
            body: dict[str, Any] = await response.json()
            if response.status != 200:
                raise CacheError(f"gateway refused the import: {body.get('detail', body)}")
            body["via"] = "running gateway"
            return body
    except (aiohttp.ClientConnectionError, GatewayError) as exc:
        if isinstance(exc, CacheError):
            raise
    from gateway.cache.service import CacheService

    db = await Database.open(config.gateway.state_dir / DATABASE_FILE)
    try:
        service = CacheService(
            config,
            db,
            Counters(),
            academy_keys=load_public_keys(config.commands.academy_keys),
        )
        await service.open()
        result = (await service.import_directory(folder)).as_dict()
    finally:
        await db.close()
    result["via"] = "store (gateway not running)"
    return result
