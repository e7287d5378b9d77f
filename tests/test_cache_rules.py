"""The cache's pure decisions: hashes, ranges, headers, budget, eviction, manifests."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from aiohttp import ETag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.cache.eviction import Resident, plan_admission
from gateway.cache.manifest import parse_manifest, sign_manifest, verify_envelope
from gateway.cache.offpeak import in_windows, parse_windows
from gateway.cache.rules import (
    ByteRange,
    RangeNotSatisfiable,
    byte_range,
    content_disposition,
    content_type,
    not_modified,
    parse_sha256,
    range_applies,
)
from gateway.errors import ConfigError, RejectedInput
from gateway.pacing import TokenBucket
from gateway.signed import load_public_keys

SHA = hashlib.sha256(b"x").hexdigest()


class TestHashInPath:
    """Only 64 hex digits name an item; anything else is refused."""

    def test_upper_case_is_normalised(self):
        assert parse_sha256(SHA.upper()) == SHA

    @pytest.mark.parametrize(
        "text", ["", "abc", SHA + "0", "../" + SHA[3:], SHA[:63] + "g", "..%2F..%2Fetc%2Fpasswd"]
    )
    def test_bad_hashes_are_rejected(self, text):
        with pytest.raises(RejectedInput) as info:
            parse_sha256(text)
        assert info.value.reason == "bad_hash"


class TestRange:
    """aiohttp's parsed Range (a slice): one range honoured, outside the item is 416."""

    @pytest.mark.parametrize(
        ("requested", "expected"),
        [
            (slice(None, None), None),  # no Range header
            (slice(0, 100), ByteRange(0, 99, 1000)),  # bytes=0-99
            (slice(500, None), ByteRange(500, 999, 1000)),  # bytes=500-
            (slice(-100, None), ByteRange(900, 999, 1000)),  # bytes=-100
            (slice(-5000, None), ByteRange(0, 999, 1000)),  # bytes=-5000
            (slice(10, 10**17), ByteRange(10, 999, 1000)),  # bytes=10-99999999999999999
        ],
    )
    def test_ranges_to_serve(self, requested, expected):
        assert byte_range(requested, 1000) == expected

    @pytest.mark.parametrize(
        "requested", [slice(1000, None), slice(5000, 6001), slice(10**50, None)]
    )
    def test_ranges_outside_the_item_are_not_satisfiable(self, requested):
        with pytest.raises(RangeNotSatisfiable, match=r"bytes \*/1000"):
            byte_range(requested, 1000)

    def test_an_empty_item_has_no_range(self):
        with pytest.raises(RangeNotSatisfiable):
            byte_range(slice(-10, None), 0)


class TestItemHeaders:
    """Content-Type from the kind or name; Content-Disposition carries the file name."""

    def test_apk_kind_gives_android_type(self):
        assert content_type("apk", "x.bin") == "application/vnd.android.package-archive"

    def test_name_gives_type_else_octet_stream(self):
        assert content_type("content", "lesson.pdf") == "application/pdf"
        assert content_type("", "") == "application/octet-stream"

    def test_disposition_quotes_and_encodes_the_name(self):
        assert content_disposition("") is None
        value = content_disposition('cours "été".pdf')
        assert value is not None
        assert value.startswith('attachment; filename="cours __t__.pdf"')
        assert "filename*=UTF-8''cours%20%22%C3%A9t%C3%A9%22.pdf" in value

    def test_if_none_match_compares_weakly(self):
        assert not_modified((ETag(value=SHA),), SHA)
        assert not_modified((ETag(value="other"), ETag(value=SHA)), SHA)
        assert not_modified((ETag(value="*"),), SHA)
        assert not_modified((ETag(value=SHA, is_weak=True),), SHA)
        assert not not_modified((ETag(value="other"),), SHA)
        assert not not_modified(None, SHA)

    def test_if_range_needs_the_strong_etag(self):
        assert range_applies(None, SHA)
        assert range_applies(f'"{SHA}"', SHA)
        assert not range_applies(f'W/"{SHA}"', SHA)
        assert not range_applies("Wed, 21 Oct 2015 07:28:00 GMT", SHA)


