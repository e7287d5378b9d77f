"""A wall clock tests can move under a running process: libfaketime with an offset file.

``MovableWallClock(folder).env()`` is the environment that preloads
libfaketime (Debian package ``faketime``) into a subprocess; ``jump(seconds)``
then moves that process's wall clock (``time.time``) by ``seconds`` from the
real time, at once and as often as wanted (FAKETIME_NO_CACHE). The monotonic
clock is left alone (FAKETIME_DONT_FAKE_MONOTONIC), as on a box whose NTP
jumps. Known limit of libfaketime 0.9.10 in that mode: ``time.sleep`` fails
with EINVAL in the faked process (asyncio's timers are not affected).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

NO_FAKETIME = "libfaketime is not installed (Debian package faketime; ./dev test installs it)"


def libfaketime() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    found += sorted(glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    return found[0] if found else None


class MovableWallClock:
    """The offset file and the environment of one faked process."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "faketime-offset"
        self.offset_s = 0
        self.jump(0)

    def env(self) -> dict[str, str]:
        library = libfaketime()
        if library is None:
            raise RuntimeError(NO_FAKETIME)
        return {
            "LD_PRELOAD": library,
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def jump(self, offset_s: int) -> None:
        """From now on the process's wall clock reads real time + ``offset_s``."""
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(f"{offset_s:+d}\n")
        os.replace(temporary, self.path)  # never a half-written offset
        self.offset_s = offset_s
