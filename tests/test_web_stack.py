"""The shared web stack on a real loopback HTTP server and in headless Chromium.

Storage here is a dict (each console brings its real store: the box's SQLite,
the academy's PostgreSQL, tested with their pages); everything else is the
real stack: cookies, CSRF, roles, throttle, templates, catalogues.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.lab.mosquitto import free_port
from gateway.web.accounts import Account, RolePolicy, StoredSession
from gateway.web.passwords import ScryptCost, hash_password
from gateway.web.stack import WebSettings, WebStack, principal_of, requires, stack_of
from gateway.web.throttle import ThrottleRules
from tests.browser import axe_check

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHEAP = ScryptCost(log2_n=10)
PASSWORD = "a long enough password"


@dataclass
class MemoryStore:
    """AccountStore + SessionStore over dicts (test double of a console's storage)."""

    accounts: dict[str, Account] = field(default_factory=dict)
    sessions: dict[str, StoredSession] = field(default_factory=dict)

    async def account(self, name: str) -> Account | None:
        return self.accounts.get(name)

    async def create_session(
        self, session: StoredSession, *, max_per_account: int, now: float
    ) -> None:
        self.sessions[session.token_hash] = session

    async def session(self, token_hash: str) -> StoredSession | None:
        return self.sessions.get(token_hash)

    async def delete_session(self, token_hash: str) -> None:
        self.sessions.pop(token_hash, None)


@requires("viewer")
async def home(request: web.Request) -> web.Response:
    principal = principal_of(request)
    assert principal is not None
    return await stack_of(request).render(
        request, "error.html", {"status": 200, "message": principal.name}
    )


@requires("viewer")
async def act(request: web.Request) -> web.Response:
    return web.Response(text="done")


@requires("admin")
async def admin(request: web.Request) -> web.Response:
    return web.Response(text="admin page")


@dataclass
class Site:
    url: str
    store: MemoryStore
    stack: WebStack


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site() -> AsyncIterator[Site]:
    store = MemoryStore()
    store.accounts["ada"] = Account("ada", "viewer", hash_password(PASSWORD, CHEAP))
    store.accounts["root"] = Account("root", "admin", hash_password(PASSWORD, CHEAP))
    store.accounts["gone"] = Account("gone", "admin", hash_password(PASSWORD, CHEAP), True)
    stack = WebStack(
        settings=WebSettings(
            cookie_name="test_session",
            throttle=ThrottleRules(free_per_account=3, free_per_address=1000, base_s=600),
            exempt_prefixes=("/api/",),
        ),
        accounts=store,
        sessions=store,
        roles=RolePolicy(("viewer", "operator", "admin")),
        site_name="Test console",
    )
    app = web.Application()
    stack.install(app)
    app.router.add_get("/", home)
    app.router.add_post("/act", act)
    app.router.add_get("/admin", admin)
    app.router.add_post("/api/thing", api_thing)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield Site(f"http://127.0.0.1:{port}", store, stack)
    await runner.cleanup()


async def api_thing(request: web.Request) -> web.Response:
    return web.Response(text="api ok")


def _hidden_csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


async def sign_in(
    client: aiohttp.ClientSession, url: str, name: str, password: str
) -> aiohttp.ClientResponse:
    async with client.get(f"{url}/signin") as page:
        token = _hidden_csrf(await page.text())
    async with client.post(
        f"{url}/signin",
        data={"name": name, "password": password, "csrf_token": token, "next": "/"},
        allow_redirects=False,
    ) as response:
        await response.read()
        return response


def _client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


class TestSignIn:
    """Sessions open only with the right password, and say so in French first."""

    async def test_pages_need_a_session_and_the_sign_in_page_is_french(self, site: Site) -> None:
        async with _client() as client:
            async with client.get(f"{site.url}/", allow_redirects=False) as r:
                assert r.status == 303
                assert r.headers["Location"] == "/signin?next=%2F"
            async with client.get(f"{site.url}/signin") as r:
                html = await r.text()
                assert '<html lang="fr">' in html and "Se connecter" in html
                assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
            async with client.get(f"{site.url}/signin?lang=en") as r:
                assert "Sign in" in await r.text()
            async with client.get(f"{site.url}/signin") as r:
                assert '<html lang="en">' in await r.text()  # the choice is remembered

    async def test_a_wrong_password_opens_no_session(self, site: Site) -> None:
        before = len(site.store.sessions)
        async with _client() as client:
            for name, password in (
                ("ada", "wrong password!"),
                ("nobody", PASSWORD),
                ("gone", PASSWORD),
            ):
                r = await sign_in(client, site.url, name, password)
                assert r.status == 401
                assert "test_session" not in r.cookies
            async with client.get(f"{site.url}/", allow_redirects=False) as r:
                assert r.status == 303
        assert len(site.store.sessions) == before

    async def test_the_right_password_opens_a_strict_httponly_session(self, site: Site) -> None:
        async with _client() as client:
            r = await sign_in(client, site.url, "ada", PASSWORD)
            assert r.status == 303
            cookie = r.cookies["test_session"]
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
            assert cookie.value not in {s.token_hash for s in site.store.sessions.values()}
            async with client.get(f"{site.url}/") as page:
                assert "ada" in await page.text()

    async def test_repeated_failures_are_refused_before_the_password_is_checked(
        self, site: Site
    ) -> None:
        site.stack.throttle = type(site.stack.throttle)(site.stack.settings.throttle)
        async with _client() as client:
            for _ in range(4):
                await sign_in(client, site.url, "root", "not the password")
            r = await sign_in(client, site.url, "root", PASSWORD)
            assert r.status == 429
            assert int(r.headers["Retry-After"]) > 0
            assert "test_session" not in r.cookies
        site.stack.throttle = type(site.stack.throttle)(site.stack.settings.throttle)


class TestForms:
    """CSRF on every state-changing request; roles on every page."""

    async def test_post_without_the_csrf_token_is_refused(self, site: Site) -> None:
        async with _client() as client:
            await sign_in(client, site.url, "ada", PASSWORD)
            async with client.get(f"{site.url}/") as page:
                token = _hidden_csrf(await page.text())
            async with client.post(f"{site.url}/act", data={}) as r:
                assert r.status == 403
            async with client.post(f"{site.url}/act", data={"csrf_token": "forged"}) as r:
                assert r.status == 403
            async with client.post(f"{site.url}/act", data={"csrf_token": token}) as r:
                assert r.status == 200 and await r.text() == "done"
            async with client.post(f"{site.url}/act", headers={"X-CSRF-Token": token}) as r:
                assert r.status == 200
            async with client.post(f"{site.url}/signin", data={"name": "ada"}) as r:
                assert r.status == 403  # the sign-in form has its own token too
            async with client.post(f"{site.url}/api/thing") as r:
                assert r.status == 200  # exempt prefixes are left to their own auth

    async def test_a_lower_role_gets_403(self, site: Site) -> None:
        async with _client() as client:
            await sign_in(client, site.url, "ada", PASSWORD)
            async with client.get(f"{site.url}/admin") as r:
                assert r.status == 403
                assert "Votre compte ne donne pas accès" in await r.text()
        async with _client() as client:
            await sign_in(client, site.url, "root", PASSWORD)
            async with client.get(f"{site.url}/admin") as r:
                assert r.status == 200

    async def test_sign_out_ends_the_session(self, site: Site) -> None:
        async with _client() as client:
            await sign_in(client, site.url, "ada", PASSWORD)
            async with client.get(f"{site.url}/") as page:
                token = _hidden_csrf(await page.text())
            async with client.post(f"{site.url}/signout", data={"csrf_token": token}) as r:
                assert r.status == 200  # followed to the sign-in page
            async with client.get(f"{site.url}/", allow_redirects=False) as r:
                assert r.status == 303


async def test_in_chromium_sign_in_and_no_serious_accessibility_violation(
    site: Site, browser: Any
) -> None:
    """A person signs in through the form on a phone-sized screen; axe-core finds nothing."""
    context = await browser.new_context(viewport={"width": 390, "height": 844}, locale="fr-FR")
    context.set_default_timeout(10_000)
    page = await context.new_page()
    await page.goto(f"{site.url}/")
    await axe_check(page)
    await page.get_by_label("Identifiant").fill("ada")
    await page.get_by_label("Mot de passe").fill(PASSWORD)
    await page.get_by_role("button", name="Se connecter").click()
    await page.wait_for_url(f"{site.url}/")
    await page.get_by_role("button", name="Se déconnecter").wait_for()
    await axe_check(page)
    await context.close()
