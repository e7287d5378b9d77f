"""The academy's web console and its JSON API, on the shared web stack (gateway/web).

Pages (server-rendered, French first), each with a JSON twin under ``/api/``
behind the same sign-in (a session cookie; a state-changing API call carries
the session's CSRF token in ``X-CSRF-Token``):

    /                       every school, what needs attention first     viewer
    /schools/<id>           one school: box health, uplink, tablets      viewer
    /commands               recent commands; compose (operator)          viewer
    POST /commands/preview  who an order will reach                       operator
    POST /commands          sign and send it                              operator
    /commands/<id>          live progress per school and in total         viewer
    POST /commands/<id>/publish  publish again what did not go out        operator
    /ingest                 the workers' counters, refused payloads       viewer
    /accounts               accounts and roles                            admin

Roles are ranked viewer < operator < admin (gateway.academy.console.accounts).
Every sign-in, command and account change is written to the audit log.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.academy import commanding, views
from gateway.academy.config import AcademyConfig
from gateway.academy.console.accounts import ROLES, PostgresAccounts, list_accounts, set_account
from gateway.academy.store.database import create_pool
from gateway.commands.actions import ACTIONS
from gateway.errors import GatewayError, RejectedInput
from gateway.web.i18n import N_, CatalogueSource
from gateway.web.stack import WebSettings, WebStack, principal_of, redirect, requires, stack_of
from gateway.web.system_outcomes import OUTCOME_LABELS

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
CONFIG: web.AppKey[AcademyConfig] = web.AppKey("academy_config")
POOL: web.AppKey[asyncpg.Pool] = web.AppKey("academy_pool")
SIGNING_KEY: web.AppKey[list[Ed25519PrivateKey]] = web.AppKey("academy_signing_key")
SITE_NAME = N_("Academy console")
TARGET_LABELS = {"group": N_("a group"), "devices": N_("devices"), "all": N_("every tablet")}
ACTION_LABELS = {
    "lock": N_("Lock"),
    "unlock": N_("Unlock"),
    "message": N_("Show a message"),
    "open_url": N_("Open a web page"),
    "install_app": N_("Install an app"),
    "remove_app": N_("Remove an app"),
    "set_policy": N_("Set a policy"),
    "reboot": N_("Restart"),
    "wipe": N_("Wipe"),
    "request_state": N_("Ask for a state report"),
}
ATTENTION_LABELS = {
    "offline": N_("gateway offline"),
    "backlog": N_("messages waiting for over an hour"),
    "low_battery": N_("low battery"),
    "storage_low": N_("storage low"),
    "apps_out_of_date": N_("apps out of date"),
}


def _pool(request: web.Request) -> asyncpg.Pool:
    return request.config_dict[POOL]


def _config(request: web.Request) -> AcademyConfig:
    return request.config_dict[CONFIG]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda v: json.dumps(v, default=str))


def _wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/")


async def _page(
    request: web.Request, template: str, context: Mapping[str, Any], *, status: int = 200
) -> web.StreamResponse:
    if _wants_json(request):
        return _json(dict(context), status)
    values = {
        "action_labels": ACTION_LABELS,
        "attention_labels": ATTENTION_LABELS,
        "target_labels": TARGET_LABELS,
        "outcome_labels": OUTCOME_LABELS,
        **context,
    }
    return await stack_of(request).render(request, template, values, status=status)


# --- pages


@requires("viewer")
async def overview_page(request: web.Request) -> web.StreamResponse:
    query = views.OverviewQuery.from_params(request.query)
    async with _pool(request).acquire() as conn:
        data = await views.overview(
            conn, query, silent_s=_config(request).retention.gateway_silent_s
        )
    pages = max(1, -(-data["matching"] // data["per_page"]))
    return await _page(
        request,
        "academy_overview.html",
        {**data, "pages": pages, "sorts": list(views.SORTS), "filters": list(views.FILTERS)},
    )


@requires("viewer")
async def school_page(request: web.Request) -> web.StreamResponse:
    async with _pool(request).acquire() as conn:
        data = await views.school(
            conn,
            request.match_info["school_id"],
            silent_s=_config(request).retention.gateway_silent_s,
        )
    if data is None:
        raise web.HTTPNotFound()
    return await _page(request, "academy_school.html", data)


@requires("viewer")
async def commands_page(request: web.Request) -> web.StreamResponse:
    async with _pool(request).acquire() as conn:
        commands = await views.commands_list(conn)
    return await _page(request, "academy_commands.html", _compose_context(request, commands))


def _compose_context(
    request: web.Request,
    commands: list[dict[str, Any]],
    *,
    form: Mapping[str, Any] | None = None,
    problem: str = "",
) -> dict[str, Any]:
    principal = principal_of(request)
    return {
        "commands": commands,
        "may_send": principal is not None and ROLES.allows(principal.role, "operator"),
        "actions": list(ACTIONS),
        "action_fields": commanding.ACTION_FIELDS,
        "form": _form_values(form),
        "problem": problem,
        "default_ttl": f"{_config(request).console.default_ttl_s}s",
    }


def _form_values(form: Mapping[str, Any] | None) -> dict[str, str]:
    if form is None:
        return {}
    values: dict[str, str] = {}
    getall = getattr(form, "getall", None)
    for key in form:
        items = getall(key) if getall is not None else [form[key]]
        values[key] = "\n".join(v for v in items if isinstance(v, str))
    return values


async def _order(request: web.Request) -> tuple[Any, commanding.CommandOrder | None, str]:
    form = await request.post()
    try:
        order = commanding.parse_order(form, max_ttl_s=_config(request).console.max_ttl_s)
    except RejectedInput as exc:
        return form, None, exc.detail
    return form, order, ""


@requires("operator")
async def preview_command(request: web.Request) -> web.StreamResponse:
    form, order, problem = await _order(request)
    async with _pool(request).acquire() as conn:
        if order is None:
            commands = await views.commands_list(conn)
            return await _page(
                request,
                "academy_commands.html",
                _compose_context(request, commands, form=form, problem=problem),
                status=400,
            )
        reach = await commanding.reach(conn, order)
    return await _page(
        request,
        "academy_preview.html",
        {"order": order, "reach": reach, "form": _form_values(form)},
    )


@requires("operator")
async def send_command(request: web.Request) -> web.StreamResponse:
    form, order, problem = await _order(request)
    principal = principal_of(request)
    assert principal is not None
    keys = request.config_dict[SIGNING_KEY]
    async with _pool(request).acquire() as conn:
        if order is not None:
            try:
                if not keys:
                    raise RejectedInput("no_key", "the academy key is not installed on the server")
                command_id = await commanding.send(
                    conn,
                    _config(request),
                    order,
                    actor=principal.name,
                    address=request.remote or "",
                    key=keys[0],
                )
            except RejectedInput as exc:
                problem = exc.detail
            else:
                if _wants_json(request):
                    return _json({"command_id": command_id}, 201)
                return redirect(f"/commands/{command_id}")
        commands = await views.commands_list(conn)
    return await _page(
        request,
        "academy_commands.html",
        _compose_context(request, commands, form=form, problem=problem),
        status=400,
    )


@requires("viewer")
async def command_page(request: web.Request) -> web.StreamResponse:
    async with _pool(request).acquire() as conn:
        data = await views.command_detail(conn, request.match_info["command_id"])
    if data is None:
        raise web.HTTPNotFound()
    principal = principal_of(request)
    data["may_send"] = principal is not None and ROLES.allows(principal.role, "operator")
    return await _page(request, "academy_command.html", data)


@requires("operator")
async def publish_again(request: web.Request) -> web.StreamResponse:
    command_id = request.match_info["command_id"]
    principal = principal_of(request)
    assert principal is not None
    async with _pool(request).acquire() as conn:
        count = await commanding.publish_again(conn, _config(request), command_id)
        await commanding.audit(
            conn,
            principal.name,
            request.remote or "",
            "command.publish_again",
            {"command_id": command_id, "schools": count},
        )
    return redirect(f"/commands/{command_id}")


@requires("viewer")
async def ingest_page(request: web.Request) -> web.StreamResponse:
    async with _pool(request).acquire() as conn:
        workers = [
            {**dict(r), "counters": json.loads(r["counters"])}
            for r in await conn.fetch(
                "SELECT worker, pid, started_at, updated_at, counters FROM ingest_workers"
                " ORDER BY worker"
            )
        ]
        refused = [
            dict(r)
            for r in await conn.fetch(
                "SELECT worker, topic, reason, detail, size, received_at FROM refused_payloads"
                " ORDER BY id DESC LIMIT 50"
            )
        ]
    return await _page(request, "academy_ingest.html", {"workers": workers, "refused": refused})


@requires("admin")
async def accounts_page(request: web.Request) -> web.StreamResponse:
    return await _accounts(request)


async def _accounts(
    request: web.Request, *, problem: str = "", notice: str = "", status: int = 200
) -> web.StreamResponse:
    async with _pool(request).acquire() as conn:
        accounts = await list_accounts(conn)
    return await _page(
        request,
        "academy_accounts.html",
        {"accounts": accounts, "roles": list(ROLES.ranked), "problem": problem, "notice": notice},
        status=status,
    )


@requires("admin")
async def save_account(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    principal = principal_of(request)
    assert principal is not None
    name = str(form.get("name", ""))
    role = str(form.get("role", ""))
    password = str(form.get("password", "")) or None
    disabled = form.get("disabled") == "on"
    try:
        async with _pool(request).acquire() as conn, conn.transaction():
            await set_account(conn, name, role, password, disabled=disabled)
            await commanding.audit(
                conn,
                principal.name,
                request.remote or "",
                "account.save",
                {
                    "name": name,
                    "role": role,
                    "password_changed": password is not None,
                    "disabled": disabled,
                },
            )
    except RejectedInput as exc:
        return await _accounts(
            request, problem=stack_of(request).gettext(request, exc.detail), status=400
        )
    return await _accounts(request, notice=N_("The account is saved."))


# --- assembly


def build_stack(config: AcademyConfig, pool: asyncpg.Pool) -> WebStack:
    store = PostgresAccounts(pool)

    async def on_sign_in(name: str, address: str, succeeded: bool) -> None:
        async with pool.acquire() as conn:
            await commanding.audit(
                conn, name or "?", address, "signin" if succeeded else "signin.failed", {}
            )

    return WebStack(
        settings=WebSettings(
            cookie_name="academy_session",
            secure_cookies=config.console.secure_cookies,
            session_lifetime_s=config.console.session_ttl_s,
        ),
        accounts=store,
        sessions=store,
        roles=ROLES,
        site_name=SITE_NAME,
        templates=[HERE / "templates"],
        catalogues=[CatalogueSource(HERE / "locale", "academy")],
        on_sign_in=on_sign_in,
    )


def build_app(config: AcademyConfig, pool: asyncpg.Pool) -> web.Application:
    """The console's aiohttp application (the caller owns ``pool``)."""
    app = web.Application(client_max_size=256 * 1024)
    app[CONFIG] = config
    app[POOL] = pool
    app[SIGNING_KEY] = []
    try:
        app[SIGNING_KEY].append(commanding.load_signing_key(config.console.key_file))
    except GatewayError as exc:
        log.warning("console: commands cannot be sent: %s", exc)
    build_stack(config, pool).install(app)
    for prefix in ("", "/api"):
        app.router.add_get(f"{prefix}/" if prefix else "/", overview_page)
        app.router.add_get(f"{prefix}/schools/{{school_id}}", school_page)
        app.router.add_get(f"{prefix}/commands", commands_page)
        app.router.add_post(f"{prefix}/commands/preview", preview_command)
        app.router.add_post(f"{prefix}/commands", send_command)
        app.router.add_get(f"{prefix}/commands/{{command_id}}", command_page)
        app.router.add_post(f"{prefix}/commands/{{command_id}}/publish", publish_again)
        app.router.add_get(f"{prefix}/ingest", ingest_page)
    app.router.add_get("/api/overview", overview_page)
    app.router.add_get("/accounts", accounts_page)
    app.router.add_post("/accounts", save_account)
    return app


async def run_console(config: AcademyConfig, started: asyncio.Event | None = None) -> None:
    """Serve the console on ``console.host:port`` until cancelled."""
    pool = await create_pool(config.database.dsn, size=config.database.console_pool_size)
    runner = web.AppRunner(build_app(config, pool), access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.console.host, config.console.port)
        await site.start()
        log.info("academy console on http://%s:%d/", config.console.host, config.console.port)
        if started is not None:
            started.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await pool.close()
