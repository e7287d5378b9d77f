"""systemd notification protocol against a real AF_UNIX datagram socket."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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
