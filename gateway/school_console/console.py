"""Put the school console on the gateway's LAN HTTP application.

``install_console(app, services)`` adds the shared web stack (sign-in,
sessions, CSRF, roles, French-first catalogues) and the box's pages. The
bearer-token API (``/api/``), ``/metrics`` and the tablets' ``/content/`` stay
outside the stack, as they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.school_console import admin, classroom, pages
from gateway.school_console.accounts import ROLES, ConsoleAccounts
from gateway.school_console.common import ACCOUNTS, SERVICES
from gateway.school_console.formatting import formatter
from gateway.school_console.services import BoxServices
from gateway.web.i18n import N_, CatalogueSource
from gateway.web.stack import WebSettings, WebStack, language_of

HERE = Path(__file__).parent
COOKIE = "school_console"
EXEMPT = ("/api/", "/content/", "/metrics")
SITE_NAME = N_("School gateway")


# What a delivery's state and a command's action are called on the pages.
DELIVERY_STATES = {
    "pending": N_("waiting to be sent"),
    "sent": N_("sent"),
    "received": N_("received"),
    "done": N_("done"),
    "failed": N_("failed"),
    "expired": N_("expired"),
}
ACTIONS = {
    "lock": N_("lock"),
    "unlock": N_("unlock"),
    "message": N_("message"),
    "open_url": N_("open a web page"),
    "install_app": N_("install an app"),
    "remove_app": N_("remove an app"),
    "reboot": N_("restart"),
    "wipe": N_("wipe"),
    "request_state": N_("report now"),
    "set_policy": N_("set a policy"),
}


async def _page_context(request: web.Request) -> Mapping[str, Any]:
    return {
        "fmt": formatter(language_of(request)),
        "state_names": DELIVERY_STATES,
        "action_names": ACTIONS,
    }


def build_stack(services: BoxServices, accounts: ConsoleAccounts) -> WebStack:
    console = services.config.console
    return WebStack(
        settings=WebSettings(
            cookie_name=COOKIE,
            secure_cookies=console.secure_cookies,
            session_lifetime_s=console.session_lifetime_s,
            exempt_prefixes=EXEMPT,
            public_forms=("/setup",),
        ),
        accounts=accounts,
        sessions=accounts,
        roles=ROLES,
        site_name=SITE_NAME,
        templates=[HERE / "templates"],
        catalogues=[CatalogueSource(HERE / "locale", "school_console")],
        page_context=_page_context,
    )


def install_console(app: web.Application, services: BoxServices) -> WebStack:
    """Add the console to ``app`` (before it starts); return its stack."""
    accounts = ConsoleAccounts(services.db)
    app[SERVICES] = services
    app[ACCOUNTS] = accounts
    stack = build_stack(services, accounts)
    stack.install(app)
    app.cleanup_ctx.append(services.background)
    r = app.router
    r.add_get("/", pages.overview)
    r.add_get("/tablets", pages.tablets)
    r.add_get("/tablets/{device_id}", pages.tablet)
    r.add_get("/commands", pages.commands)
    r.add_get("/commands/{command_id}", pages.command)
    r.add_get("/updates", pages.updates)
    r.add_post("/updates/import", admin.start_import)
    r.add_get("/classroom", classroom.classroom)
    r.add_post("/classroom", classroom.act)
    r.add_get("/enrollment", admin.enrollment)
    r.add_post("/enrollment/tokens", admin.create_tokens)
    r.add_post("/enrollment/revoke", admin.revoke)
    r.add_get("/accounts", admin.accounts_page)
    r.add_post("/accounts", admin.account_action)
    r.add_get("/setup", admin.setup_page)
    r.add_post("/setup", admin.setup)
    return stack
