"""The appliance's OS integration: systemd notifications and the mDNS announcement.

systemd's protocol is tested against a real AF_UNIX datagram socket. The mDNS
announcement is browsed with zeroconf over multicast on loopback inside a
private network namespace (``unshare --net``), so no packet can leave the
machine; without the privilege for that, only the pure part is tested.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.appliance.discovery import SERVICE_TYPE, build_service_info, gateway_properties
from gateway.appliance.notify import (
    notify,
    notify_address,
    run_watchdog,
    watchdog_interval,
    watchdog_interval_from,
)


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting in the socket, without blocking."""
    received: list[bytes] = []
    while True:
        try:
            received.append(sock.recv(4096))
        except BlockingIOError:
            return received


def sent_while_loop_blocked(sock: socket.socket, seconds: float) -> list[bytes]:
    """Block the calling (event loop) thread; return what arrived meanwhile."""
    drain(sock)
    time.sleep(seconds)
    return drain(sock)


async def receive_until(sock: socket.socket, count: int, within: float = 5.0) -> list[bytes]:
    """Poll the socket until ``count`` datagrams arrived or the deadline passed."""
    received: list[bytes] = []
    deadline = time.monotonic() + within
    while len(received) < count and time.monotonic() < deadline:
        received.extend(drain(sock))
        await asyncio.sleep(0.005)
    return received


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A fake systemd: a datagram socket in tmp_path, named by NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield sock
    finally:
        sock.close()


class TestAddress:
    """NOTIFY_SOCKET parsing."""

    def test_unset_is_none(self) -> None:
        assert notify_address({}) is None
        assert notify_address({"NOTIFY_SOCKET": ""}) is None

    def test_path(self) -> None:
        assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"

    def test_abstract(self) -> None:
        assert notify_address({"NOTIFY_SOCKET": "@sd-notify"}) == "\0sd-notify"

    def test_unsupported_scheme_is_none(self) -> None:
        assert notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None


