"""Pure tests of the command flow's decisions: envelopes, actions, results, progress."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.academy.signing import build_payload, parse_ttl
from gateway.commands.envelope import VerifyPolicy, open_envelope
from gateway.commands.progress import Progress, parse_result, state_after_result
from gateway.errors import ConfigError, RejectedInput
from gateway.lab.commands import AcademySigner
from gateway.signed import load_public_keys, sign_envelope

NOW = 1_764_000_000.0
SCHOOL = "school-test"
POLICY = VerifyPolicy(school_id=SCHOOL, max_envelope_bytes=16_384, clock_skew_s=300)


@pytest.fixture
def signer() -> AcademySigner:
    return AcademySigner(SCHOOL)


def verify(signer: AcademySigner, data: bytes, seen: frozenset[str] = frozenset()):
    keys = load_public_keys(signer.config_keys())
    return open_envelope(data, keys, policy=POLICY, now=NOW, seen=seen.__contains__)


def rejection(signer: AcademySigner, data: bytes, seen: frozenset[str] = frozenset()) -> str:
    with pytest.raises(RejectedInput) as caught:
        verify(signer, data, seen)
    return caught.value.reason


def signed(signer: AcademySigner, fields: dict) -> bytes:
    payload = json.dumps(fields).encode()
    return sign_envelope(signer.key, signer.key_id, payload)


def good_fields(**changes) -> dict:
    fields = {
        "command_id": "cmd-1",
        "school_id": SCHOOL,
        "issued_at": NOW,
        "not_after": NOW + 3600,
        "targets": {"group": "class-01"},
        "action": "lock",
        "params": {},
    }
    fields.update(changes)
    return fields


class TestGoodEnvelopes:
    """A well-signed, well-formed, current envelope opens into a Command."""

    def test_lock_a_group(self, signer):
        command = verify(signer, signed(signer, good_fields()))
        assert command.command_id == "cmd-1"
        assert command.action == "lock"
        assert command.targets.group == "class-01"
        assert command.not_after == NOW + 3600

    def test_install_app_keeps_its_parameters(self, signer):
        params = {"package": "org.ent.classroom", "version": "2.5.1", "sha256": "ab" * 32}
        command = verify(signer, signed(signer, good_fields(action="install_app", params=params)))
        assert command.params == params

    def test_rotation_any_enrolled_key_id_verifies(self, signer):
        old = AcademySigner(SCHOOL, key_id="academy-2024")
        keys = load_public_keys({**signer.config_keys(), **old.config_keys()})
        for who in (signer, old):
            data = signed(who, good_fields())
            assert open_envelope(data, keys, policy=POLICY, now=NOW, seen=set().__contains__)

    def test_issued_slightly_ahead_is_within_clock_skew(self, signer):
        assert verify(signer, signed(signer, good_fields(issued_at=NOW + 200)))

    def test_each_action_with_its_parameters(self, signer):
        cases = {
            "unlock": {},
            "message": {"text": "Rangez les tablettes"},
            "open_url": {"url": "https://lumni.fr/"},
            "remove_app": {"package": "org.mozilla.firefox"},
            "reboot": {},
            "wipe": {},
            "request_state": {},
            "set_policy": {"camera": False, "max_volume": 60, "wallpaper": "school"},
        }
        for action, params in cases.items():
            assert verify(signer, signed(signer, good_fields(action=action, params=params)))


class TestRejectedEnvelopes:
    """Every way an envelope can be wrong is rejected with its own reason."""

    def test_forged_signature(self, signer):
        forger = AcademySigner(SCHOOL, key_id=signer.key_id)  # same id, another key
        assert rejection(signer, signed(forger, good_fields())) == "bad_signature"

    def test_unknown_key_id(self, signer):
        stranger = AcademySigner(SCHOOL, key_id="academy-unknown")
        assert rejection(signer, signed(stranger, good_fields())) == "unknown_key"

    def test_valid_signature_on_altered_bytes(self, signer):
        envelope = json.loads(signed(signer, good_fields()))
        payload = base64.b64decode(envelope["payload"]).replace(b"lock", b"wipe")
        envelope["payload"] = base64.b64encode(payload).decode()
        assert rejection(signer, json.dumps(envelope).encode()) == "bad_signature"

    def test_replayed_id(self, signer):
        data = signed(signer, good_fields())
        assert rejection(signer, data, seen=frozenset({"cmd-1"})) == "replayed"

    def test_expired(self, signer):
        fields = good_fields(issued_at=NOW - 7200, not_after=NOW - 1)
        assert rejection(signer, signed(signer, fields)) == "expired"

    def test_not_yet_valid_beyond_clock_skew(self, signer):
        fields = good_fields(issued_at=NOW + 301, not_after=NOW + 3600)
        assert rejection(signer, signed(signer, fields)) == "not_yet_valid"

    def test_oversized(self, signer):
        fields = good_fields(action="message", params={"text": "x" * 1000})
        data = signed(signer, fields) + b" " * 16_384
        assert rejection(signer, data) == "too_large"

    def test_not_json(self, signer):
        assert rejection(signer, b"\x00\x01 definitely not json") == "not_json"

    def test_payload_not_json(self, signer):
        data = sign_envelope(signer.key, signer.key_id, b"lock everything")
        assert rejection(signer, data) == "not_json"

    def test_unknown_action(self, signer):
        assert rejection(signer, signed(signer, good_fields(action="format_c"))) == "unknown_action"

    def test_missing_fields(self, signer):
        for name in ("command_id", "school_id", "issued_at", "not_after", "targets", "action"):
            fields = good_fields()
            del fields[name]
            assert rejection(signer, signed(signer, fields)) == "missing_field", name
        envelope = json.loads(signed(signer, good_fields()))
        del envelope["signature"]
        assert rejection(signer, json.dumps(envelope).encode()) == "missing_field"

    def test_another_schools_command(self, signer):
        fields = good_fields(school_id="school-elsewhere")
        assert rejection(signer, signed(signer, fields)) == "wrong_school"

    def test_too_long_a_life(self, signer):
        fields = good_fields(not_after=NOW + 31 * 86_400)
        assert rejection(signer, signed(signer, fields)) == "ttl_too_long"

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"targets": {"group": "Class 01!"}}, "targets"),
            ({"targets": {"devices": []}}, "targets"),
            ({"targets": {"all": True, "group": "class-01"}}, "targets"),
            ({"command_id": "id with spaces"}, "command_id"),
            ({"issued_at": "yesterday"}, "issued_at"),
            ({"action": "install_app", "params": {"package": "org.x.y"}}, "params.version"),
            (
                {
                    "action": "install_app",
                    "params": {"package": "x", "version": "1", "sha256": "0"},
                },
                "params.package",
            ),
            ({"action": "lock", "params": {"force": True}}, "force"),
            ({"action": "open_url", "params": {"url": "javascript:alert(1)"}}, "params.url"),
            ({"action": "set_policy", "params": {"Bad Key": 1}}, "policy key"),
            ({"extra": 1}, "extra"),
        ],
    )
    def test_bad_fields_are_named(self, signer, changes, field):
        with pytest.raises(RejectedInput) as caught:
            verify(signer, signed(signer, good_fields(**changes)))
        assert caught.value.reason in ("bad_field", "missing_field")
        assert field in caught.value.detail

    def test_a_bad_academy_key_in_the_config_stops_start_up(self):
        with pytest.raises(ConfigError, match=r"commands\.academy_keys\.k1"):
            load_public_keys({"k1": "bm90IGEga2V5"})


class TestSigning:
    """The academy side builds payloads the gateway accepts."""

    def test_build_payload_round_trip(self, signer):
        payload = build_payload(
            command_id="cmd-9",
            school_id=SCHOOL,
            targets={"all": True},
            action="reboot",
            params={},
            issued_at=NOW,
            not_after=NOW + 60,
        )
        command = verify(signer, sign_envelope(signer.key, signer.key_id, payload))
        assert command.payload == payload
        assert command.targets.everyone

    def test_ttl_units(self):
        assert [parse_ttl(t) for t in ("90", "45s", "30m", "2h", "1d")] == [
            90,
            45,
            1800,
            7200,
            86_400,
        ]
        with pytest.raises(RejectedInput):
            parse_ttl("soon")

    def test_signature_is_over_exact_bytes(self):
        key = Ed25519PrivateKey.generate()
        envelope = json.loads(sign_envelope(key, "k", b'{"a":1}'))
        key.public_key().verify(base64.b64decode(envelope["signature"]), b'{"a":1}')


class TestResultsAndProgress:
    """Tablet answers move deliveries through their states; progress counts them."""

    def test_answers_move_a_delivery_forward_and_repeats_change_nothing(self):
        assert state_after_result("sent", "received") == "received"
        assert state_after_result("received", "done") == "done"
        assert state_after_result("pending", "done") == "done"
        assert state_after_result("done", "done") is None
        assert state_after_result("done", "received") is None
        assert state_after_result("failed", "done") is None
        assert state_after_result("received", "received") is None

    def test_a_late_answer_to_an_expired_delivery_is_recorded(self):
        assert state_after_result("expired", "done") == "done"

    def test_parse_result(self):
        result = parse_result("tab-0001", b'{"command_id":"cmd-1","status":"failed","detail":"x"}')
        assert (result.command_id, result.status, result.detail) == ("cmd-1", "failed", "x")
        for bad, reason in [
            (b"nope", "not_json"),
            (b'{"status":"done"}', "missing_field"),
            (b'{"command_id":"cmd-1","status":"maybe"}', "bad_field"),
        ]:
            with pytest.raises(RejectedInput) as caught:
                parse_result("tab-0001", bad)
            assert caught.value.reason == reason

    def test_progress_counts(self):
        p = Progress.from_counts(
            "cmd-1", "lock", {"pending": 2, "sent": 1, "received": 1, "done": 5, "expired": 1}
        )
        assert (p.targets, p.sent, p.delivered, p.done, p.expired, p.waiting) == (10, 7, 6, 5, 1, 3)
        assert not p.complete
        done = Progress.from_counts("cmd-1", "lock", {"done": 9, "failed": 1})
        assert done.complete
        assert done.as_body()["complete"] is True
