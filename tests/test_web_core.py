"""The web stack's pure decisions: throttle, roles, language, passwords, redirects."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.web.accounts import RolePolicy, token_hash
from gateway.web.i18n import choose_language, parse_accept_language
from gateway.web.passwords import (
    ScryptCost,
    hash_password,
    password_problem,
    verify_password,
)
from gateway.web.stack import safe_next
from gateway.web.throttle import SignInThrottle, ThrottleRules

CHEAP = ScryptCost(log2_n=10, r=8, p=1)


class TestThrottle:
    """Failed sign-ins are slowed per account and per address, in a bounded map."""

    def test_a_few_mistakes_cost_nothing_then_the_door_closes_longer_each_time(self) -> None:
        t = SignInThrottle(ThrottleRules(free_per_account=3, base_s=1, cap_s=60))
        for _ in range(3):
            assert t.wait_s("alice", "10.0.0.1", 100.0) == 0
            t.failed("alice", "10.0.0.1", 100.0)
        assert t.wait_s("alice", "10.0.0.1", 100.0) == 0
        t.failed("alice", "10.0.0.1", 100.0)  # 4th: 1 s
        assert t.wait_s("alice", "10.0.0.2", 100.0) == pytest.approx(1.0)
        t.failed("alice", "10.0.0.1", 101.0)  # 5th: 2 s
        assert t.wait_s("alice", "10.0.0.9", 101.0) == pytest.approx(2.0)
        for _ in range(20):
            t.failed("alice", "10.0.0.1", 200.0)
        assert t.wait_s("ALICE", "10.0.0.3", 200.0) == pytest.approx(60.0)  # capped, case-blind
        assert t.wait_s("bob", "10.0.0.3", 200.0) == 0

    def test_one_address_guessing_many_names_is_slowed_by_its_address(self) -> None:
        t = SignInThrottle(ThrottleRules(free_per_account=3, free_per_address=5, base_s=1))
        for i in range(6):
            t.failed(f"user{i}", "10.0.0.66", 10.0)
        assert t.wait_s("someone-else", "10.0.0.66", 10.0) == pytest.approx(1.0)
        assert t.wait_s("someone-else", "10.0.0.67", 10.0) == 0

    def test_success_clears_the_account_but_not_the_address(self) -> None:
        t = SignInThrottle(ThrottleRules(free_per_account=0, free_per_address=0, base_s=5))
        t.failed("alice", "10.0.0.1", 0.0)
        t.succeeded("alice", "10.0.0.1")
        assert t.wait_s("alice", "10.0.0.2", 0.0) == 0
        assert t.wait_s("alice", "10.0.0.1", 0.0) == pytest.approx(5.0)

    def test_failures_are_forgotten_after_a_quiet_hour(self) -> None:
        t = SignInThrottle(ThrottleRules(free_per_account=1, base_s=10, forget_after_s=3600))
        t.failed("alice", "a", 0.0)
        t.failed("alice", "a", 0.0)
        t.failed("alice", "a", 4000.0)  # first of a new count: free again
        assert t.wait_s("alice", "b", 4000.0) == 0

    def test_the_map_is_bounded_and_forgets_the_oldest_failure_first(self) -> None:
        t = SignInThrottle(ThrottleRules(free_per_account=0, base_s=9, max_keys=4))
        t.failed("old", "a1", 0.0)  # 2 keys
        t.failed("mid", "a2", 1.0)  # 4 keys
        t.failed("new", "a3", 2.0)  # evicts old's two keys
        assert len(t) == 4
        assert t.evicted_at_bound == 2
        assert t.wait_s("old", "x", 2.0) == 0
        assert t.wait_s("mid", "x", 2.0) > 0
        assert t.wait_s("new", "x", 2.0) > 0


class TestRoles:
    """Roles are ranked: a page needing a role admits that role and those above."""

    def test_ranked_roles(self) -> None:
        box = RolePolicy(("teacher", "it"))
        assert box.allows("it", "teacher")
        assert box.allows("teacher", "teacher")
        assert not box.allows("teacher", "it")
        assert not box.allows("intruder", "teacher")

    def test_a_page_naming_an_unknown_role_is_a_programming_error(self) -> None:
        with pytest.raises(ConfigError):
            RolePolicy(("viewer", "operator", "admin")).allows("admin", "root")
        with pytest.raises(ConfigError):
            RolePolicy(("a", "a"))


class TestLanguage:
    """French unless asked otherwise: ?lang=, then cookie, then Accept-Language."""

    def test_order_of_choice(self) -> None:
        assert choose_language(None, None, "") == "fr"
        assert choose_language(None, None, "de-DE,de;q=0.9") == "fr"
        assert choose_language(None, None, "en-GB,en;q=0.8,fr;q=0.5") == "en"
        assert choose_language(None, None, "fr;q=0.9, en;q=0.8") == "fr"
        assert choose_language(None, "en", "fr") == "en"
        assert choose_language("fr", "en", "en") == "fr"
        assert choose_language("xx", "nonsense", "en") == "en"

    def test_accept_language_weights(self) -> None:
        assert parse_accept_language("en;q=0.1, fr-CA, de;q=0") == ["fr", "en"]
        assert parse_accept_language("*, en;q=bad") == []


class TestPasswords:
    """scrypt hashes: salted, self-describing, malformed ones never match."""

    def test_right_and_wrong(self) -> None:
        stored = hash_password("correct horse battery", CHEAP)
        assert stored.startswith("scrypt$10$8$1$")
        assert verify_password("correct horse battery", stored)
        assert not verify_password("correct horse batterY", stored)
        assert hash_password("correct horse battery", CHEAP) != stored  # salted

    def test_malformed_hashes_never_match(self) -> None:
        for stored in ("", "plain", "scrypt$10$8$1$!!$!!", "scrypt$40$8$1$AA==$AA==", "md5$x"):
            assert not verify_password("x", stored)

    def test_new_password_rules(self) -> None:
        assert password_problem("short") is not None
        assert password_problem("long enough pass") is None
        assert password_problem("x" * 2000) is not None

    def test_session_tokens_are_stored_hashed(self) -> None:
        assert token_hash("abc") != "abc" and len(token_hash("abc")) == 64


def test_sign_in_redirects_only_to_local_paths() -> None:
    assert safe_next("/tablets?group=5A", "/") == "/tablets?group=5A"
    for bad in (None, "", "https://evil.example/", "//evil.example/x", "/\\evil", "tablets"):
        assert safe_next(bad, "/") == "/"
