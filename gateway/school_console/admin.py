"""The IT contact's pages that change things: enrollment, revocation, accounts, USB import,
and the one-time set-up of the first IT-contact account."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from pathlib import Path

from aiohttp import web

from gateway.errors import GatewayError, RejectedInput
from gateway.school_console.accounts import (
    IT_CONTACT,
    ROLES,
    TEACHER,
    check_account_name,
    parse_groups,
)
from gateway.school_console.common import accounts_of, form_text, services_of
from gateway.school_console.qr import qr_svg
from gateway.school_console.setup import read_setup_code, remove_setup_code
from gateway.security import registry
from gateway.security.enrollment import enrollment_url
from gateway.web.i18n import N_
from gateway.web.passwords import hash_password, password_problem
from gateway.web.stack import principal_of, redirect, requires, stack_of

log = logging.getLogger(__name__)

MAX_TOKENS_AT_ONCE = 40


def _notice(location: str, key: str) -> web.Response:
    return redirect(f"{location}?done={key}")


# --- enrollment


@requires(IT_CONTACT)
async def enrollment(request: web.Request) -> web.StreamResponse:
    box = services_of(request)
    enrolled = await registry.list_tablets(box.db)
    rows = await box.db.fetch_all("SELECT device_id, online FROM shadow")
    online = {r[0]: bool(r[1]) for r in rows}
    groups = sorted({t.group for t in enrolled if t.group})
    return await stack_of(request).render(
        request,
        "enrollment.html",
        {
            "enrolled": enrolled,
            "online": online,
            "groups": groups,
            "secure": box.ca_fingerprint is not None,
            "ttl_s": box.config.enrollment.token_ttl_s,
            "done": request.query.get("done", ""),
            "page": "enrollment",
        },
    )


def _advertised_host(request: web.Request, configured: str) -> str:
    """Where tablets reach the box: the configured name, else the one this browser used."""
    if configured:
        return configured
    host = request.url.host or "127.0.0.1"
    return host


@requires(IT_CONTACT)
async def create_tokens(request: web.Request) -> web.StreamResponse:
    box = services_of(request)
    stack = stack_of(request)
    form = await request.post()
    group = form_text(form, "group", 64)
    try:
        count = int(form_text(form, "count", 4) or "1")
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_TOKENS_AT_ONCE or box.ca_fingerprint is None:
        return await stack.error_page(request, 400, N_("Between 1 and 40 tokens at a time."))
    if group and (len(group) > 64 or not group.isprintable()):
        return await stack.error_page(request, 400, N_("The group name is not valid."))
    now = time.time()
    ttl = box.config.enrollment.token_ttl_s
    host = _advertised_host(request, box.config.enrollment.advertised_host)
    cards = []
    for index in range(count):
        secret = await registry.create_token(box.db, group=group, ttl_s=ttl, now=now)
        url = enrollment_url(host, box.config.enrollment.port, secret, box.ca_fingerprint)
        label = stack.gettext(request, N_("Enrollment QR code")) + f" {index + 1}"
        cards.append({"number": index + 1, "url": url, "secret": secret, "qr": qr_svg(url, label)})
    log.info("%d enrollment tokens made for group %r", count, group)
    return await stack.render(
        request,
        "sheet.html",
        {"cards": cards, "group": group, "expires": now + ttl, "page": "enrollment"},
    )


@requires(IT_CONTACT)
async def revoke(request: web.Request) -> web.StreamResponse:
    box = services_of(request)
    stack = stack_of(request)
    device_id = form_text(await request.post(), "device_id", 64)
    if box.revoke is None:
        return await stack.error_page(request, 400, N_("Revocation needs the secure broker."))
    try:
        result = await box.revoke(device_id)
    except RejectedInput:
        return await stack.error_page(request, 404, N_("No enrolled tablet has this name."))
    principal = principal_of(request)
    log.info(
        "%s revoked tablet %s from the console (session closed: %s)",
        principal.name if principal else "?",
        device_id,
        result.session_closed,
    )
    return _notice("/enrollment", "revoked" if result.broker_reloaded else "revoke_pending")


# --- accounts


@requires(IT_CONTACT)
async def accounts_page(request: web.Request) -> web.StreamResponse:
    return await stack_of(request).render(
        request,
        "accounts.html",
        {
            "accounts": await accounts_of(request).list_accounts(),
            "roles": ROLES.ranked,
            "done": request.query.get("done", ""),
            "problem": "",
            "page": "accounts",
        },
    )


async def _account_problem(request: web.Request, problem: str) -> web.Response:
    stack = stack_of(request)
    return await stack.render(
        request,
        "accounts.html",
        {
            "accounts": await accounts_of(request).list_accounts(),
            "roles": ROLES.ranked,
            "done": "",
            "problem": stack.gettext(request, problem),
            "page": "accounts",
        },
        status=400,
    )


@requires(IT_CONTACT)
async def account_action(request: web.Request) -> web.StreamResponse:
    """One form per action: create, password, groups, delete (field ``do``)."""
    form = await request.post()
    accounts = accounts_of(request)
    principal = principal_of(request)
    actor = principal.name if principal else "?"
    do = form_text(form, "do", 20)
    name = form_text(form, "name", 40)
    try:
        if do == "create":
            role = form_text(form, "role", 20)
            if role not in (TEACHER, IT_CONTACT):
                return await _account_problem(request, N_("Choose a role."))
            password = form_text(form, "password", 1024)
            problem = password_problem(password)
            if problem:
                return await _account_problem(request, problem)
            check_account_name(name)
            hashed = await asyncio.to_thread(hash_password, password)
            await accounts.create(
                name, role, hashed, parse_groups(form_text(form, "groups")), created_by=actor
            )
        elif do == "password":
            password = form_text(form, "password", 1024)
            problem = password_problem(password)
            if problem:
                return await _account_problem(request, problem)
            await accounts.set_password(name, await asyncio.to_thread(hash_password, password))
        elif do == "groups":
            await accounts.set_groups(name, parse_groups(form_text(form, "groups")))
        elif do == "delete":
            await accounts.delete(name)
        else:
            return await _account_problem(request, N_("Unknown action."))
    except RejectedInput as exc:
        return await _account_problem(request, _ACCOUNT_PROBLEMS.get(exc.reason, N_("Refused.")))
    log.info("%s: account %s %s", actor, name, do)
    return _notice("/accounts", do)


_ACCOUNT_PROBLEMS = {
    "bad_name": N_("A name is 2 to 40 characters: lowercase letters, digits, dot, dash."),
    "name_taken": N_("An account with this name exists already."),
    "too_many": N_("There are too many accounts."),
    "bad_group": N_("A group name is too long or not valid."),
    "unknown_account": N_("There is no such account."),
    "last_it_contact": N_("The last IT-contact account cannot be deleted."),
    "bad_role": N_("Choose a role."),
}


# --- USB import


@requires(IT_CONTACT)
async def start_import(request: web.Request) -> web.StreamResponse:
    box = services_of(request)
    stack = stack_of(request)
    folder = Path(form_text(await request.post(), "folder", 4096))
    roots = [Path(r) for r in box.config.console.import_roots]
    if box.cache is None:
        return await stack.error_page(request, 400, N_("This box has no update cache."))
    resolved = await asyncio.to_thread(folder.resolve)
    if not folder.is_absolute() or not any(resolved.is_relative_to(r) for r in roots):
        return await stack.error_page(
            request, 400, N_("The folder must be on a USB stick (under one of the folders shown).")
        )
    box.start_import(resolved)
    return redirect("/updates")


# --- the first IT-contact account


async def setup_page(request: web.Request) -> web.StreamResponse:
    stack = stack_of(request)
    if read_setup_code(services_of(request).config.gateway.state_dir) is None:
        return await stack.error_page(request, 404, N_("The console is set up already: sign in."))
    return await stack.render_public_form(request, "setup.html", {"problem": ""})


async def setup(request: web.Request) -> web.StreamResponse:
    """Create the first IT-contact account with the one-time code `status` printed."""
    stack = stack_of(request)
    box = services_of(request)
    state_dir = box.config.gateway.state_dir
    expected = read_setup_code(state_dir)
    if expected is None:
        return await stack.error_page(request, 404, N_("The console is set up already: sign in."))
    form = await request.post()
    address = request.remote or "unknown"
    now = time.time()
    wait = stack.throttle.wait_s("setup-code", address, now)

    async def again(problem: str, status: int) -> web.Response:
        return await stack.render_public_form(
            request, "setup.html", {"problem": stack.gettext(request, problem)}, status=status
        )

    if wait > 0:
        return await again(N_("Too many wrong codes. Wait a few minutes."), 429)
    code = form_text(form, "code", 100).replace(" ", "").replace("-", "").upper()
    if not hmac.compare_digest(code.encode(), expected.encode()):
        stack.throttle.failed("setup-code", address, now)
        log.warning("wrong console set-up code from %s", address)
        return await again(N_("This is not the set-up code."), 401)
    name = form_text(form, "name", 40)
    password = form_text(form, "password", 1024)
    problem = password_problem(password)
    if problem:
        return await again(problem, 400)
    try:
        check_account_name(name)
        hashed = await asyncio.to_thread(hash_password, password)
        await accounts_of(request).create(name, IT_CONTACT, hashed, created_by="set-up code")
    except (RejectedInput, GatewayError):
        return await again(
            N_("A name is 2 to 40 characters: lowercase letters, digits, dot, dash."), 400
        )
    remove_setup_code(state_dir)
    log.info("first IT-contact account %s created with the set-up code", name)
    return redirect("/signin")
