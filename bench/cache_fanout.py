"""Cold-cache fan-out: one upstream download for 120 tablets.

The origin (gateway.lab.origin, throttled to 8 MB/s) serves a 64 MB item.
A real gateway process (``python -m gateway run``, with real Mosquitto
brokers) learns the item from a signed manifest; 100 clients request it at
once and 20 more join half way through. Clients run in separate processes
and hash what they receive.

Reference, measured in the same run: one client downloading the item
straight from the origin. The last line is JSON:
clients, clients_ok, upstream_ratio (origin bytes / item size), ttfb_max_s,
ttfb_median_s, time_ratio (time until every client is done / origin-alone time).

    python bench/cache_fanout.py [--size-mb 64] [--rate-mb 8] [--clients 100] [--late 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.broker.mosquitto_config import render_mosquitto_config  # noqa: E402
from gateway.cache.manifest import sign_manifest  # noqa: E402
from gateway.config import config_from_mapping  # noqa: E402
from gateway.lab.mosquitto import STAND_IN_ACADEMY_CONFIG, MosquittoProcess, free_port  # noqa: E402
from gateway.lab.origin import Origin  # noqa: E402

MB = 1024 * 1024


def make_blob(size: int) -> bytes:
    seed = hashlib.sha256(b"bench").digest() * (MB // 32)
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest() + seed[: MB - 32]
        counter += 1
    return bytes(out[:size])


@contextlib.asynccontextmanager
async def running_gateway(
    workdir: Path, origin: Origin, items: list[dict[str, object]], cache: dict[str, object]
) -> AsyncIterator[str]:
    """Brokers and a gateway subprocess; yields the LAN base URL."""
    private = Ed25519PrivateKey.generate()
    key_id = base64.b64encode(
        private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ).decode()
    manifest = {"type": "cache_manifest", "serial": 1, "issued_at": time.time(), "items": items}
    origin.add("manifest.json", sign_manifest(manifest, private, key_id))
    school_port, academy_port, http_port = free_port(), free_port(), free_port()
    state = workdir / "state"
    table = {
        "gateway": {"school_id": "bench", "gateway_id": "gw-bench", "state_dir": str(state)},
        "school_broker": {"host": "127.0.0.1", "port": school_port, "lab_plain_listener": True},
        "academy_broker": {"host": "127.0.0.1", "port": academy_port},
        "http": {"host": "127.0.0.1", "port": http_port},
    }
    school_conf = render_mosquitto_config(config_from_mapping(table))
    cache_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in cache.items())
    config = workdir / "gateway.toml"
    config.write_text(
        f"""
