"""The web stack both consoles stand on: pages, sign-in, sessions, CSRF, roles.

A console builds one :class:`WebStack` with its storage (gateway.web.accounts'
protocols), its roles, its templates and catalogues, then calls
:meth:`WebStack.install` on its aiohttp application and guards each handler
with :func:`requires`. What the stack does on every request outside the
``exempt`` path prefixes (e.g. the box's bearer-token ``/api/`` and the
tablets' ``/content/``):

1. picks the language (``?lang=``, which also sets the ``lang`` cookie, then
   the cookie, then Accept-Language, then French);
2. loads the session from its cookie (HttpOnly, SameSite=Strict, Secure when
   ``WebSettings.secure_cookies``): the cookie holds a random token, storage
   its SHA-256; an expired or unknown session is no session;
3. refuses with 403 any POST/PUT/PATCH/DELETE whose ``csrf_token`` form field
   (or ``X-CSRF-Token`` header) is not the session's token; before sign-in,
   the sign-in form is checked against a random cookie of its own (double
   submit), so no request from another site can sign someone in either;
4. adds security headers (a CSP allowing only this origin's files, no
   framing, no sniffing, no referrer beyond this origin).

Sign-in: ``GET/POST /signin``, ``POST /signout``. A wrong password (or an
unknown name: same answer, same time) opens no session and counts in the
throttle (gateway.web.throttle); a throttled attempt is answered 429 without
checking the password.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web
from markupsafe import Markup

from gateway.web.accounts import (
    AccountStore,
    Principal,
    RolePolicy,
    SessionStore,
    StoredSession,
    new_token,
    token_hash,
)
from gateway.web.i18n import (
    LANGUAGE_NAMES,
    LANGUAGES,
    N_,
    WEB_DOMAIN,
    WEB_LOCALE_DIR,
    CatalogueSource,
    choose_language,
    load_translations,
)
from gateway.web.passwords import hash_password, verify_password
from gateway.web.throttle import SignInThrottle, ThrottleRules

log = logging.getLogger(__name__)

WEB_TEMPLATES = Path(__file__).parent / "templates"
WEB_STATIC = Path(__file__).parent / "static"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
LANG_COOKIE = "lang"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
SignInHook = Callable[[str, str, bool], Awaitable[None]]
ContextHook = Callable[[web.Request], Awaitable[Mapping[str, Any]]]

# A hash to check unknown names against, so they cost the same time as known ones.
_DUMMY_HASH = hash_password("not a password of anyone")


@dataclass(frozen=True)
class WebSettings:
    """How one console's sessions and sign-in behave."""

    cookie_name: str  # distinct per console: cookies are shared across ports of a host
    secure_cookies: bool = False  # True behind TLS (the cookie then never goes over plain HTTP)
    session_lifetime_s: float = 12 * 3600.0
    max_sessions_per_account: int = 20
    throttle: ThrottleRules = field(default_factory=ThrottleRules)
    exempt_prefixes: tuple[str, ...] = ()  # paths the stack leaves alone (bearer APIs, files)
    # Forms posted before sign-in besides /signin (e.g. a first set-up page): they are
    # checked against the pre-session cookie; render them with render_public_form().
    public_forms: tuple[str, ...] = ()
    home_path: str = "/"


WEB_STACK: web.AppKey[WebStack] = web.AppKey("web_stack")
PRINCIPAL: web.RequestKey[Principal | None] = web.RequestKey("web_principal")
LANGUAGE: web.RequestKey[str] = web.RequestKey("web_language")
SIGNIN_CSRF: web.RequestKey[str] = web.RequestKey("web_signin_csrf")


