"""State report validation (pure): good reports parse, bad ones name the field."""

from __future__ import annotations

import json

import pytest

from gateway.errors import RejectedInput
from gateway.sim.model import TabletModel
from gateway.state.report import (
    _checked_report,
    _fast_report,
    parse_presence,
    parse_state_report,
)
from gateway.state.shadow import canonical_json, report_json


def report(**changes: object) -> bytes:
    body = TabletModel.create("tab-0001", "class-01", seed=3).report(1_764_000_000.0)
    body.update(changes)
    return json.dumps(body).encode()


class TestGoodReports:
    """What the simulator sends is what the gateway accepts."""

    def test_simulated_report_parses(self):
        parsed = parse_state_report("tab-0001", report(), max_bytes=16384)
        assert parsed.device_id == "tab-0001"
        assert parsed.seq == 1
        assert parsed.group == "class-01"
        assert parsed.as_dict()["apps"] == json.loads(report())["apps"]

    def test_relayed_as_sent_without_an_invented_content(self):
        body = json.loads(report())
        body.pop("content", None)
        parsed = parse_state_report("tab-0001", json.dumps(body).encode(), max_bytes=16384)
        assert "content" not in parsed.as_dict()
        body["content"] = []
        parsed = parse_state_report("tab-0001", json.dumps(body).encode(), max_bytes=16384)
        assert parsed.as_dict()["content"] == []

    def test_presence(self):
        assert parse_presence("tab-0001", b'{"online": false}').online is False


class TestBadReports:
    """Every kind of bad input is a RejectedInput with a reason and the field."""

    @pytest.mark.parametrize(
        ("device", "payload", "reason", "detail"),
        [
            ("tab-0001", b"\xff\xfe", "not_json", "not JSON"),
            ("tab-0001", b"[1, 2]", "bad_field", "JSON object"),
            ("tab-0001", report(battery_pct=101), "bad_field", "'battery_pct' must be 0..100"),
            ("tab-0001", report(battery_pct=True), "bad_field", "'battery_pct'"),
            ("tab-0001", report(charging="yes"), "bad_field", "'charging' must be true or false"),
            ("tab-0001", report(device_id="tab-0002"), "device_mismatch", "tab-0002"),
            ("tab-0001", report(storage_free_mb=10**6), "bad_field", "larger than"),
            ("tab-0001", report(apps={"x": 3}), "bad_field", "version of x"),
            ("tab-0001", report(content=["nothex"]), "bad_field", "sha256"),
            ("tab-0001", report(group="Class 1"), "bad_field", "'group'"),
            ("tab-0001", report(ts=-5), "bad_field", "'ts'"),
            ("Tab_1", report(device_id="Tab_1"), "bad_device_id", "Tab_1"),
            ("tab-0001", b"{" + b" " * 20000 + b"}", "too_large", "limit 16384"),
        ],
    )
    def test_rejected_with_reason(self, device, payload, reason, detail):
        with pytest.raises(RejectedInput) as error:
            parse_state_report(device, payload, max_bytes=16384)
        assert error.value.reason == reason
        assert detail in str(error.value)

    def test_missing_field_is_named(self):
        body = json.loads(report())
        del body["os_version"]
        with pytest.raises(RejectedInput, match="os_version"):
            parse_state_report("tab-0001", json.dumps(body).encode(), max_bytes=16384)
        del body["seq"]
        with pytest.raises(RejectedInput, match="field 'seq' is missing"):
            parse_state_report("tab-0001", json.dumps(body).encode(), max_bytes=16384)


def _outcome(parse, device: str, payload: bytes) -> tuple[object, ...]:
    try:
        return ("stored", parse(device, payload))
    except RejectedInput as error:
        return ("rejected", error.reason, str(error))


def _raw(text: str) -> bytes:
    """A report with the simulator's fields, then ``text`` spliced in before the last brace."""
    return report()[:-1] + text.encode() + b"}"


HEX = "0123456789abcdef" * 4


