"""Pure request rules for ``/content/<sha256>``: the hash, the Range header, headers.

Range policy (RFC 9110 section 14): one range is honoured (``bytes=a-b``,
``bytes=a-``, ``bytes=-n``); a list of several ranges is answered with the
whole item (200), which the RFC allows; a header that is not a valid
``bytes=`` ranges-specifier (or carries numbers longer than 19 digits) is a
400 naming the problem; a range that starts at or past the end is a 416.
"""

from __future__ import annotations

import mimetypes
import re
import urllib.parse
from dataclasses import dataclass

from gateway.errors import RejectedInput

_SHA256 = re.compile(r"[0-9a-f]{64}")
_RANGE_SPEC = re.compile(r"(\d{0,19})-(\d{0,19})")
MAX_RANGE_HEADER = 1024

KIND_TYPES = {
    "apk": "application/vnd.android.package-archive",
    "os": "application/octet-stream",
}


def parse_sha256(text: str) -> str:
    """The lowercase hex digest in ``text``, or RejectedInput('bad_hash')."""
    digest = text.lower()
    if not _SHA256.fullmatch(digest):
        raise RejectedInput("bad_hash", "content is addressed by 64 hex digits of SHA-256")
    return digest


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` to ``end`` inclusive of an item of ``size`` bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


class RangeNotSatisfiable(Exception):
    """The range starts at or beyond the end of the item (HTTP 416)."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range to serve, or None for the whole item.

    Raises RejectedInput('bad_range') for a malformed header and
    RangeNotSatisfiable for a range outside the item.
    """
    if header is None:
        return None
    if len(header) > MAX_RANGE_HEADER:
        raise RejectedInput("bad_range", f"Range header longer than {MAX_RANGE_HEADER} characters")
    unit, sep, specs = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        raise RejectedInput("bad_range", "Range must be 'bytes=first-last'")
    parts = [p.strip() for p in specs.split(",")]
    parsed = []
    for part in parts:
        match = _RANGE_SPEC.fullmatch(part)
        if match is None or match.group(1) == match.group(2) == "":
            raise RejectedInput("bad_range", f"malformed byte range {part[:40]!r}")
        first = int(match.group(1)) if match.group(1) else None
        last = int(match.group(2)) if match.group(2) else None
        if first is not None and last is not None and last < first:
            raise RejectedInput("bad_range", f"byte range {part!r} ends before it starts")
        parsed.append((first, last))
    if len(parsed) > 1:
        return None
    first, last = parsed[0]
    if first is None:  # suffix: the last ``last`` bytes
        assert last is not None
        if last == 0 or size == 0:
            raise RangeNotSatisfiable(f"bytes */{size}")
        return ByteRange(max(0, size - last), size - 1, size)
    if first >= size:
        raise RangeNotSatisfiable(f"bytes */{size}")
    end = size - 1 if last is None else min(last, size - 1)
    return ByteRange(first, end, size)


def content_type(kind: str, name: str) -> str:
    """A Content-Type from the item's kind, else its file name."""
    if kind in KIND_TYPES:
        return KIND_TYPES[kind]
    guessed, _ = mimetypes.guess_type(name) if name else (None, None)
    return guessed or "application/octet-stream"


def content_disposition(name: str) -> str | None:
    """``attachment`` with the file name (ASCII fallback plus RFC 6266 ``filename*``)."""
    if not name:
        return None
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    quoted = urllib.parse.quote(name, safe="")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quoted}"


def etag(sha256: str) -> str:
    return f'"{sha256}"'


def etag_matches(header: str | None, sha256: str) -> bool:
    """Whether an If-None-Match / If-Range value names this item (strong comparison)."""
    if header is None:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag(sha256) in tags
