"""The actions a command may carry and the parameters each one takes (no I/O).

Every action has a fixed parameter schema; an unknown action, an unknown
parameter, a missing one or one of the wrong shape is RejectedInput naming
the field. ``set_policy`` is the exception: its parameters *are* the policy,
a small key/value set.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from gateway.errors import RejectedInput

PACKAGE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
POLICY_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_POLICY_KEYS = 32
MAX_POLICY_TEXT = 256
MAX_MESSAGE_TEXT = 1000
MAX_URL = 2048
MAX_VERSION = 64

Checker = Callable[[str, Any], None]


def _text(limit: int) -> Checker:
    def check(name: str, value: Any) -> None:
        if not isinstance(value, str) or not 0 < len(value) <= limit:
            raise RejectedInput("bad_field", f"params.{name} must be a string of 1-{limit} chars")

    return check


def _package(name: str, value: Any) -> None:
    if not isinstance(value, str) or len(value) > 255 or not PACKAGE.fullmatch(value):
        raise RejectedInput("bad_field", f"params.{name} must be an Android package name")


def _sha256(name: str, value: Any) -> None:
    if not isinstance(value, str) or not SHA256_HEX.fullmatch(value):
        raise RejectedInput("bad_field", f"params.{name} must be 64 lowercase hex digits")


def _url(name: str, value: Any) -> None:
    _text(MAX_URL)(name, value)
    if not value.startswith(("https://", "http://")):
        raise RejectedInput("bad_field", f"params.{name} must be an http(s) URL")


# action -> {parameter: checker}; every listed parameter is required.
ACTIONS: dict[str, dict[str, Checker]] = {
    "lock": {},
    "unlock": {},
    "message": {"text": _text(MAX_MESSAGE_TEXT)},
    "open_url": {"url": _url},
    "install_app": {"package": _package, "version": _text(MAX_VERSION), "sha256": _sha256},
    "remove_app": {"package": _package},
    "reboot": {},
    "wipe": {},
    "request_state": {},
    "set_policy": {},  # checked by _check_policy
}


def _check_policy(params: Mapping[str, Any]) -> None:
    if not 0 < len(params) <= MAX_POLICY_KEYS:
        raise RejectedInput("bad_field", f"set_policy needs 1-{MAX_POLICY_KEYS} policy keys")
    for key, value in params.items():
        if not POLICY_KEY.fullmatch(key):
            raise RejectedInput("bad_field", f"policy key {key[:40]!r} must match {POLICY_KEY}")
        if isinstance(value, bool) or (isinstance(value, int) and abs(value) < 2**53):
            continue
        if isinstance(value, str) and len(value) <= MAX_POLICY_TEXT:
            continue
        raise RejectedInput(
            "bad_field", f"params.{key} must be a boolean, an integer or a short string"
        )


def check_action(action: Any, params: Any) -> None:
    """Raise RejectedInput unless ``action`` is known and ``params`` fit it."""
    if not isinstance(action, str):
        raise RejectedInput("bad_field", "field 'action' must be a string")
    schema = ACTIONS.get(action)
    if schema is None:
        raise RejectedInput(
            "unknown_action", f"action {action[:40]!r} is not one of {sorted(ACTIONS)}"
        )
    if not isinstance(params, dict):
        raise RejectedInput("bad_field", "field 'params' must be an object")
    if action == "set_policy":
        _check_policy(params)
        return
    for name in params:
        if name not in schema:
            raise RejectedInput("bad_field", f"action {action} takes no parameter {name[:40]!r}")
    for name, check in schema.items():
        if name not in params:
            raise RejectedInput("missing_field", f"action {action} needs params.{name}")
        check(name, params[name])