class TestFastPath:
    """The fast path (msgspec) and the reference checks give the same answer on every input."""

    @pytest.mark.parametrize(
        "payload",
        [
            report(),
            report(ts=1_764_000_000),  # an integer ts is taken, as a float
            report(seq=1.0),
            report(seq=2**53),
            report(seq=2**53 + 1),
            report(seq=2**70),
            report(seq=-1),
            report(battery_pct=50.0),
            report(battery_pct=True),
            report(charging=1),
            report(locked=None),
            report(ts=True),
            report(ts=2**40),
            report(ts=2**40 - 0.5),
            report(content=None),
            report(content=[]),
            report(content=[HEX]),
            report(content=[HEX.upper()]),
            report(content=[HEX + "\n"]),
            report(content=[HEX] * 501),
            report(group=None),
            report(group=""),
            report(group="Class 1"),
            report(epoch=None),
            report(epoch=""),
            report(epoch="e-1.x_Y"),
            report(epoch="bad epoch"),
            report(epoch="x" * 65),
            report(apps=None),
            report(apps={}),
            report(apps={"a": ""}),
            report(apps={"é" * 64: "1"}),
            report(apps={"é" * 65: "1"}),
            report(apps={f"app{i}": "1" for i in range(500)}),
            report(apps={f"app{i}": "1" for i in range(501)}),
            report(os_version="é" * 64),
            report(os_version="é" * 65),
            report(os_version=""),
            report(storage_free_mb=32_001, storage_total_mb=32_000),
            report(storage_total_mb=2**31 + 1),
            report(device_id="tab-0002"),
            report(device_id=None),
            report(unknown_field={"x": [1, 2]}),
            _raw(',"seq":7'),  # a repeated key: the last one counts
            _raw(',"seq":"7"'),
            _raw(',"apps":{"a":"1","a":"2"}'),
            _raw(',"os_version":"\\ud800"'),  # a lone surrogate
            _raw(',"ts":NaN'),
            _raw(',"ts":Infinity'),
            b"\xef\xbb\xbf" + report(),  # a UTF-8 byte order mark
            report()[:-1],
            b"[]",
            b"null",
            b"",
        ],
    )
    def test_same_answer_as_the_reference(self, payload):
        fast = _outcome(
            lambda d, p: parse_state_report(d, p, max_bytes=65_536), "tab-0001", payload
        )
        reference = _outcome(lambda d, p: _checked_report(d, p, 65_536), "tab-0001", payload)
        assert fast == reference

    def test_a_simulated_report_takes_the_fast_path(self):
        assert _fast_report("tab-0001", report()) == parse_state_report(
            "tab-0001", report(), max_bytes=16384
        )

    @pytest.mark.parametrize(
        ("changes", "detail"),
        [
            ({"content": None}, "'content' must be a list"),
            ({"seq": 1.0}, "field 'seq' must be an integer"),
            ({"charging": 1}, "field 'charging' must be true or false"),
            ({"apps": None}, "field 'apps' must be an object"),
            ({"epoch": None}, "field 'epoch'"),
        ],
    )
    def test_what_only_the_fast_path_refuses_is_rejected_naming_the_field(self, changes, detail):
        with pytest.raises(RejectedInput, match=detail) as error:
            parse_state_report("tab-0001", report(**changes), max_bytes=16384)
        assert error.value.reason == "bad_field"


class TestStoredForm:
    """The stored (and relayed) text is the canonical JSON, whichever encoder writes it."""

    @pytest.mark.parametrize(
        "changes",
        [
            {},
            {"ts": 0.0},
            {"ts": 0.0001},
            {"ts": 0.00004652039104148226},  # exponent form in Python
            {"ts": 1e-7},
            {"ts": 2**40 - 0.5},
            {"os_version": "Android 14 é"},
            {"os_version": "del\x7f"},
            {"os_version": 'tab\t\n\x01"\\/'},
            {"apps": {"z.app": "1", "a.app": "ü", "M.app": "2", "_": "3"}},
            {"epoch": "e-1", "content": [HEX]},
        ],
    )
    def test_same_text_as_the_standard_encoder(self, changes):
        parsed = parse_state_report("tab-0001", report(**changes), max_bytes=16384)
        assert report_json(parsed) == canonical_json(parsed.as_dict())
        assert json.loads(report_json(parsed)) == parsed.as_dict()
