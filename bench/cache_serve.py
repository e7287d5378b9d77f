"""Warm-cache serving: the gateway vs nginx on the same file, same disk, same run.

A real gateway process holds a 64 MB item (fetched once from the lab
origin). 50 concurrent clients (in separate processes) download it over
and over for 20 s from the gateway's ``/content/<sha256>``, then for 20 s
from nginx (Debian package, started here on a free loopback port with a
generated config, ``sendfile on``) serving the very same file in the
gateway's cache directory. Last line JSON: gateway_mb_per_s,
nginx_mb_per_s, ratio (target >= 0.8).

    python bench/cache_serve.py [--size-mb 64] [--clients 50] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from cache_fanout import MB, make_blob, running_gateway

from gateway.lab.mosquitto import free_port
from gateway.lab.origin import Origin

NGINX_CONF = """\
daemon off;
user {user};
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    server {{
        listen 127.0.0.1:{port};
        location /content/ {{ alias {objects}/; default_type application/octet-stream; }}
    }}
}}
"""


async def _loop_client(session: aiohttp.ClientSession, url: str, until: float) -> int:
    received = 0
    while time.monotonic() < until:
        async with session.get(url) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{url} answered {resp.status}")
            while chunk := await resp.content.read(1 << 20):
                received += len(chunk)
    return received


async def _clients(url: str, count: int, seconds: float, go: Any) -> int:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.to_thread(go.wait)
        until = time.monotonic() + seconds
        return sum(await asyncio.gather(*(_loop_client(session, url, until) for _ in range(count))))


def client_worker(args: tuple[str, int, float, Any, Any, Any]) -> None:
    url, count, seconds, ready, go, out = args
    os.nice(5)  # the same for both servers: clients must not starve the server under test
    ready.put(os.getpid())
    out.put(asyncio.run(_clients(url, count, seconds, go)))


def load(url: str, clients: int, seconds: float, processes: int) -> float:
    """MB/s received by ``clients`` clients looping over ``url`` for ``seconds``."""
    ctx = multiprocessing.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    workers = []
    for i in range(processes):
        n = clients // processes + (1 if i < clients % processes else 0)
        worker = ctx.Process(target=client_worker, args=((url, n, seconds, ready, go, out),))
        worker.start()
        workers.append(worker)
    for _ in workers:
        ready.get()
    time.sleep(0.5)
    started = time.monotonic()
    go.set()
    total = sum(out.get() for _ in workers)
    elapsed = time.monotonic() - started
    for worker in workers:
        worker.join()
    return total / MB / elapsed


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if not found:
        raise SystemExit("nginx is not installed: apt-get install nginx-light (Debian package)")
    return found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    nginx = nginx_binary()
    size = args.size_mb * MB
    data = make_blob(size)
    sha = hashlib.sha256(data).hexdigest()
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    async with Origin() as origin:
        items = [
            {
                "sha256": sha,
                "size": size,
                "urls": [origin.add("item.img", data)],
                "name": "item.img",
                "kind": "os",
            }
        ]
        async with running_gateway(workdir, origin, items, {}) as base:
            url = f"{base}/content/{sha}"
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                warm = hashlib.sha256(await resp.read()).hexdigest()
            objects = workdir / "state" / "cache" / "objects"
            deadline = time.monotonic() + 30
            while not (objects / sha).exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("the item did not become complete")
                await asyncio.sleep(0.1)
            assert warm == sha
            gateway_mb_s = await asyncio.to_thread(
                load, url, args.clients, args.seconds, args.processes
            )
            print(f"gateway: {gateway_mb_s:.0f} MB/s", flush=True)

            nginx_dir = workdir / "nginx"
            (nginx_dir / "tmp").mkdir(parents=True)
            port = free_port()
            (nginx_dir / "nginx.conf").write_text(
                NGINX_CONF.format(
                    work=nginx_dir, port=port, objects=objects, user=getpass.getuser()
                )
            )
            process = await asyncio.create_subprocess_exec(
                nginx,
                "-c",
                str(nginx_dir / "nginx.conf"),
                "-p",
                str(nginx_dir),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                nginx_url = f"http://127.0.0.1:{port}/content/{sha}"
                async with aiohttp.ClientSession() as session:
                    deadline = time.monotonic() + 10
                    while True:
                        try:
                            async with session.head(nginx_url) as resp:
                                if resp.status == 200:
                                    break
                        except aiohttp.ClientError:
                            pass
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"nginx did not start; see {nginx_dir}")
                        await asyncio.sleep(0.1)
                nginx_mb_s = await asyncio.to_thread(
                    load, nginx_url, args.clients, args.seconds, args.processes
                )
            finally:
                process.terminate()
                await process.wait()
            print(f"nginx: {nginx_mb_s:.0f} MB/s", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    print(
        json.dumps(
            {
                "gateway_mb_per_s": round(gateway_mb_s, 1),
                "nginx_mb_per_s": round(nginx_mb_s, 1),
                "ratio": round(gateway_mb_s / nginx_mb_s, 3),
                "clients": args.clients,
                "seconds": args.seconds,
                "cpus": os.cpu_count(),
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