class TestWatchdogInterval:
    """WATCHDOG_USEC and WATCHDOG_PID handling."""

    def test_half_of_watchdog_usec(self) -> None:
        assert watchdog_interval_from({"WATCHDOG_USEC": "30000000"}, pid=1) == 15.0

    def test_unset_or_bad_is_none(self) -> None:
        assert watchdog_interval_from({}, pid=1) is None
        assert watchdog_interval_from({"WATCHDOG_USEC": "0"}, pid=1) is None
        assert watchdog_interval_from({"WATCHDOG_USEC": "soon"}, pid=1) is None

    def test_other_process_pid_is_none(self) -> None:
        env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "42"}
        assert watchdog_interval_from(env, pid=42) == 0.5
        assert watchdog_interval_from(env, pid=43) is None

    def test_reads_this_process_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("WATCHDOG_USEC", "4000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        assert watchdog_interval() == 2.0


class TestNotify:
    """Sending notifications to a fake systemd."""

    def test_without_socket_is_noop(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        assert notify("READY=1") is False

    def test_ready_reaches_socket(self, notify_socket: socket.socket) -> None:
        assert notify("READY=1") is True
        notify_socket.setblocking(True)
        notify_socket.settimeout(5)
        assert notify_socket.recv(4096) == b"READY=1"

    def test_abstract_socket(self, monkeypatch: pytest.MonkeyPatch) -> None:
        name = f"school-gateway-test-{os.getpid()}-{time.monotonic_ns()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind("\0" + name)
            sock.settimeout(5)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
            assert notify("STATUS=serving 3 tablets\nREADY=1") is True
            assert sock.recv(4096) == b"STATUS=serving 3 tablets\nREADY=1"

    def test_missing_socket_returns_false(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
        assert notify("READY=1") is False
        assert "systemd notify" in caplog.text


class TestRunWatchdog:
    """Periodic WATCHDOG=1 from the event loop."""

    async def test_pings_periodically(self, notify_socket: socket.socket) -> None:
        task = asyncio.create_task(run_watchdog(0.02))
        try:
            received = await receive_until(notify_socket, 3)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert len(received) >= 3
        assert set(received) == {b"WATCHDOG=1"}

    async def test_blocked_loop_sends_no_ping(self, notify_socket: socket.socket) -> None:
        interval = 0.02
        task = asyncio.create_task(run_watchdog(interval))
        try:
            assert len(await receive_until(notify_socket, 2)) >= 2
            # Block the loop thread for ten intervals: nothing may ping meanwhile.
            during_block = sent_while_loop_blocked(notify_socket, 10 * interval)
            # Once the loop runs again the pings resume.
            after_block = await receive_until(notify_socket, 1)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert during_block == []
        assert after_block[:1] == [b"WATCHDOG=1"]

    async def test_rejects_non_positive_interval(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            await run_watchdog(0)


# Runs inside a fresh network namespace whose only interface is loopback:
# announce with announce_until_cancelled, browse and resolve with a second
# zeroconf instance, cancel, and wait for the goodbye (Removed).
BROWSE_IN_NAMESPACE = """
import asyncio, json, subprocess, time
from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf
from gateway.appliance.discovery import SERVICE_TYPE, announce_until_cancelled, gateway_properties

NAME = "Ecole Jaures gateway"

async def main():
    props = gateway_properties(school_id="ecole-jaures", gateway_id="gw-1", broker_port=1883,
                               cache_url="http://127.0.0.1:8080/content/")
    announcer = asyncio.create_task(
        announce_until_cancelled(NAME, 8080, ["127.0.0.1"], props, interfaces=["127.0.0.1"]))
    browser_zc = AsyncZeroconf(interfaces=["127.0.0.1"])
    changes = []
    browser = AsyncServiceBrowser(browser_zc.zeroconf, [SERVICE_TYPE], handlers=[
        lambda zeroconf, service_type, name, state_change: changes.append(
            [name, state_change.name])])
    info = None
    deadline = time.monotonic() + 15
    while info is None and time.monotonic() < deadline:
        info = await browser_zc.async_get_service_info(
            SERVICE_TYPE, NAME + "." + SERVICE_TYPE, timeout=1000)
    found = None if info is None else {
        "port": info.port, "addresses": info.parsed_addresses(), "server": info.server,
        "properties": {k.decode(): v.decode() for k, v in info.properties.items()}}
    announcer.cancel()
    try:
        await announcer
    except asyncio.CancelledError:
        pass
    deadline = time.monotonic() + 15
    while [NAME + "." + SERVICE_TYPE, "Removed"] not in changes and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await browser.async_cancel()
    await browser_zc.async_close()
    print(json.dumps({"found": found, "changes": changes}))

for command in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "lo", "multicast", "on"],
                ["ip", "route", "add", "224.0.0.0/4", "dev", "lo"]):
    subprocess.run(command, check=True)
asyncio.run(main())
"""


def can_unshare_network() -> bool:
    """Whether this process may create a private network namespace with an ``ip`` tool."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        return False
    probe = subprocess.run([unshare, "--net", "true"], capture_output=True, check=False)
    return probe.returncode == 0


class TestDiscoveryRecords:
    """The DNS-SD records of a gateway announcement (no network)."""

    def test_service_info(self) -> None:
        props = gateway_properties(
            school_id="ecole-jaures",
            gateway_id="gw-1",
            broker_port=1883,
            cache_url="http://10.0.0.2:8080/content/",
        )
        info = build_service_info("Ecole Jaures gateway", 8080, ["10.0.0.2"], props)
        assert info.type == SERVICE_TYPE == "_school-gateway._tcp.local."
        assert info.name == "Ecole Jaures gateway._school-gateway._tcp.local."
        assert info.server == "ecole-jaures-gateway.local."
        assert info.port == 8080
        assert info.parsed_addresses() == ["10.0.0.2"]
        assert info.properties == {
            b"txtvers": b"1",
            b"school_id": b"ecole-jaures",
            b"gateway_id": b"gw-1",
            b"broker_port": b"1883",
            b"cache_url": b"http://10.0.0.2:8080/content/",
        }

    def test_limits_name_the_problem(self) -> None:
        with pytest.raises(ValueError, match="instance name"):
            build_service_info("x" * 64, 8080, ["10.0.0.2"], {})
        with pytest.raises(ValueError, match="port"):
            build_service_info("gw", 0, ["10.0.0.2"], {})
        with pytest.raises(ValueError, match="address"):
            build_service_info("gw", 8080, [], {})
        with pytest.raises(ValueError, match="cache_url"):
            build_service_info("gw", 8080, ["10.0.0.2"], {"cache_url": "x" * 300})


@pytest.mark.skipif(
    not can_unshare_network(), reason="needs unshare --net (root) and ip for a private netns"
)
class TestDiscoveryOnLoopback:
    """A zeroconf browser finds the announcement, then sees its goodbye."""

    def test_browse_resolve_and_goodbye(self) -> None:
        repo = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": str(repo)}
        result = subprocess.run(
            ["unshare", "--net", "--", sys.executable, "-c", BROWSE_IN_NAMESPACE],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["found"] == {
            "port": 8080,
            "addresses": ["127.0.0.1"],
            "server": "ecole-jaures-gateway.local.",
            "properties": {
                "txtvers": "1",
                "school_id": "ecole-jaures",
                "gateway_id": "gw-1",
                "broker_port": "1883",
                "cache_url": "http://127.0.0.1:8080/content/",
            },
        }
        name = "Ecole Jaures gateway._school-gateway._tcp.local."
        assert report["changes"][0] == [name, "Added"]
        assert report["changes"][-1] == [name, "Removed"]
