"""Pure request rules for ``/content/<sha256>``: the hash, the range to serve, headers.

aiohttp parses the Range header (``request.http_range``, a slice) and
If-None-Match (``request.if_none_match``, ETags); these rules decide on
the parsed values. Range policy (RFC 9110 section 14): one range is honoured
(``bytes=a-b``, ``bytes=a-``, ``bytes=-n``); a header aiohttp cannot parse
(several ranges, not ``bytes=``) is a 400 naming the problem; a range that
starts at or past the end is a 416.
"""

from __future__ import annotations

import mimetypes
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import ETag

from gateway.errors import RejectedInput

_SHA256 = re.compile(r"[0-9a-f]{64}")

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


def byte_range(requested: slice, size: int) -> ByteRange | None:
    """The one range to serve for aiohttp's ``request.http_range``, or None for the whole item.

    Raises RangeNotSatisfiable for a range outside the item.
    """
    if requested.start is None and requested.stop is None:
        return None
    start, stop, _ = requested.indices(size)
    if start >= stop:
        raise RangeNotSatisfiable(f"bytes */{size}")
    return ByteRange(start, stop - 1, size)


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


def not_modified(if_none_match: Iterable[ETag] | None, sha256: str) -> bool:
    """Whether If-None-Match (aiohttp's ``request.if_none_match``) names this item.

    Weak comparison, as RFC 9110 section 13.1.2 asks for If-None-Match.
    """
    return any(tag.value in (sha256, "*") for tag in if_none_match or ())


def range_applies(if_range: str | None, sha256: str) -> bool:
    """Whether a Range may be honoured given If-Range: absent, or this item's strong ETag.

    (aiohttp's ``request.if_range`` reads only the date form; an immutable item
    named by its hash has no date to compare, so a date never matches.)
    """
    return if_range is None or if_range.strip() == etag(sha256)
