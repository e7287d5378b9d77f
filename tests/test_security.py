"""Security decisions as plain functions, key files on disk, and the gateway's refusal to start."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.broker.mosquitto_config import render_mosquitto_config
from gateway.config import config_from_mapping
from gateway.errors import ConfigError, RejectedInput, SecurityError
from gateway.security import pki
from gateway.security.broker_files import render_acl
from gateway.security.enrollment import (
    TokenRecord,
    check_device_id,
    check_redeemable,
    parse_enroll_request,
)
from gateway.security.identity import PkiPaths, ensure_identity, server_names
from gateway.security.keyfiles import mode_problem
from gateway.security.probe import connect_packet, read_connack
from gateway.sim.enroll import make_csr
from tests.helpers import lab_tables, secure_lab_tables

NOW = dt.datetime(2025, 9, 1, tzinfo=dt.UTC)


def issuer() -> pki.Issuer:
    key = pki.new_private_key()
    return pki.Issuer(pki.make_ca(key, "school-x", NOW, 365), key)


class TestCertificates:
    """The CA names tablets itself and its certificates chain to it alone."""

    def test_tablet_certificate_takes_the_gateway_chosen_name(self):
        ca = issuer()
        public = pki.parse_csr(make_csr(pki.new_private_key(), name="gateway-gw-test"))
        cert = pki.issue_client_certificate(ca, public, cn="tab-0001", now=NOW, days=30)
        assert pki.common_name(cert) == "tab-0001"
        assert pki.issued_by(cert, ca.certificate)
        assert not pki.issued_by(cert, issuer().certificate)

    def test_server_certificate_covers_the_box_names(self):
        ca = issuer()
        names = server_names("school-box", ["192.168.1.20"], ["gw.school.example"])
        cert = pki.issue_server_certificate(
            ca,
            pki.new_private_key().public_key(),
            dns_names=names.dns,
            ip_addresses=names.ips,
            now=NOW,
            days=90,
        )
        assert names.dns == ("localhost", "school-box.local", "gw.school.example")
        assert pki.covers(cert, names.dns, names.ips)
        assert not pki.covers(cert, [], ["10.0.0.9"])
        assert pki.expires_within(cert, NOW, 91) and not pki.expires_within(cert, NOW, 60)

    @pytest.mark.parametrize(
        ("csr", "detail"),
        [
            ("not pem at all", "not a PEM certificate request"),
            ("x" * 10_000, "larger than"),
        ],
    )
    def test_malformed_csr_is_rejected_naming_why(self, csr, detail):
        with pytest.raises(RejectedInput) as error:
            pki.parse_csr(csr)
        assert error.value.reason == "malformed_csr"
        assert detail in error.value.detail

    def test_ed25519_csr_is_refused_as_security_md_says(self):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from cryptography.x509.oid import NameOID

        key = ed25519.Ed25519PrivateKey.generate()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tablet")]))
            .sign(key, None)
        )
        with pytest.raises(RejectedInput) as error:
            pki.parse_csr(csr.public_bytes(serialization.Encoding.PEM))
        assert error.value.reason == "malformed_csr"
        assert "Ed25519" in error.value.detail
        security = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
        assert "Ed25519, other curves and shorter RSA keys are refused" in security
        assert "SHA-256 of the CA certificate's **DER** form" in security


class TestTokens:
    """Whether a token may be redeemed is one decision over its record and the clock."""

    def record(self, **changes) -> TokenRecord:
        values = {
            "token_hash": "h",
            "group": "",
            "device_id": None,
            "created": 0.0,
            "expires": 100.0,
            "redeemed": None,
        } | changes
        return TokenRecord(**values)

    @pytest.mark.parametrize(
        ("record", "now", "reason"),
        [
            (None, 1.0, "unknown_token"),
            ({"redeemed": 5.0}, 6.0, "token_used"),
            ({}, 100.0, "token_expired"),
        ],
    )
    def test_refusals(self, record, now, reason):
        with pytest.raises(RejectedInput) as error:
            check_redeemable(None if record is None else self.record(**record), now)
        assert error.value.reason == reason

    def test_fresh_token_passes(self):
        assert check_redeemable(self.record(), 99.9).token_hash == "h"

    def test_request_and_device_id_checks(self):
        with pytest.raises(RejectedInput, match="field 'csr_pem' must be a non-empty string"):
            parse_enroll_request(b'{"token": "t"}')
        with pytest.raises(RejectedInput, match="not JSON"):
            parse_enroll_request(b"{")
        with pytest.raises(RejectedInput, match="reserved for gateways"):
            check_device_id("gateway-gw-test")
        assert check_device_id("tab-0001") == "tab-0001"


class TestBrokerConfig:
    """Secure by default; the anonymous listener only in the lab, only on loopback."""

    def test_default_is_tls_with_acl_and_no_anonymous(self, tmp_path):
        tables = secure_lab_tables(tmp_path, school_port=1883, tls_port=8883, academy_port=1)
        text = render_mosquitto_config(config_from_mapping(tables))
        assert "allow_anonymous false" in text
        assert text.count("require_certificate true") == 2
        assert "use_username_as_clientid true" in text
        assert f"acl_file {tmp_path / 'pki' / 'acl'}" in text
        assert f"crlfile {tmp_path / 'pki' / 'crl.pem'}" in text

    def test_acl_gives_each_tablet_its_own_topics_and_revoked_ones_nothing(self):
        acl = render_acl("gw-1", ["tab-lost"])
        assert "user gateway-gw-1\ntopic read tablets/+/state\n" in acl
        assert "user tab-lost\ntopic deny #\n" in acl
        assert "pattern read tablets/%u/commands" in acl
        assert "pattern write tablets/%u/state" in acl
        assert "pattern write tablets/%u/results" in acl
        assert "pattern write" not in acl.split("pattern read tablets/%u/commands")[0]

    def test_lab_listener_refused_off_loopback(self, tmp_path):
        tables = lab_tables(tmp_path, school_port=1883, academy_port=1)
        tables["school_broker"]["host"] = "0.0.0.0"
        with pytest.raises(ConfigError, match="lab_plain_listener is for development only"):
            config_from_mapping(tables)


class TestKeyFiles:
    """Keys are made 0600; one that others can read stops the gateway."""

    def test_mode_decision(self):
        assert mode_problem(0o600) is None
        assert mode_problem(0o640, group_may_read=True) is None
        assert "readable by others" in (mode_problem(0o644) or "")
        assert "group" in (mode_problem(0o640) or "")

    def test_first_start_makes_private_keys_0600(self, tmp_path):
        os.umask(0o022)
        identity = ensure_identity(
            tmp_path, school_id="school-x", gateway_id="gw-x", names=server_names("box", [])
        )
        keys = sorted(p.name for p in identity.paths.root.glob("*.key"))
        assert keys == ["ca.key", "gateway.key", "server.key"]
        for name in keys:
            assert stat.S_IMODE((identity.paths.root / name).stat().st_mode) == 0o600
        again = ensure_identity(
            tmp_path, school_id="school-x", gateway_id="gw-x", names=server_names("box", [])
        )
        assert again.ca_fingerprint == identity.ca_fingerprint
        assert not again.server_reissued

    async def test_gateway_refuses_to_start_with_a_world_readable_key(self, tmp_path):
        tables = lab_tables(tmp_path / "state", school_port=1, academy_port=1)
        config = config_from_mapping(tables)
        ensure_identity(
            config.gateway.state_dir, school_id="s1", gateway_id="g1", names=server_names("box", [])
        )
        key = PkiPaths.under(config.gateway.state_dir).ca_key
        key.chmod(0o644)
        with pytest.raises(SecurityError) as error:
            await Gateway(config).run()
        assert str(error.value) == (
            f"{key} is readable by others (mode 644); chmod 600 it (or remove it to make a new one)"
        )


class TestConnectProbe:
    """The raw CONNECT used to tell 'refused' from 'accepted' without waiting."""

    def test_packet_and_replies(self):
        packet = connect_packet("tab-1")
        assert packet[0] == 0x10 and packet[1] == len(packet) - 2 and packet.endswith(b"tab-1")
        assert read_connack(b"\x20\x02\x00\x00") == "accepted"
        assert read_connack(b"\x20\x02\x00\x05") == "refused rc=5"
        assert read_connack(b"") == "closed"