def _static_version(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def redirect(location: str) -> web.Response:
    """A 303 See Other to ``location`` (returned, so the middleware still adds its headers)."""
    return web.Response(status=303, headers={"Location": location})


def safe_next(target: str | None, home: str) -> str:
    """Where to go after sign-in: a local path only (no scheme, no //host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return home
    return target


class WebStack:
    """Templates, translations, sessions and checks for one console (see module doc)."""

    def __init__(
        self,
        *,
        settings: WebSettings,
        accounts: AccountStore,
        sessions: SessionStore,
        roles: RolePolicy,
        site_name: str,
        templates: Sequence[Path] = (),
        catalogues: Sequence[CatalogueSource] = (),
        static: Mapping[str, Path] | None = None,
        on_sign_in: SignInHook | None = None,
        page_context: ContextHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        self.sessions = sessions
        self.roles = roles
        self.site_name = site_name
        self.throttle = SignInThrottle(settings.throttle)
        self.clock = clock
        self._on_sign_in = on_sign_in
        self._page_context = page_context
        self.static_dirs: dict[str, Path] = {"web": WEB_STATIC, **(static or {})}
        self._static_versions: dict[tuple[str, str], str] = {}
        translations = load_translations(
            [*catalogues, CatalogueSource(WEB_LOCALE_DIR, WEB_DOMAIN)], LANGUAGES
        )
        loader = jinja2.ChoiceLoader(
            [jinja2.FileSystemLoader([str(p) for p in (*templates, WEB_TEMPLATES)])]
        )
        self.environments: dict[str, jinja2.Environment] = {}
        for language, catalogue in translations.items():
            env = jinja2.Environment(
                loader=loader,
                autoescape=True,
                extensions=["jinja2.ext.i18n"],
                undefined=jinja2.StrictUndefined,
                trim_blocks=True,
                lstrip_blocks=True,
            )
            env.install_gettext_translations(catalogue, newstyle=True)  # type: ignore[attr-defined]
            env.globals["static_url"] = self.static_url
            self.environments[language] = env
        self.translations = translations

    # --- installation

    def install(self, app: web.Application) -> None:
        """Add the middleware, the sign-in routes and the static files to ``app``."""
        app[WEB_STACK] = self
        app.middlewares.append(self._middleware)
        app.router.add_get("/signin", self._signin_page, name="signin")
        app.router.add_post("/signin", self._signin)
        app.router.add_post("/signout", self._signout, name="signout")
        for name, directory in self.static_dirs.items():
            app.router.add_static(f"/static/{name}/", directory, name=f"static-{name}")

    def static_url(self, name: str, filename: str) -> str:
        """The URL of a vendored file, versioned by its content (cached for a year)."""
        key = (name, filename)
        version = self._static_versions.get(key)
        if version is None:
            version = _static_version(self.static_dirs[name] / filename)
            self._static_versions[key] = version
        return f"/static/{name}/{quote(filename)}?v={version}"

    # --- rendering

    def gettext(self, request: web.Request, msgid: str) -> str:
        return self.translations[language_of(request)].gettext(msgid)

    async def render(
        self,
        request: web.Request,
        template: str,
        context: Mapping[str, Any] | None = None,
        *,
        status: int = 200,
    ) -> web.Response:
        language = language_of(request)
        principal = principal_of(request)
        csrf = principal.csrf_token if principal else request.get(SIGNIN_CSRF, "")
        values: dict[str, Any] = {
            "lang": language,
            "languages": [(code, LANGUAGE_NAMES[code]) for code in LANGUAGES],
            "principal": principal,
            "site_name": self.site_name,
            "request_path": request.path,
            "request_query": request.query_string,
            "csrf_token": csrf,
            "csrf_field": Markup('<input type="hidden" name="{}" value="{}">').format(
                CSRF_FIELD, csrf
            ),
            "allows": (
                (lambda required: self.roles.allows(principal.role, required))
                if principal
                else (lambda required: False)
            ),
        }
        if self._page_context is not None and principal is not None:
            values.update(await self._page_context(request))
        values.update(context or {})
        body = self.environments[language].get_template(template).render(values)
        response = web.Response(text=body, status=status, content_type="text/html")
        response.headers["Content-Language"] = language
        return response

    async def error_page(self, request: web.Request, status: int, message: str) -> web.Response:
        """A page saying what went wrong (``message`` is a msgid, translated here)."""
        return await self.render(
            request,
            "error.html",
            {"status": status, "message": self.gettext(request, message)},
            status=status,
        )

    # --- the middleware

    def _exempt(self, path: str) -> bool:
        return any(path.startswith(prefix) for prefix in self.settings.exempt_prefixes)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._exempt(request.path):
            return await handler(request)
        query_lang = request.query.get("lang")
        request[LANGUAGE] = choose_language(
            query_lang,
            request.cookies.get(LANG_COOKIE),
            request.headers.get("Accept-Language", ""),
        )
        request[PRINCIPAL] = await self._load_principal(request)
        if request.method in UNSAFE_METHODS and not await self._csrf_ok(request):
            log.warning("refused %s %s: missing or wrong CSRF token", request.method, request.path)
            response: web.StreamResponse = await self.error_page(
                request,
                403,
                N_(
                    "This form has expired or did not come from this site. "
                    "Reload the page and try again."
                ),
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPNotFound:
                response = await self.error_page(request, 404, N_("This page does not exist."))
        if query_lang in LANGUAGES:
            response.set_cookie(
                LANG_COOKIE,
                query_lang,
                max_age=365 * 86400,
                httponly=True,
                samesite="Strict",
                secure=self.settings.secure_cookies,
            )
        if not request.path.startswith("/static/"):
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
            response.headers.setdefault("Cache-Control", "no-store")
        else:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    async def _load_principal(self, request: web.Request) -> Principal | None:
        token = request.cookies.get(self.settings.cookie_name)
        if not token or len(token) > 200:
            return None
        hashed = token_hash(token)
        session = await self.sessions.session(hashed)
        if session is None or session.expires <= self.clock():
            return None
        account = await self.accounts.account(session.account)
        if account is None or account.disabled:
            return None
        return Principal(account.name, account.role, session.csrf_token, hashed)

    async def _csrf_ok(self, request: web.Request) -> bool:
        principal = principal_of(request)
        if principal is not None:
            expected = principal.csrf_token
        elif request.path == "/signin" or request.path in self.settings.public_forms:
            expected = request.cookies.get(self._signin_cookie, "")
        else:
            expected = ""
        given = request.headers.get(CSRF_HEADER, "")
        if not given and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            form = await request.post()
            value = form.get(CSRF_FIELD, "")
            given = value if isinstance(value, str) else ""
        return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())

    # --- sign-in and sign-out

    @property
    def _signin_cookie(self) -> str:
        return f"{self.settings.cookie_name}_signin"

    def _set_cookie(
        self, response: web.StreamResponse, name: str, value: str, max_age: float | None
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=int(max_age) if max_age is not None else None,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.settings.secure_cookies,
        )

    async def render_public_form(
        self,
        request: web.Request,
        template: str,
        context: Mapping[str, Any] | None = None,
        *,
        status: int = 200,
    ) -> web.Response:
        """A page with a form posted before sign-in, carrying the pre-session CSRF token."""
        token = request.cookies.get(self._signin_cookie) or new_token()
        request[SIGNIN_CSRF] = token
        response = await self.render(request, template, context, status=status)
        self._set_cookie(response, self._signin_cookie, token, 3600)
        return response

    async def _signin_page(
        self, request: web.Request, *, status: int = 200, problem: str = ""
    ) -> web.Response:
        if principal_of(request) is not None and request.method == "GET":
            return redirect(safe_next(request.query.get("next"), self.settings.home_path))
        return await self.render_public_form(
            request,
            "signin.html",
            {
                "next": safe_next(request.query.get("next"), self.settings.home_path),
                "problem": problem,
                "name": "",
            },
            status=status,
        )

    async def _signin(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        name = str(form.get("name", ""))[:200].strip()
        password = str(form.get("password", ""))
        target = safe_next(str(form.get("next", "")), self.settings.home_path)
        address = request.remote or "unknown"
        now = self.clock()
        wait = self.throttle.wait_s(name, address, now)
        if wait > 0:
            log.warning("sign-in for %r from %s refused: throttled %.0f s", name, address, wait)
            message = self.gettext(
                request, N_("Too many failed attempts. Try again in %(seconds)d seconds.")
            ) % {"seconds": max(1, round(wait))}
            response = await self._signin_page(request, status=429, problem=message)
            response.headers["Retry-After"] = str(max(1, round(wait)))
            return response
        account = await self.accounts.account(name) if name else None
        stored = account.password_hash if account and not account.disabled else _DUMMY_HASH
        matches = await asyncio.to_thread(verify_password, password, stored)
        if account is None or account.disabled or not matches:
            self.throttle.failed(name, address, now)
            log.warning("failed sign-in for %r from %s", name, address)
            if self._on_sign_in is not None:
                await self._on_sign_in(name, address, False)
            return await self._signin_page(
                request, status=401, problem=self.gettext(request, N_("Wrong name or password."))
            )
        self.throttle.succeeded(name, address)
        token = new_token()
        session = StoredSession(
            token_hash=token_hash(token),
            account=account.name,
            csrf_token=new_token(),
            created=now,
            expires=now + self.settings.session_lifetime_s,
        )
        await self.sessions.create_session(
            session, max_per_account=self.settings.max_sessions_per_account, now=now
        )
        log.info("%s signed in from %s", account.name, address)
        if self._on_sign_in is not None:
            await self._on_sign_in(account.name, address, True)
        response = redirect(target)
        self._set_cookie(
            response, self.settings.cookie_name, token, self.settings.session_lifetime_s
        )
        response.del_cookie(self._signin_cookie, path="/")
        return response

    async def _signout(self, request: web.Request) -> web.StreamResponse:
        principal = principal_of(request)
        if principal is not None:
            await self.sessions.delete_session(principal.token_hash)
        response = redirect("/signin")
        response.del_cookie(self.settings.cookie_name, path="/")
        return response


def stack_of(request: web.Request) -> WebStack:
    return request.config_dict[WEB_STACK]


def principal_of(request: web.Request) -> Principal | None:
    return request.get(PRINCIPAL)


def language_of(request: web.Request) -> str:
    language: str = request.get(LANGUAGE, LANGUAGES[0])
    return language


def requires(role: str) -> Callable[[H], H]:
    """Guard a handler: no session -> the sign-in page (GET) or 401; a lower role -> 403."""

    def decorate(handler: H) -> H:
        @wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            stack = stack_of(request)
            principal = principal_of(request)
            if principal is None:
                if request.method == "GET":
                    return redirect("/signin?" + urlencode({"next": request.path_qs}))
                return await stack.error_page(request, 401, N_("Please sign in again."))
            if not stack.roles.allows(principal.role, role):
                log.warning(
                    "%s (%s) refused %s %s",
                    principal.name,
                    principal.role,
                    request.method,
                    request.path,
                )
                return await stack.error_page(
                    request, 403, N_("Your account does not give access to this page.")
                )
            return await handler(request)

        return guarded  # type: ignore[return-value]

    return decorate
