"""A real, small filesystem that tests fill up: a tmpfs mounted on a test's folder.

Mounting needs root (CI and the lab machines run the tests as root); callers
skip with :data:`CANNOT_MOUNT` when :func:`can_mount` is false. ``fill``
writes a filler file until the filesystem refuses (ENOSPC), leaving
``leave_bytes`` free at most; deleting the returned file gives the space back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

CANNOT_MOUNT = "mounting a tmpfs needs root and mount(8); run the tests as root (CI does)"


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def small_tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size_bytes`` on ``path`` (created) for the block's duration."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def fill(path: Path, leave_bytes: int = 0, name: str = "filler") -> Path:
    """Write ``path/name`` until at most ``leave_bytes`` stay free; return the file."""
    filler = path / name
    with filler.open("ab", buffering=0) as out:
        while True:
            room = free_bytes(path) - leave_bytes
            if room <= 0:
                break
            try:
                if not out.write(b"\1" * min(room, 1 << 20)):
                    break
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler
