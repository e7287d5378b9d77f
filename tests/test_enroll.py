"""Enrollment over HTTPS, the simulator's TLS tablets, and revocation, end to end."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time

import aiohttp
import aiomqtt

from gateway.lab.config_file import write_config_file
from gateway.lab.waiting import wait_until
from gateway.security import pki, registry
from gateway.security.probe import connect_outcome
from gateway.sim.enroll import enroll_tablet, fetch_pinned_ca, make_csr, post_enrollment
from gateway.sim.fleet import Fleet, FleetSettings
from gateway.store.database import Database
from tests.enroll_kit import ca_file, make_token, url_for
from tests.helpers import run_cli


async def post(running, body: dict) -> tuple[int, dict]:
    """POST /enroll as a tablet would, returning (status, JSON answer)."""
    base = f"https://127.0.0.1:{running.gateway.config.enrollment.port}"
    context = ssl.create_default_context(cafile=str(ca_file(running)))
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/enroll", json=body, ssl=context) as response,
    ):
        return response.status, await response.json()


class TestEnrollmentTokens:
    """A token enrolls one tablet once; anything else is refused with a clear error."""

    async def test_redeem_once_then_refused(self, start_secure_gateway, tmp_path):
        running = await start_secure_gateway()
        secret = await make_token(running)
        credentials = await enroll_tablet(url_for(running, secret), tmp_path / "tablet")
        assert credentials.device_id.startswith("tab-")
        assert credentials.broker_port == running.gateway.config.school_broker.tls_port
        assert (tmp_path / "tablet" / "key.pem").stat().st_mode & 0o777 == 0o600

        key = pki.new_private_key()
        status, answer = await post(running, {"token": secret, "csr_pem": make_csr(key)})
        assert (status, answer["error"]) == (403, "token_used")
        assert answer["detail"] == "this enrollment token was already used"
        counters = running.gateway.counters
        assert counters.get("enrollments") == 1
        assert counters.get("enrollment_rejected", reason="token_used") == 1

    async def test_expired_unknown_and_malformed_are_refused(self, start_secure_gateway):
        running = await start_secure_gateway()
        expired = await make_token(running, ttl_s=60, now=time.time() - 3600)
        good = await make_token(running)
        csr = make_csr(pki.new_private_key())
        cases = [
            ({"token": expired, "csr_pem": csr}, 403, "token_expired"),
            ({"token": "not-a-token-we-made", "csr_pem": csr}, 403, "unknown_token"),
            (
                {"token": good, "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA"},
                400,
                "malformed_csr",
            ),
            ({"token": good, "csr_pem": csr.replace("A", "B", 5)}, 400, "malformed_csr"),
            ({"token": good}, 400, "bad_request"),
        ]
        for body, want_status, want_error in cases:
            status, answer = await post(running, body)
            assert (status, answer["error"]) == (want_status, want_error), answer
            assert answer["detail"]
        # A refused CSR does not use up the token.
        status, answer = await post(running, {"token": good, "csr_pem": csr})
        assert status == 200, answer
        assert answer["group"] == "class-01"

    async def test_a_tablet_refuses_a_server_whose_ca_does_not_match_the_code(
        self, start_secure_gateway
    ):
        running = await start_secure_gateway()
        base = f"https://127.0.0.1:{running.gateway.config.enrollment.port}"
        async with aiohttp.ClientSession() as session:
            ca = await fetch_pinned_ca(
                session,
                base,
                pki.fingerprint(pki.load_certificate(ca_file(running).read_bytes(), "ca")),
            )
            assert b"BEGIN CERTIFICATE" in ca
            try:
                await fetch_pinned_ca(session, base, "00" * 32)
            except Exception as exc:
                assert "does not match the enrollment code" in str(exc)
            else:
                raise AssertionError("a CA with the wrong fingerprint was accepted")
            answer = await post_enrollment(
                session,
                base,
                ca,
                {"token": await make_token(running), "csr_pem": make_csr(pki.new_private_key())},
            )
        assert answer["ca_pem"].encode() == ca


class TestSimulatedTabletsEnrollAndReport:
    """The simulator enrolls its tablets through the endpoint and reports over TLS."""

    async def test_three_enrolled_tablets_report_to_the_gateway(
        self, start_secure_gateway, secure_school, tmp_path
    ):
        running = await start_secure_gateway()
        device_ids = [f"tab-{i:04d}" for i in range(3)]
        contexts = {}
        for device_id in device_ids:
            secret = await make_token(running, device_id=device_id)
            credentials = await enroll_tablet(url_for(running, secret), tmp_path / device_id)
            assert credentials.device_id == device_id
            contexts[device_id] = credentials.tls_context()
        fleet = Fleet(
            FleetSettings(
                host="127.0.0.1",
                port=secure_school.tls_port,
                tablets=3,
                interval_s=0,
                reports_per_tablet=2,
                tls=contexts,
            )
        )
        await asyncio.wait_for(fleet.run(), 30)
        counters = running.gateway.counters
        assert await wait_until(lambda: counters.get("state_reports_stored") == 6, 10)
        assert fleet.stats.connect_failures == 0


class TestRevocation:
    """`enroll revoke` closes the tablet's session and it cannot come back."""

    async def test_revoked_tablet_is_disconnected_and_refused(
        self, start_secure_gateway, secure_school, tmp_path
    ):
        running = await start_secure_gateway()
        secret = await make_token(running, device_id="tab-lost")
        credentials = await enroll_tablet(url_for(running, secret), tmp_path / "tab-lost")
        config_file = write_config_file(secure_school.tables, tmp_path / "gateway.toml")
        port = secure_school.tls_port
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="tab-lost", tls_context=credentials.tls_context()
        ) as tablet:
            await tablet.subscribe("tablets/tab-lost/commands", qos=1)
            result = await run_cli("enroll", "--config", str(config_file), "revoke", "tab-lost")
            assert result.returncode == 0, result.stdout + result.stderr
            # The broker closed the tablet's connection.
            async with asyncio.timeout(10):
                try:
                    async for _ in tablet.messages:
                        pass
                except aiomqtt.MqttError:
                    pass
        assert "revoked tab-lost" in result.stdout
        assert "tablet session closed: yes" in result.stdout
        outcome = await connect_outcome("127.0.0.1", port, credentials.tls_context(), "tab-lost")
        assert outcome.startswith("closed"), outcome

        listing = await run_cli("enroll", "--config", str(config_file), "list")
        assert "tab-lost" in listing.stdout and "REVOKED" in listing.stdout
        db = running.gateway._db
        assert isinstance(db, Database)
        assert await registry.revoked_devices(db) == ["tab-lost"]


