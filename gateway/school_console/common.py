"""Helpers every page of the console uses."""

from __future__ import annotations

from aiohttp import web

from gateway.commands.local import LocalActor
from gateway.school_console.accounts import IT_CONTACT, ConsoleAccounts
from gateway.school_console.services import BoxServices
from gateway.web.stack import principal_of

SERVICES: web.AppKey[BoxServices] = web.AppKey("school_console_services", BoxServices)
ACCOUNTS: web.AppKey[ConsoleAccounts] = web.AppKey("school_console_accounts", ConsoleAccounts)


def services_of(request: web.Request) -> BoxServices:
    return request.config_dict[SERVICES]


def accounts_of(request: web.Request) -> ConsoleAccounts:
    return request.config_dict[ACCOUNTS]


async def actor_of(request: web.Request) -> LocalActor:
    """The signed-in person as the local policy sees them."""
    principal = principal_of(request)
    if principal is None:
        raise web.HTTPUnauthorized()
    is_it = principal.role == IT_CONTACT
    groups = frozenset() if is_it else await accounts_of(request).groups_of(principal.name)
    return LocalActor(principal.name, principal.role, groups, may_act_on_any_group=is_it)


def form_text(form: object, name: str, limit: int = 2000) -> str:
    """A text field of a posted form, trimmed and bounded ("" when absent or a file)."""
    value = form.get(name, "") if hasattr(form, "get") else ""
    return value.strip()[:limit] if isinstance(value, str) else ""