[gateway]
school_id = "bench"
gateway_id = "gw-bench"
state_dir = "{state}"
[school_broker]
port = {school_port}
lab_plain_listener = true
[academy_broker]
host = "127.0.0.1"
port = {academy_port}
[http]
host = "127.0.0.1"
port = {http_port}
[cache]
offpeak_windows = []
manifest_url = "{origin.url("manifest.json")}"
{cache_lines}
[commands.academy_keys]
"{key_id}" = "{key_id}"
"""
    )
    async with (
        MosquittoProcess(workdir / "school", school_conf, port=school_port),
        MosquittoProcess(workdir / "academy", STAND_IN_ACADEMY_CONFIG, port=academy_port),
    ):
        log = (workdir / "gateway.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(config),
            cwd=ROOT,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{http_port}"
        try:
            sha = str(items[0]["sha256"])
            async with aiohttp.ClientSession() as session:
                deadline = time.monotonic() + 30
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.head(f"{base}/content/{sha}") as resp:
                            if resp.status == 200:
                                break
                    if time.monotonic() > deadline or process.returncode is not None:
                        raise RuntimeError(f"gateway did not come up; see {workdir}/gateway.log")
                    await asyncio.sleep(0.1)
            yield base
        finally:
            process.terminate()
            await process.wait()
            log.close()


# -- clients (in worker processes) ------------------------------------------------


async def _one_client(
    session: aiohttp.ClientSession, url: str, sha: str
) -> tuple[float, float, bool, float]:
    started = time.monotonic()
    ttfb = -1.0
    hasher = hashlib.sha256()
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                return -1.0, time.monotonic(), False, started
            async for chunk in resp.content.iter_chunked(1 << 20):
                if ttfb < 0:
                    ttfb = time.monotonic() - started
                hasher.update(chunk)
    except aiohttp.ClientError:
        return ttfb, time.monotonic(), False, started
    return ttfb, time.monotonic(), hasher.hexdigest() == sha, started


async def _clients(
    url: str, sha: str, count: int, delay_s: float, go: Any
) -> list[tuple[float, float, bool, float]]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.to_thread(go.wait)
        await asyncio.sleep(delay_s)
        return await asyncio.gather(*(_one_client(session, url, sha) for _ in range(count)))


def client_worker(  # noqa: PLR0917 - multiprocessing passes args positionally
    url: str, sha: str, count: int, delay_s: float, ready: Any, go: Any, out: Any
) -> None:
    # The tablets are other machines: on this box they must not starve the gateway.
    os.nice(5)
    ready.put(os.getpid())
    out.put(asyncio.run(_clients(url, sha, count, delay_s, go)))


def run_client_processes(
    url: str, sha: str, groups: list[tuple[int, float]], processes: int
) -> tuple[float, list[tuple[float, float, bool, float]]]:
    """``groups``: (clients, delay after the start) each, over ``processes`` processes.

    Returns the start time (after every worker process is up) and the results.
    """
    ctx = multiprocessing.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    workers = []
    for count, delay_s in groups:
        per = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
        for n in per:
            if n:
                worker = ctx.Process(
                    target=client_worker, args=(url, sha, n, delay_s, ready, go, out)
                )
                worker.start()
                workers.append(worker)
    for _ in workers:
        ready.get()
    time.sleep(0.5)  # the workers are between ready.put and go.wait
    start = time.monotonic()
    go.set()
    results: list[tuple[float, float, bool, float]] = []
    for _ in workers:
        results.extend(out.get())
    for worker in workers:
        worker.join()
    return start, results


async def origin_alone(origin: Origin, name: str, sha: str) -> float:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        started = time.monotonic()
        _, done, ok, _ = await _one_client(session, origin.url(name), sha)
        if not ok:
            raise RuntimeError("origin-alone download failed")
        return done - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--rate-mb", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--late", type=int, default=20)
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args()
    size = args.size_mb * MB
    data = make_blob(size)
    sha = hashlib.sha256(data).hexdigest()
    workdir = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    async with Origin(rate_bytes_per_s=args.rate_mb * MB) as origin:
        origin.add("item.img", data)
        alone_s = await origin_alone(origin, "item.img", sha)
        print(f"origin alone: one client, {args.size_mb} MB in {alone_s:.2f} s", flush=True)
        origin.sent_by_name.clear()
        items = [
            {
                "sha256": sha,
                "size": size,
                "urls": [origin.url("item.img")],
                "name": "item.img",
                "kind": "os",
            }
        ]
        async with running_gateway(workdir, origin, items, {}) as base:
            url = f"{base}/content/{sha}"
            groups = [(args.clients, 0.0), (args.late, alone_s / 2)]
            complete = workdir / "state" / "cache" / "objects" / sha
            clients = asyncio.create_task(
                asyncio.to_thread(run_client_processes, url, sha, groups, args.processes)
            )
            while not complete.exists() and not clients.done():  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.05)
            item_complete_at = time.monotonic()
            start_at, results = await clients
        upstream = origin.sent_by_name["item.img"]
    ttfbs = [r[0] for r in results if r[0] >= 0]
    first_request = min(r[3] for r in results)
    total_s = max(r[1] for r in results) - first_request
    print(
        f"first request {first_request - start_at:+.2f} s from the planned start; "
        f"done from {min(r[1] for r in results) - first_request:.2f} s "
        f"to {total_s:.2f} s",
        flush=True,
    )
    figures = {
        "clients": len(results),
        "clients_ok": sum(1 for r in results if r[2]),
        "upstream_ratio": round(upstream / size, 3),
        "ttfb_max_s": round(max(ttfbs), 3) if ttfbs else None,
        "ttfb_median_s": round(statistics.median(ttfbs), 3) if ttfbs else None,
        "time_ratio": round(total_s / alone_s, 3),
        "total_s": round(total_s, 2),
        "item_complete_s": round(item_complete_at - start_at, 2),
        "download_ratio": round((item_complete_at - start_at) / alone_s, 3),
        "origin_alone_s": round(alone_s, 2),
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
