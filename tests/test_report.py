"""State report validation (pure): good reports parse, bad ones name the field."""

from __future__ import annotations

import json

import pytest

from gateway.errors import RejectedInput
from gateway.sim.model import TabletModel
from gateway.state.report import parse_presence, parse_state_report


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
