"""System updates, the pure parts: manifest kind ``system``, the decision, outcomes, config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway.cache.manifest import ManifestItem, parse_manifest
from gateway.config import config_from_mapping
from gateway.errors import ConfigError, RejectedInput
from gateway.sysupdate.cli import into_update_command
from gateway.sysupdate.decision import choose_update
from gateway.sysupdate.files import InstallRequest, parse_request, ready_boot_id, ready_marker
from gateway.sysupdate.manifest_filter import for_this_box
from gateway.sysupdate.outcomes import outcome, parse_outcomes, render_outcomes, system_block
from gateway.sysupdate.status import render_system
from gateway.sysupdate.system import SystemInfo, booted_slot, compatible_of, version_of

SHA = "ab" * 32
OTHER_SHA = "cd" * 32
COMPAT = "school-gateway-amd64"


def manifest(*items: dict[str, object]) -> bytes:
    return json.dumps(
        {"type": "cache_manifest", "serial": 1, "issued_at": 1, "items": list(items)}
    ).encode()


def system_item(**extra: object) -> dict[str, object]:
    item: dict[str, object] = {
        "sha256": SHA,
        "size": 1000,
        "urls": ["https://cdn.example/gw-2.raucb"],
        "name": "school-gateway-amd64-2.raucb",
        "kind": "system",
        "version": "2",
        "compatible": COMPAT,
    }
    item.update(extra)
    return item


class TestManifestSystemKind:
    """A system item carries version and compatible; the manifest refuses what is unclear."""

    def test_system_item_parsed(self) -> None:
        (item,) = parse_manifest(manifest(system_item())).items
        assert (item.kind, item.version, item.compatible) == ("system", "2", COMPAT)

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"version": ""}, "field 'items[0].version' of a system item"),
            ({"version": "2 beta"}, "field 'items[0].version' of a system item"),
            ({"compatible": ""}, "field 'items[0].compatible' of a system item"),
            ({"compatible": "a/b"}, "field 'items[0].compatible' of a system item"),
            ({"compatible": 7}, "field 'items[0].compatible' must be a string"),
        ],
    )
    def test_bad_system_item_refused(self, change: dict[str, object], message: str) -> None:
        with pytest.raises(RejectedInput, match=re.escape(message)):
            parse_manifest(manifest(system_item(**change)))

    def test_compatible_only_on_system_items(self) -> None:
        with pytest.raises(RejectedInput, match="is for kind 'system' only"):
            parse_manifest(manifest(system_item(kind="apk")))

    def test_two_system_items_for_one_compatible_refused(self) -> None:
        with pytest.raises(RejectedInput, match="a second system item for compatible"):
            parse_manifest(manifest(system_item(), system_item(sha256=OTHER_SHA, version="3")))

    def test_one_system_item_per_compatible_allowed(self) -> None:
        body = manifest(system_item(), system_item(sha256=OTHER_SHA, compatible="sg-arm64"))
        assert len(parse_manifest(body).items) == 2

    def test_other_boxes_bundles_not_prefetched(self) -> None:
        wanted = for_this_box(COMPAT)
        ours = ManifestItem(SHA, 1, ("http://x/a",), kind="system", version="2", compatible=COMPAT)
        theirs = ManifestItem(SHA, 1, ("http://x/a",), kind="system", compatible="sg-arm64")
        apk = ManifestItem(SHA, 1, ("http://x/a",), kind="apk")
        assert (wanted(ours), wanted(theirs), wanted(apk)) == (True, False, True)
        assert for_this_box("")(ours) is False  # a box without RAUC fetches no bundle


def item(version: str = "2", sha: str = SHA, compatible: str = COMPAT) -> ManifestItem:
    return ManifestItem(
        sha, 1000, ("https://x/b",), kind="system", version=version, compatible=compatible
    )


def decide(**overrides: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "complete": {SHA},
        "info": SystemInfo("1", COMPAT, "A"),
        "history": (),
        "enabled": True,
        "window_open": True,
        "window": "02:00-05:00",
        "request_pending": False,
        "max_attempts": 3,
    }
    items = overrides.pop("items", (item(),))
    args.update(overrides)
    return choose_update(items, **args)  # type: ignore[arg-type]


class TestDecision:
    """choose_update: each rule, in its order."""

    def test_install_when_everything_holds(self) -> None:
        decision = decide()
        assert (decision.action, decision.rule) == ("install", "install")
        assert decision.item is not None and decision.item.sha256 == SHA

    @pytest.mark.parametrize(
        ("overrides", "action", "rule"),
        [
            ({"enabled": False}, "none", "disabled"),
            ({"info": SystemInfo("1", "", None)}, "none", "no_rauc"),
            ({"items": (item(compatible="sg-arm64"),)}, "none", "no_update"),
            ({"items": ()}, "none", "no_update"),
            ({"info": SystemInfo("2", COMPAT, "B")}, "none", "current"),
            ({"request_pending": True}, "wait", "requested"),
            ({"complete": set()}, "wait", "downloading"),
            ({"window_open": False}, "wait", "window"),
        ],
    )
    def test_rule(self, overrides: dict[str, object], action: str, rule: str) -> None:
        decision = decide(**overrides)
        assert (decision.action, decision.rule) == (action, rule)

    @pytest.mark.parametrize("bad", ["refused", "health-check-failed", "rolled-back"])
    def test_a_bundle_that_went_wrong_is_never_retried(self, bad: str) -> None:
        history = (
            outcome("2", SHA, "installing", at=1),
            outcome("2", SHA, bad, at=2, reason="gateway never READY"),
            outcome("2", SHA, "marked-good", at=3),  # even if something later looks fine
        )
        decision = decide(history=history)
        assert (decision.action, decision.rule) == ("none", "not_again")
        assert f"was {bad}: gateway never READY" in decision.reason
        assert "publish a new bundle" in decision.reason

    def test_a_new_bundle_after_a_rollback_is_installed(self) -> None:
        history = (outcome("2", OTHER_SHA, "rolled-back", at=1),)
        assert decide(history=history).action == "install"

    def test_attempts_are_bounded(self) -> None:
        tries = tuple(outcome("2", SHA, "installing", at=n) for n in range(3))
        assert decide(history=tries[:2]).action == "install"
        decision = decide(history=tries)
        assert (decision.action, decision.rule) == ("none", "attempts")

    @pytest.mark.parametrize("step", ["installed", "booted"])
    def test_no_second_request_while_one_is_in_flight(self, step: str) -> None:
        history = (outcome("2", SHA, "installing", at=1), outcome("2", SHA, step, at=2))
        decision = decide(history=history)
        assert (decision.action, decision.rule) == ("wait", "in_flight")

    def test_window_reason_names_the_window(self) -> None:
        assert "maintenance window 02:00-05:00" in decide(window_open=False).reason


class TestSystemFiles:
    """The parsers of what the box and root's helpers write."""

    def test_booted_slot(self) -> None:
        assert booted_slot("BOOT_IMAGE=/vmlinuz root=/dev/vda2 rauc.slot=B quiet") == "B"
        assert booted_slot("quiet splash") is None
        assert booted_slot("rauc.slot=") is None

    def test_compatible_of(self) -> None:
        conf = "[system]\ncompatible=school-gateway-amd64\nbootloader=grub\n"
        assert compatible_of(conf) == COMPAT
        assert compatible_of("") == ""
        assert compatible_of("not ini at all [") == ""

    def test_version_of(self) -> None:
        assert version_of("2026.12.2\n") == "2026.12.2"
        assert version_of("") == "unknown"

    def test_outcomes_round_trip_and_bad_entries_skipped(self) -> None:
        kept = (
            outcome("2", SHA, "installed", at=10.0, slot="B"),
            outcome("2", SHA, "marked-good", at=20.0, slot="B"),
        )
        data = json.loads(render_outcomes(kept))
        data["outcomes"].insert(0, {"version": 2, "outcome": "installed"})
        data["outcomes"].append({"version": "2", "sha256": SHA, "outcome": "exploded", "at": 1})
        assert parse_outcomes(json.dumps(data).encode()) == kept
        assert parse_outcomes(b"not json") == ()
        with pytest.raises(ValueError, match="unknown update outcome"):
            outcome("2", SHA, "exploded", at=1)

    def test_request_round_trip_and_refusals(self) -> None:
        request = InstallRequest("/var/lib/x/cache/objects/bundle", SHA, 10, "2", COMPAT, 5.0)
        assert parse_request(request.render()) == request
        with pytest.raises(RejectedInput, match="'sha256' must be 64"):
            parse_request(request.render().replace(SHA.encode(), b"AB" * 32, 1))
        with pytest.raises(RejectedInput, match="'bundle' must be an absolute path"):
            parse_request(request.render().replace(b'"/var', b'"var'))
        with pytest.raises(RejectedInput, match="not JSON"):
            parse_request(b"{")

    def test_ready_marker(self) -> None:
        assert ready_boot_id(ready_marker("abc", "2", 1.0)) == "abc"
        assert ready_boot_id(None) is None
        assert ready_boot_id(b"[]") is None