class TestRevocationPending:
    """A revocation the broker did not take up is shown PENDING, never just REVOKED."""

    async def test_failed_reload_is_pending_then_retried(
        self, start_secure_gateway, secure_school, tmp_path
    ):
        running = await start_secure_gateway()
        secret = await make_token(running, device_id="tab-stolen")
        credentials = await enroll_tablet(url_for(running, secret), tmp_path / "tab-stolen")
        broken = {k: dict(v) for k, v in secure_school.tables.items()}
        broken["school_broker"]["reload_command"] = ["false"]
        broken_file = write_config_file(broken, tmp_path / "broken.toml")
        result = await run_cli("enroll", "revoke", "tab-stolen", "--config", str(broken_file))
        assert result.returncode == 1, result.stdout + result.stderr  # as docs/security.md says
        assert "broker reloaded the CRL and ACL: NO (broker reload 'false' exited" in result.stdout
        assert "PENDING" in result.stdout
        port = secure_school.tls_port
        outcome = await connect_outcome("127.0.0.1", port, credentials.tls_context(), "tab-stolen")
        assert outcome == "accepted"  # truly not in force yet: the list must not hide it
        listing = await run_cli("enroll", "list", "--config", str(broken_file))
        assert re.search(r"tab-stolen .* REVOKED \S+ PENDING", listing.stdout), listing.stdout

        fixed = write_config_file(secure_school.tables, tmp_path / "gateway.toml")
        again = await run_cli("enroll", "revoke", "tab-stolen", "--config", str(fixed))
        assert again.returncode == 0, again.stdout + again.stderr
        listing = await run_cli("enroll", "list", "--config", str(fixed))
        assert "REVOKED" in listing.stdout and "PENDING" not in listing.stdout
        outcome = await connect_outcome("127.0.0.1", port, credentials.tls_context(), "tab-stolen")
        assert outcome.startswith("closed"), outcome


class TestEnrollCli:
    """`enroll new` prints the token, the enrollment URL and a QR code."""

    async def test_new_token_printed_as_text_url_and_qr(self, secure_school, tmp_path):
        config_file = write_config_file(secure_school.tables, tmp_path / "gateway.toml")
        result = await run_cli("enroll", "--config", str(config_file), "new", "--group", "class-07")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("enrollment token (class-07; single use; expires ")
        url = lines[3].strip()
        assert (
            url.startswith("https://")
            and f"ca_sha256={secure_school.identity.ca_fingerprint}" in url
        )
        assert lines[1].strip() in url
        assert sum("█" in line for line in lines) > 10  # the QR code
        assert json.dumps(lines[1].strip())  # a plain string the operator can type
