"""A private PostgreSQL cluster in a temporary directory (tests, demo, benchmarks).

Kit, not shipped code: the academy's real database is the academy's own
PostgreSQL server (docs/academy.md). This starts one with the Debian
package's binaries (``/usr/lib/postgresql/<version>/bin``):

* ``initdb`` into ``<dir>/data``, then ``pg_ctl start`` with
  ``listen_addresses = ''``: no TCP at all, only a Unix socket in ``<dir>``;
* as an unprivileged user when we are root (PostgreSQL refuses to run as
  root): the ``postgres`` account the Debian package creates, else
  ``nobody``; the directory is handed over to that user (mode 0700), so no
  other account can reach the socket or the files;
* ``fsync`` and ``synchronous_commit`` left at their defaults (on): what is
  measured and tested is what a real deployment does.

``stop()`` (or leaving the ``with`` block) stops it and removes the directory.
``restart(mode)`` is ``pg_ctl restart -m fast|immediate`` for the fault tests.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from gateway.errors import StoreError

PG_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "academy"
SOCKET_PORT = 5432  # only names the socket file (.s.PGSQL.5432): nothing listens on TCP


def postgres_bin_dir() -> Path:
    """The newest installed ``/usr/lib/postgresql/<version>/bin`` that has initdb."""
    versions = []
    if PG_ROOT.is_dir():
        for child in PG_ROOT.iterdir():
            if child.name.isdigit() and (child / "bin" / "initdb").exists():
                versions.append(int(child.name))
    if not versions:
        raise StoreError(
            "PostgreSQL is not installed: run `sudo apt-get install postgresql` "
            f"(no {PG_ROOT}/<version>/bin/initdb found)"
        )
    return PG_ROOT / str(max(versions)) / "bin"


def _run_as() -> str | None:
    """The account to run PostgreSQL as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise StoreError("running as root and neither 'postgres' nor 'nobody' exists")


class PostgresCluster:
    """One private cluster: ``with PostgresCluster() as pg: pg.dsn(...)``."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self._base_dir = base_dir
        self.directory: Path | None = None
        self.bin_dir = postgres_bin_dir()
        self.user = _run_as()

    @property
    def socket_dir(self) -> Path:
        if self.directory is None:
            raise StoreError("the PostgreSQL cluster is not started")
        return self.directory

    @property
    def data_dir(self) -> Path:
        return self.socket_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.socket_dir / "postgres.log"

    def dsn(self, database: str = "postgres") -> str:
        """A libpq/asyncpg URL reaching the cluster through its socket."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}&port={SOCKET_PORT}"

    def _command(self, *argv: str) -> list[str]:
        if self.user is None:
            return list(argv)
        return ["runuser", "-u", self.user, "--", *argv]

    def _run(self, *argv: str, timeout_s: float = 120) -> None:
        result = subprocess.run(
            self._command(*argv),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd="/",
        )
        if result.returncode != 0:
            tail = ""
            with contextlib.suppress(OSError):
                tail = self.log_file.read_text()[-2000:]
            raise StoreError(
                f"{Path(argv[0]).name} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{tail}"
            )

    def start(self) -> None:
        """initdb (first time) and start; returns once it accepts connections."""
        if self.directory is None:
            # Short path: a Unix socket path must stay under 108 bytes.
            self.directory = Path(
                tempfile.mkdtemp(prefix="academy-pg-", dir=self._base_dir or "/tmp")
            )
            if self.user is not None:
                account = pwd.getpwnam(self.user)
                os.chown(self.directory, account.pw_uid, account.pw_gid)
            os.chmod(self.directory, 0o700)
            self._run(
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",  # only the socket, in a directory only its owner (and root) enters
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            )
        self._pg_ctl("start")

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' "
            f"-c port={SOCKET_PORT} -c max_connections=200"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            action,
            "-w",
            "-t",
            "120",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            options,
            *extra,
        )

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m fast|immediate`` (immediate = a crash: WAL recovery on start)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown shutdown mode {mode!r}")
        self._pg_ctl("restart", "-m", mode)

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        directory, self.directory = self.directory, None
        if directory is None:
            return
        self.directory = directory
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run(
                    str(self.bin_dir / "pg_ctl"),
                    "stop",
                    "-w",
                    "-m",
                    "fast",
                    "-D",
                    str(self.data_dir),
                )
        finally:
            self.directory = None
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