class TestSystemReport:
    """The system block: what goes upstream and what status prints."""

    def test_block_and_lines(self) -> None:
        history = (
            outcome("3", SHA, "health-check-failed", at=1.0, reason="gateway not READY", slot="A"),
            outcome("3", SHA, "rolled-back", at=2.0, reason="booted B, installed A", slot="B"),
        )
        block = system_block(SystemInfo("2", COMPAT, "B"), history)
        assert block["version"] == "2" and block["booted_slot"] == "B"
        assert block["last_update"]["outcome"] == "rolled-back"
        assert [o["outcome"] for o in block["recent"]] == ["health-check-failed", "rolled-back"]
        block["next"] = "no system update for school-gateway-amd64"
        text = "\n".join(render_system(block))
        assert "system: version 2 on slot B (school-gateway-amd64)" in text
        assert "last update: version 3 ROLLED-BACK (slot B)" in text
        assert "booted B, installed A" in text

    def test_no_update_yet(self) -> None:
        text = "\n".join(render_system(system_block(SystemInfo("unknown", "", None), ())))
        assert "version unknown on slot ? (no RAUC)" in text
        assert "last update: none recorded" in text


class TestSystemUpdateConfig:
    """[system_update] keys: defaults, checks, unknown keys refused."""

    def base(self, **section: object) -> dict[str, dict[str, object]]:
        return {
            "gateway": {"school_id": "school-a", "gateway_id": "gw-a"},
            "academy_broker": {"host": "127.0.0.1"},
            "system_update": dict(section),
        }

    def test_defaults(self) -> None:
        settings = config_from_mapping(self.base()).system_update
        assert settings.enabled is True
        assert settings.window == "02:00-05:00"
        assert settings.keyring == Path("/etc/rauc/keyring.pem")

    @pytest.mark.parametrize(
        ("section", "message"),
        [
            ({"window": "2-5"}, "system_update.window must match"),
            ({"window": "25:00-05:00"}, "system_update.window must match"),
            ({"windows": "02:00-05:00"}, "unknown key system_update.windows"),
            ({"enabled": "yes"}, "system_update.enabled must be true or false"),
            ({"health_deadline_s": 1}, "system_update.health_deadline_s must be >= 5"),
        ],
    )
    def test_refused(self, section: dict[str, object], message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            config_from_mapping(self.base(**section))


class TestRebootIntoUpdate:
    """After an install: the configured command, else the image's script, else the reboot."""

    def test_choice(self, tmp_path: Path) -> None:
        base = TestSystemUpdateConfig().base
        script = tmp_path / "reboot-into-update"
        settings = config_from_mapping(base()).system_update
        assert into_update_command(settings, script) == ("systemctl", "reboot")
        script.write_text("#!/bin/sh\n")
        assert into_update_command(settings, script) == (str(script),)
        configured = config_from_mapping(base(reboot_into_update_command=["/bin/true"]))
        assert into_update_command(configured.system_update, script) == ("/bin/true",)
