"""The academy CLI: keys, signing, sending to a school and watching what comes back."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import stat
import time

from gateway.academy.cli import watch
from gateway.academy.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE
from gateway.cli import main
from gateway.commands.envelope import VerifyPolicy, open_envelope
from gateway.lab.waiting import wait_until
from gateway.signed import load_public_keys
from gateway.sim.commands import SimulatedCommands
from gateway.sim.fleet import Fleet, FleetSettings


class TestKeysAndSigning:
    """keygen writes a private key only its owner can read; sign makes envelopes the gateway accepts."""

    def test_keygen_then_sign(self, tmp_path, capsys):
        assert main(["academy", "keygen", "--out", str(tmp_path), "--key-id", "academy-2025"]) == 0
        out = capsys.readouterr().out
        public = (tmp_path / PUBLIC_KEY_FILE).read_text().strip()
        assert f'"academy-2025" = "{public}"' in out
        assert stat.S_IMODE((tmp_path / PRIVATE_KEY_FILE).stat().st_mode) == 0o600
        assert main(["academy", "keygen", "--out", str(tmp_path)]) == 2  # never overwrites

        code = main(
            [
                "academy", "sign", "--school", "school-test",
                "--key", str(tmp_path / PRIVATE_KEY_FILE), "--key-id", "academy-2025",
                "--action", "set_policy", "--group", "class-02", "--ttl", "2h",
                "--param", "wallpaper=school", "--param-json", "max_volume=60",
                "--id", "cmd-cli-1",
            ]
        )  # fmt: skip
        assert code == 0
        envelope = capsys.readouterr().out.strip().encode()
        command = open_envelope(
            envelope,
            load_public_keys({"academy-2025": public}),
            policy=VerifyPolicy(school_id="school-test"),
            now=time.time(),
            seen=set().__contains__,
        )
        assert command.command_id == "cmd-cli-1"
        assert command.params == {"wallpaper": "school", "max_volume": 60}
        assert command.targets.group == "class-02"
        assert command.not_after - command.issued_at == 7200

    def test_an_invalid_command_is_refused_before_signing(self, tmp_path, capsys):
        main(["academy", "keygen", "--out", str(tmp_path)])
        capsys.readouterr()
        code = main(
            [
                "academy", "sign", "--school", "school-test",
                "--key", str(tmp_path / PRIVATE_KEY_FILE), "--key-id", "k",
                "--action", "install_app", "--all", "--param", "package=org.x.y",
            ]
        )  # fmt: skip
        assert code == 2
        assert "needs params.version" in capsys.readouterr().err


class TestSendAndWatch:
    """send publishes to the school's topic; watch prints results until the command is complete."""

    async def test_send_lock_and_watch_it_complete(
        self, tmp_path, start_gateway, school_broker, academy_broker
    ):
        keys_dir = tmp_path / "keys"
        await asyncio.to_thread(main, ["academy", "keygen", "--out", str(keys_dir)])
        public = (keys_dir / PUBLIC_KEY_FILE).read_text().strip()
        running = await start_gateway({"commands": {"academy_keys": {"academy-1": public}}})
        applier = SimulatedCommands()
        fleet = Fleet(
            FleetSettings(
                host=school_broker.host, port=school_broker.port, tablets=3,
                interval_s=0, reports_per_tablet=1, stay_online=True,
            ),
            on_command=applier,
        )  # fmt: skip
        fleet_task = asyncio.create_task(fleet.run())
        counters = running.gateway.counters
        assert await wait_until(lambda: counters.get("state_reports_stored") >= 3, 20)

        broker = f"{academy_broker.host}:{academy_broker.port}"
        lines: list[str] = []
        watch_args = argparse.Namespace(
            broker=broker, school="school-test", command="cmd-cli-lock",
            until_complete=True, timeout=30.0, json=False,
        )  # fmt: skip
        subscribed = asyncio.Event()
        watcher = asyncio.create_task(watch(watch_args, lines.append, subscribed))
        await asyncio.wait_for(subscribed.wait(), 10)
        code = await asyncio.to_thread(
            main,
            [
                "academy", "send", "--broker", broker, "--school", "school-test",
                "--key", str(keys_dir / PRIVATE_KEY_FILE), "--key-id", "academy-1",
                "--action", "lock", "--group", "class-01", "--id", "cmd-cli-lock",
            ],
        )  # fmt: skip
        assert code == 0
        assert await asyncio.wait_for(watcher, 30) == 0
        assert sum(" done" in line and line.startswith("result") for line in lines) == 3
        assert "COMPLETE" in lines[-1]
        assert all(t.model.locked for t in fleet.tablets)

        stored = counters.get("presence_updates_stored")
        for tablet in fleet.tablets:
            tablet.leave()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(fleet_task, 20)
        assert await wait_until(lambda: counters.get("presence_updates_stored") >= stored + 3, 10)