class TestUplinkBudget:
    """The token bucket paces by reservation; windows wrap past midnight."""

    def test_bucket_allows_the_burst_then_paces(self):
        bucket = TokenBucket(1000, burst=1000, now=0.0)
        assert bucket.take(1000, now=0.0) == 0.0
        assert bucket.take(500, now=0.0) == pytest.approx(0.5)
        assert bucket.take(500, now=0.0) == pytest.approx(1.0)
        assert bucket.take(100, now=10.0) == 0.0

    def test_zero_rate_is_unlimited(self):
        assert TokenBucket(0).take(10**9, now=0.0) == 0.0

    def test_windows(self):
        night = parse_windows(("22:00-06:00",))
        assert in_windows(night, 23 * 60)
        assert in_windows(night, 5 * 60 + 59)
        assert not in_windows(night, 6 * 60)
        assert in_windows(parse_windows(("00:00-24:00",)), 12 * 60)
        assert not in_windows((), 12 * 60)

    def test_bad_window_names_the_key(self):
        with pytest.raises(ConfigError, match=r"cache.offpeak_windows: '25:00-06:00'"):
            parse_windows(("25:00-06:00",))


class TestEviction:
    """Unpinned items leave least recently used first; pinned never; too large is refused."""

    residents = [
        Resident("old", 100, pinned=False, last_access=1.0),
        Resident("pinned-oldest", 100, pinned=True, last_access=0.0),
        Resident("newer", 100, pinned=False, last_access=5.0),
    ]

    def admit(self, size, used=300, quota=400, free=10_000, floor=0):
        return plan_admission(
            size,
            self.residents,
            used_bytes=used,
            quota_bytes=quota,
            free_bytes=free,
            min_free_bytes=floor,
        )

    def test_fits_without_eviction(self):
        assert self.admit(100).evict == ()

    def test_lru_unpinned_first(self):
        assert self.admit(150).evict == ("old",)
        assert self.admit(250).evict == ("old", "newer")

    def test_free_space_floor_also_evicts(self):
        assert self.admit(50, free=1000, floor=990).evict == ("old",)

    def test_pinned_items_are_never_evicted(self):
        verdict = self.admit(350)
        assert verdict.refused is not None and "short of the cache quota" in verdict.refused

    def test_larger_than_quota_is_refused_with_reason(self):
        verdict = self.admit(401)
        assert verdict.refused == "item of 401 bytes is larger than the cache quota of 400 bytes"


def _keys():
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key_id = base64.b64encode(raw).decode()
    return private, key_id, load_public_keys({key_id: key_id})


def _body(**overrides):
    body = {
        "type": "cache_manifest",
        "serial": 3,
        "issued_at": 1_764_000_000,
        "items": [
            {
                "sha256": SHA,
                "size": 1,
                "urls": ["http://o/x"],
                "name": "x.apk",
                "kind": "apk",
                "version": "1.0",
            }
        ],
    }
    body.update(overrides)
    return body


class TestManifest:
    """A manifest is accepted only when signed by an academy key and well formed."""

    def test_signed_manifest_parses(self):
        private, key_id, keys = _keys()
        manifest = parse_manifest(verify_envelope(sign_manifest(_body(), private, key_id), keys))
        assert manifest.serial == 3
        [item] = manifest.items
        assert (item.sha256, item.size, item.name, item.urls) == (SHA, 1, "x.apk", ("http://o/x",))

    def test_forged_signature_is_rejected(self):
        private, key_id, keys = _keys()
        envelope = json.loads(sign_manifest(_body(), private, key_id))
        envelope["payload"] = base64.b64encode(json.dumps(_body(serial=4)).encode()).decode()
        with pytest.raises(RejectedInput) as info:
            verify_envelope(json.dumps(envelope).encode(), keys)
        assert info.value.reason == "bad_signature"

    def test_unknown_key_is_rejected(self):
        private, key_id, _ = _keys()
        _, _, other_keys = _keys()
        with pytest.raises(RejectedInput) as info:
            verify_envelope(sign_manifest(_body(), private, key_id), other_keys)
        assert info.value.reason == "unknown_key"

    @pytest.mark.parametrize(
        ("items", "field"),
        [
            ([{"sha256": "abc", "size": 1, "urls": ["http://o"]}], "items[0].sha256"),
            ([{"sha256": SHA, "size": 0, "urls": ["http://o"]}], "items[0].size"),
            ([{"sha256": SHA, "size": 1, "urls": ["file:///etc"]}], "items[0].urls"),
            ([{"sha256": SHA, "size": 1, "urls": ["http://o"], "name": "../x"}], "items[0].name"),
        ],
    )
    def test_bad_fields_are_named(self, items, field):
        with pytest.raises(RejectedInput, match=field.replace("[", r"\[").replace("]", r"\]")):
            parse_manifest(json.dumps(_body(items=items)).encode())

    def test_garbage_envelope_is_rejected(self):
        with pytest.raises(RejectedInput) as info:
            verify_envelope(b"\xff not json", {})
        assert info.value.reason == "not_json"
