"""The README's "Deploying on a box", run as written, then used like a school would.

The ```sh blocks of that README section run as they are, with ``bash -e``,
on a scratch root (the blocks' ``ROOT`` variable) and from a fresh copy of
the repository; nothing outside the scratch directory is written:

- the host's ``/etc`` is replaced, in a private mount namespace, by a copy,
  so the service user the steps create exists only there;
- ``pip install .`` installs the gateway into the fresh venv; its
  dependencies are found, already resolved, in this checkout's ``.venv``
  (``PYTHONPATH``), so nothing is downloaded but the build backend;
- systemd is stood in for: the ``systemctl`` lines are checked word for word,
  then the units the steps installed are started the way systemd would
  (their ``ExecStartPre`` and ``ExecStart`` as their ``User=``, paths under
  ``ROOT``), and the reload path unit's job (SIGHUP to Mosquitto when the ACL
  or CRL changes) is done by a watcher thread.

Then, as a school and a foreign implementer would: a stand-in academy
broker with mTLS signs nothing but the gateway's CSR (openssl); a tablet
enrolls with curl and openssl only; the academy CLI sends it a command; the
operator revokes it and checks ``status``. When the README and the code
drift apart, a step fails here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest

from gateway.lab.mosquitto import MosquittoProcess, free_port
from gateway.security.tls import client_context

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SCHOOL = "ecole-deploy"
GATEWAY = "gw-deploy-1"
SYSTEMCTL_LINES = [
    "systemctl daemon-reload",
    "systemctl enable --now mosquitto.service gateway.service school-gateway-broker-reload.path",
]
BOX_PATHS = ("/opt/school-gateway", "/etc/school-gateway", "/var/lib/school-gateway")
BOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEPS = "deps"  # the checkout's resolved dependencies, as the box's steps see them
TOOLS = ("unshare", "nsenter", "setpriv", "runuser", "useradd", "curl", "openssl", "mosquitto")

ACADEMY_BROKER = """\
# Stand-in academy broker: mTLS for gateways, plain loopback for the academy's own tools.
per_listener_settings false
allow_anonymous true
persistence false
log_dest stdout
log_type error
log_type warning
user root
listener {{port}} 127.0.0.1
listener {tls_port} 127.0.0.1
cafile {ca}
certfile {cert}
keyfile {key}
require_certificate true
use_identity_as_username true
"""


def readme_blocks() -> list[str]:
    """The ```sh blocks of the README section "Deploying on a box", in order."""
    text = README.read_text()
    start = text.index("## Deploying on a box")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```sh\n(.*?)```", text[start:end], re.S)


def attempt(command: list[str] | str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command (a string goes to bash -c) and return what happened."""
    argv = ["bash", "-euo", "pipefail", "-c", command] if isinstance(command, str) else command
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        argv, capture_output=True, text=True, timeout=300, check=False, **kwargs
    )


def run(command: list[str] | str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, fail the test with its output if it fails."""
    result = attempt(command, **kwargs)
    assert result.returncode == 0, (
        f"{command!r} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result


@dataclass
class Box:
    """The scratch box: its root, its private /etc, the daemons the stand-in started."""

    scratch: Path
    holder: subprocess.Popen[str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.scratch / "root"

    @property
    def config(self) -> Path:
        return self.root / "etc/school-gateway/gateway.toml"

    @property
    def state(self) -> Path:
        return self.root / "var/lib/school-gateway"

    @property
    def venv(self) -> Path:
        return self.root / "opt/school-gateway"

    def inside(self, argv: list[str], cwd: Path | None = None) -> list[str]:
        """``argv`` run in the box's mount namespace (its /etc), in ``cwd`` (default ROOT)."""
        mount = f"--mount=/proc/{self.holder.pid}/ns/mnt"
        return ["nsenter", mount, f"--wd={cwd or self.root}", "--", *argv]

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of the steps: this checkout's resolved dependencies, offline."""
        # The resolved dependencies, bound under the scratch dir in the box's namespace:
        # the service user cannot traverse the checkout's parents when they are 0700
        # (a CI clone in a mktemp dir); root outside the namespace reads them in place.
        deps = f"{self.scratch / DEPS}:{sysconfig.get_paths()['purelib']}"
        return {
            **os.environ,
            "PATH": BOX_PATH,  # Debian's python3, not a developer's (pyenv...)
            "PYTHONPATH": deps,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            **extra,
        }

    def on_box(self, path: str) -> str:
        for box_path in BOX_PATHS:
            path = path.replace(box_path, str(self.root) + box_path)
        return path

    def operator(self, line: str) -> subprocess.CompletedProcess[str]:
        """An operator's README line, with the scratch root's command and config."""
        line = line.split("  #", maxsplit=1)[0].strip()
        line = line.replace("-- school-gateway ", f"-- {self.venv}/bin/school-gateway ", 1)
        return run(self.inside(["bash", "-c", f"{line} --config {self.config}"]), env=self.env())


@pytest.fixture
def box() -> Iterator[Box]:
    if os.geteuid() != 0:
        pytest.skip("the deployment steps run as root (useradd, runuser, chown)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing {missing}")
    # Not under pytest's tmp_path (mode 0700): the service user must reach the root.
    scratch = Path(tempfile.mkdtemp(prefix="deploy-box-"))
    scratch.chmod(0o755)
    shutil.copytree("/etc", scratch / "etc", symlinks=True)
    (scratch / DEPS).mkdir(mode=0o755)
    purelib = sysconfig.get_paths()["purelib"]
    holder = subprocess.Popen(
        [
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            f"mount --bind {scratch / 'etc'} /etc && mount --bind {purelib} {scratch / DEPS}"
            " && echo ready && exec sleep 3600",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    if holder.stdout.readline().strip() != "ready":
        holder.wait(10)
        holder.stdout.close()
        shutil.rmtree(scratch)
        pytest.skip("no private mount namespace here (unshare --mount needs CAP_SYS_ADMIN)")
    made = Box(scratch, holder)
    try:
        yield made
    finally:
        for process in reversed(made.processes):
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        holder.kill()
        holder.wait()
        holder.stdout.close()
        shutil.rmtree(scratch)


def clone(destination: Path) -> Path:
    """A fresh copy of the repository, as a clone would have it."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "work", "out"
    )
    shutil.copytree(REPO, destination, ignore=ignore)
    return destination


def openssl_ca(directory: Path) -> tuple[Path, Path]:
    """The academy's CA, made with openssl as an academy would."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "ca.key", directory / "ca.pem"
    run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=academy-ca", "-days", "30"]
    )  # fmt: skip
    return key, cert


def openssl_sign(ca: tuple[Path, Path], csr: Path, out: Path, extensions: str) -> Path:
    """Sign ``csr`` with the academy CA."""
    ext = out.with_suffix(".ext")
    ext.write_text(extensions + "\n")
    run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
         "-CAcreateserial", "-out", str(out), "-days", "30", "-extfile", str(ext)]
    )  # fmt: skip
    return out


async def start_academy(directory: Path) -> tuple[MosquittoProcess, tuple[Path, Path], int]:
    """The stand-in academy broker with TLS and its CA; returns (broker, ca, tls port)."""
    ca = openssl_ca(directory)
    key, csr = directory / "server.key", directory / "server.csr"
    run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost"]
    )  # fmt: skip
    cert = openssl_sign(
        ca, csr, directory / "server.crt", "subjectAltName=IP:127.0.0.1,DNS:localhost"
    )
    tls_port = free_port()
    text = ACADEMY_BROKER.format(tls_port=tls_port, ca=ca[1], cert=cert, key=key)
    broker = MosquittoProcess(directory / "broker", text)
    await broker.start()
    return broker, ca, tls_port


def provisioning_file(
    box: Box, *, academy_port: int, academy_key: str
) -> tuple[Path, dict[str, int]]:
    """What the academy would give the school, on loopback ports of this test."""
    ports = {name: free_port() for name in ("school", "tls", "http", "enrollment")}
    path = box.scratch / "school-gateway.toml"
    path.write_text(f"""\
[gateway]
school_id = "{SCHOOL}"
gateway_id = "{GATEWAY}"
state_dir = "{box.state}"

[academy_broker]
host = "127.0.0.1"
port = {academy_port}
ca_file = "{box.root}/etc/school-gateway/academy-ca.pem"

[school_broker]
port = {ports["school"]}
tls_host = "127.0.0.1"
tls_port = {ports["tls"]}
reload_command = ["/bin/true"]

[http]
host = "127.0.0.1"
port = {ports["http"]}

[enrollment]
host = "127.0.0.1"
port = {ports["enrollment"]}

[commands.academy_keys]
"academy-1" = "{academy_key}"
""")
    return path, ports


def unit_values(text: str, key: str) -> list[str]:
    return [
        line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith(f"{key}=")
    ]


def wait_for_port(port: int, within_s: float, process: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args} exited {process.returncode}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"nothing listens on {port} after {within_s} s")


class ReloadPathUnit(threading.Thread):
    """school-gateway-broker-reload.path: SIGHUP to Mosquitto when a watched file changes."""

    def __init__(self, files: list[Path], pid: int) -> None:
        super().__init__(daemon=True, name="reload-path-unit")
        self.files = files
        self.pid = pid
        self.stopped = threading.Event()

    def stamps(self) -> list[float]:
        return [f.stat().st_mtime_ns if f.exists() else 0 for f in self.files]

    def run(self) -> None:
        seen = self.stamps()
        while not self.stopped.wait(0.05):
            now = self.stamps()
            if now != seen:
                seen = now
                try:
                    os.kill(self.pid, signal.SIGHUP)
                except ProcessLookupError:
                    return


def start_like_systemd(box: Box, log: Path) -> ReloadPathUnit:
    """Start the installed units as systemd would: Mosquitto (drop-in), then the gateway."""
    units = box.root / "etc/systemd/system"
    dropin = (units / "mosquitto.service.d/school-gateway.conf").read_text()
    gateway_unit = (units / "gateway.service").read_text()
    as_user = ["setpriv", "--reuid", "school-gateway", "--regid", "school-gateway", "--init-groups"]
    assert unit_values(dropin, "User") == ["school-gateway"]
    assert unit_values(gateway_unit, "User") == ["school-gateway"]
    for pre in [line for line in unit_values(dropin, "ExecStartPre") if line]:
        run(box.inside([*as_user, *box.on_box(pre).split()]), env=box.env())
    (mosquitto,) = [line for line in unit_values(dropin, "ExecStart") if line]
    with log.open("ab") as out:
        broker = subprocess.Popen(
            box.inside([*as_user, *box.on_box(mosquitto).split()]),
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    box.processes.append(broker)
    reload_unit = (units / "school-gateway-broker-reload.path").read_text()
    watched = [Path(box.on_box(p)) for p in unit_values(reload_unit, "PathChanged")]
    watcher = ReloadPathUnit(watched, broker.pid)
    watcher.start()
    (gateway_start,) = unit_values(gateway_unit, "ExecStart")
    with log.open("ab") as out:
        daemon = subprocess.Popen(
            box.inside([*as_user, *box.on_box(gateway_start).split()]),
            stdout=out, stderr=subprocess.STDOUT,
            env=box.env(PYTHONUNBUFFERED="1"),
        )  # fmt: skip
    box.processes.append(daemon)
    return watcher


def academy_sees_gateway_online(port: int, within_s: float) -> bool:
    """The gateway's retained presence on the academy broker says online."""
    result = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-C", "1",
         "-W", str(int(within_s)), "-t", f"schools/{SCHOOL}/gateways/{GATEWAY}/status"],
        capture_output=True, text=True, timeout=within_s + 10, check=False,
    )  # fmt: skip
    return result.returncode == 0 and json.loads(result.stdout or "{}").get("online") is True


@pytest.mark.slow
async def test_readme_deployment_then_enroll_command_revoke_status(
    box: Box, tmp_path: Path
) -> None:
    install, start, operate = readme_blocks()
    academy_dir = tmp_path / "academy"
    broker, academy_ca, academy_tls_port = await start_academy(academy_dir)
    try:
        keygen = run(
            [sys.executable, "-m", "gateway", "academy", "keygen", "--out", str(academy_dir),
             "--key-id", "academy-1"]
        )  # fmt: skip
        public = re.search(r"public key:\s+(\S+)", keygen.stdout)
        assert public is not None
        provisioning, ports = provisioning_file(
            box, academy_port=academy_tls_port, academy_key=public.group(1)
        )
        source = clone(box.scratch / "clone")
        env = box.env(
            ROOT=str(box.root), PROVISIONING=str(provisioning), ACADEMY_CA=str(academy_ca[1])
        )

        # Step 3, as written.
        run(box.inside(["bash", "-euo", "pipefail", "-c", install], source), env=env)
        generated = (box.state / "mosquitto/mosquitto.conf").read_text()
        assert "user school-gateway" in generated

        # Step 4: the academy signs the gateway's CSR; the block installs it.
        signed = openssl_sign(
            academy_ca,
            box.state / "pki/gateway.csr",
            box.scratch / "academy-client.crt",
            "extendedKeyUsage=clientAuth",
        )
        lines = [line for line in start.strip().splitlines()]
        systemctl = [line for line in lines if line.startswith("systemctl ")]
        assert systemctl == SYSTEMCTL_LINES
        shell = "\n".join(line for line in lines if not line.startswith("systemctl "))
        run(
            box.inside(["bash", "-euo", "pipefail", "-c", shell], source),
            env={**env, "ACADEMY_CERT": str(signed)},
        )
        log = box.scratch / "daemons.log"
        watcher = start_like_systemd(box, log)
        wait_for_port(ports["enrollment"], 60, box.processes[-1])
        assert academy_sees_gateway_online(broker.port, 30), log.read_text()[-3000:]

        # Step 5: an enrollment token, redeemed with curl and openssl.
        enroll_line, status_line = [
            line for line in operate.strip().splitlines() if line.startswith("runuser")
        ]
        token_output = box.operator(enroll_line).stdout
        url = re.search(
            r"https://\S+/enroll\?token=([^&\s]+)&ca_sha256=([0-9a-f]{64})", token_output
        )
        assert url is not None, token_output
        token, ca_sha256 = url.groups()
        tablet = tmp_path / "tablet"
        tablet.mkdir()
        base = f"https://127.0.0.1:{ports['enrollment']}"
        run(
            [
                "curl",
                "-sS",
                "--fail",
                "--insecure",
                "-o",
                str(tablet / "ca.pem"),
                f"{base}/enroll/ca.pem",
            ]
        )
        der_hash = run(f"openssl x509 -in {tablet / 'ca.pem'} -outform DER | sha256sum").stdout
        assert der_hash.split()[0] == ca_sha256  # trust on first use, checked by the QR code
        run(
            ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(tablet / "tablet.key"), "-out", str(tablet / "tablet.csr"),
             "-subj", "/CN=tablet"]
        )  # fmt: skip
        (tablet / "body.json").write_text(
            json.dumps({"token": token, "csr_pem": (tablet / "tablet.csr").read_text()})
        )
        answer = json.loads(
            run(
                ["curl", "-sS", "--fail-with-body", "--cacert", str(tablet / "ca.pem"),
                 "-H", "Content-Type: application/json", "--data", f"@{tablet / 'body.json'}",
                 f"{base}/enroll"]
            ).stdout
        )  # fmt: skip
        device = answer["device_id"]
        assert answer["group"] == "class-01"
        (tablet / "tablet.crt").write_text(answer["certificate_pem"])
        context = client_context(tablet / "ca.pem", tablet / "tablet.crt", tablet / "tablet.key")

        # The tablet comes online; the academy CLI sends it a command.
        async with aiomqtt.Client(
            "127.0.0.1", ports["tls"], identifier=device, tls_context=context, timeout=10
        ) as client:
            await client.subscribe(f"tablets/{device}/commands", qos=1)
            await client.publish(
                f"tablets/{device}/status", b'{"online": true}', qos=1, retain=True
            )
            run(
                [sys.executable, "-m", "gateway", "academy", "send",
                 "--broker", f"127.0.0.1:{broker.port}", "--school", SCHOOL,
                 "--key", str(academy_dir / "academy-ed25519.pem"), "--key-id", "academy-1",
                 "--action", "lock", "--device", device, "--id", "cmd-deploy-1"]
            )  # fmt: skip
            async with asyncio_timeout(30):
                async for message in client.messages:
                    delivered = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                    break
        assert delivered["command_id"] == "cmd-deploy-1"
        assert delivered["action"] == "lock"

        # Revoked: the revoke line of docs/security.md; the tablet is out.
        revoke = box.operator(f"runuser -u school-gateway -- school-gateway enroll revoke {device}")
        assert "broker reloaded the CRL and ACL: yes" in revoke.stdout
        refused = attempt(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(ports["tls"]),
             "--cafile", str(tablet / "ca.pem"), "--cert", str(tablet / "tablet.crt"),
             "--key", str(tablet / "tablet.key"), "-t", f"tablets/{device}/state", "-m", "{}",
             "-q", "1"]
        )  # fmt: skip
        assert refused.returncode != 0
        listing = box.operator("runuser -u school-gateway -- school-gateway enroll list").stdout
        assert re.search(rf"{device}\s+class-01\s+enrolled \S+\s+REVOKED", listing), listing

        # status, as the README says.
        status = box.operator(status_line).stdout
        assert f"gateway {GATEWAY} (school {SCHOOL})" in status
        assert "academy connected" in status
        assert "cmd-deploy-1 lock: 1 targets" in status, status
        assert "{'" not in status  # figures, not a Python dict
        watcher.stopped.set()
    finally:
        await broker.stop()


def asyncio_timeout(seconds: float):  # type: ignore[no-untyped-def]
    import asyncio

    return asyncio.timeout(seconds)
