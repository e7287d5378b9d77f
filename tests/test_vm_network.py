"""The image tests' VM network: QEMU options and the per-connection relay (no VM needed)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

from tests.image_vm import GUEST_SERVICES_ADDRESS, RELAY, Forward, VmNetwork


def echo_server() -> tuple[socket.socket, threading.Thread]:
    """A loopback server that echoes one connection upper-cased, then closes it."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            while data := connection.recv(65536):
                connection.sendall(data.upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


class TestVmNetwork:
    """The box reaches only the forwarded services; the test reaches the box's ports."""

    def test_nic_option(self) -> None:
        network = VmNetwork([Forward(8883, 40001)])
        ssh = network.expose(22)
        assert network.expose(22) == ssh  # one host port per box port
        option = network.nic_option()
        parts = option.split(",")
        assert parts[:3] == ["user", "model=virtio-net-pci", "restrict=on"]
        guestfwd = f"guestfwd=tcp:{GUEST_SERVICES_ADDRESS}:8883-cmd:{sys.executable} {RELAY}"
        assert f"{guestfwd} 127.0.0.1 40001" in parts
        assert f"hostfwd=tcp:127.0.0.1:{ssh}-:22" in parts

    def test_relay_carries_one_connection_both_ways(self) -> None:
        """What QEMU does per guest connection: the relay gets it as stdin and stdout."""
        server, thread = echo_server()
        guest, qemu_side = socket.socketpair()
        with server, guest, qemu_side:
            port = server.getsockname()[1]
            relay = subprocess.Popen(
                [sys.executable, str(RELAY), "127.0.0.1", str(port)],
                stdin=qemu_side, stdout=qemu_side, stderr=qemu_side,
            )  # fmt: skip
            qemu_side.close()
            guest.sendall(b"hello box")
            guest.shutdown(socket.SHUT_WR)  # the guest is done: passed on as a half close
            received = b""
            guest.settimeout(30)
            while chunk := guest.recv(65536):
                received += chunk
            assert received == b"HELLO BOX"
            assert relay.wait(timeout=30) == 0
            thread.join(timeout=30)

    def test_relay_closes_when_nothing_listens(self) -> None:
        with socket.create_server(("127.0.0.1", 0)) as probe:
            port = probe.getsockname()[1]
        guest, qemu_side = socket.socketpair()
        with guest, qemu_side:
            relay = subprocess.Popen(
                [sys.executable, str(RELAY), "127.0.0.1", str(port)],
                stdin=qemu_side, stdout=qemu_side, stderr=qemu_side,
            )  # fmt: skip
            qemu_side.close()
            guest.settimeout(30)
            assert guest.recv(1) == b""  # the guest sees the connection closed
            assert relay.wait(timeout=30) == 1
