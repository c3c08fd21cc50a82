"""The account site: sign in and out, the list of homes, and the hand-off to them.

Threats this stops:

* Cross-site request forgery: every state-changing request is a POST whose
  ``Origin`` must be the account site's own.
* Open redirects: ``next`` is always a local path.
* Session fixation: a new session token is minted on every sign-in.
* Account enumeration: one answer for an unknown email and a wrong password.
* Password guessing: growing delays per account and network and a limit per
  network (:mod:`homeport.accounts.throttle`), answered with 429 and
  ``Retry-After``, the same for known and unknown addresses.
* Half-done sign-out: signing out also ends the tenant sessions this account
  session handed off, in the database and in the gate's cache.
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.errors import InvalidEmail
from homeport.accounts.identifiers import is_instance_id
from homeport.accounts.service import Accounts, SessionInfo
from homeport.accounts.throttle import account_key, network_key, retry_after, signin_keys
from homeport.relay.config import RelayConfig
from homeport.relay.gate import SessionGate
from homeport.relay.hub import TunnelHub
from homeport.relay.pages import Pages
from homeport.relay.tenant import redirect, safe_next

log = logging.getLogger(__name__)

ACCOUNT_COOKIE = "__Host-homeport_account"
MAX_FORM = 8 * 1024


class AccountSite:
    def __init__(
        self,
        config: RelayConfig,
        accounts: Accounts,
        hub: TunnelHub,
        gate: SessionGate,
        pages: Pages,
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.hub = hub
        self.gate = gate
        self.pages = pages
        self.router = web.UrlDispatcher()
        add = self.router.add_route
        add("GET", "/", self.home)
        add("GET", "/signin", self.signin_form)
        add("POST", "/signin", self.signin)
        add("POST", "/signout", self.signout)
        add("GET", "/connect", self.connect)
        add("GET", "/static/homeport.css", self.stylesheet)
        add("GET", "/healthz", self.healthz)
        add("GET", "/v1/tunnel", hub.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        match = await self.router.resolve(request)
        if match.http_exception is not None:
            status = match.http_exception.status
            title = "Not found" if status == 404 else "Not allowed"
            return self.pages.message(title, "There is nothing here.", status=status)
        response: web.StreamResponse = await match.handler(request)
        return response

    # --------------------------------------------------------------- helpers

    async def _session(self, request: web.Request) -> SessionInfo | None:
        token = request.cookies.get(ACCOUNT_COOKIE)
        if not token or len(token) > 256:
            return None
        return await self.accounts.resolve_session(token, kind="account")

    async def _user(self, request: web.Request) -> tuple[int, str] | None:
        info = await self._session(request)
        if info is None:
            return None
        return info.user_id, info.email

    def _same_origin(self, request: web.Request) -> bool:
        """CSRF check: POSTs must come from a page of the account site itself."""
        return request.headers.get("Origin") == self.config.account_origin

    # ---------------------------------------------------------------- routes

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def stylesheet(self, request: web.Request) -> web.StreamResponse:
        return self.pages.stylesheet()

    async def home(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request)
        if user is None:
            return redirect("/signin")
        instances = [
            {
                "name": inst.name,
                "url": self.config.tenant_origin(inst.id),
                "connected": self.hub.tunnel_for(inst.id) is not None,
            }
            for inst in await self.accounts.list_instances(user_id=user[0])
        ]
        return self.pages.render(
            "home.html", title="Your homes", user_email=user[1], instances=instances
        )

    async def signin_form(self, request: web.Request) -> web.StreamResponse:
        return self.pages.render(
            "signin.html",
            title="Sign in",
            next=safe_next(request.query.get("next")),
            email="",
            error=None,
        )

    async def signin(self, request: web.Request) -> web.StreamResponse:
        if not self._same_origin(request):
            return self.pages.message("Not allowed", "Cross-site request refused.", status=403)
        if (request.content_length or 0) > MAX_FORM:
            return self.pages.message("Too large", "The form is too large.", status=413)
        form = await request.post()
        email = str(form.get("email", ""))[:320]
        password = str(form.get("password", ""))
        next_path = safe_next(str(form.get("next", "/")))
        keys = signin_keys(email, request.remote)
        wait = await self.accounts.throttle.attempt(keys)
        if wait > 0:
            # Same answer whether or not the address has an account.
            log.warning("account.signin_throttled", extra={"ip": request.remote})
            response = self.pages.render(
                "signin.html",
                status=429,
                title="Sign in",
                next=next_path,
                email=email,
                error="Too many sign-in attempts. Wait a moment, then try again.",
            )
            response.headers["Retry-After"] = retry_after(wait)
            return response
        user = None
        try:
            user = await self.accounts.authenticate(email, password)
        except (InvalidEmail, ValueError):
            user = None
        if user is None:
            log.warning("account.signin_failed", extra={"ip": request.remote})
            return self.pages.render(
                "signin.html",
                status=401,
                title="Sign in",
                next=next_path,
                email=email,
                error="Wrong email or password.",
            )
        token, _ = await self.accounts.create_session(
            user,
            "account",
            user_agent=request.headers.get("User-Agent", ""),
            ip=request.remote or "",
        )
        net = network_key(request.remote)
        await self.accounts.throttle.succeeded(
            clear=[f"pw:pair:{account_key(email)}:{net}", f"pw:acct:{account_key(email)}"],
            refund=[f"pw:net:{net}"],
        )
        log.info("account.signin", extra={"user": user.id, "ip": request.remote})
        response = redirect(next_path)
        response.set_cookie(
            ACCOUNT_COOKIE, token, path="/", secure=True, httponly=True, samesite="Lax"
        )
        self.pages.secure(response)
        return response

    async def signout(self, request: web.Request) -> web.StreamResponse:
        if not self._same_origin(request):
            return self.pages.message("Not allowed", "Cross-site request refused.", status=403)
        token = request.cookies.get(ACCOUNT_COOKIE)
        if token:
            info = await self.accounts.resolve_session(token, kind="account")
            if info is not None:
                # Ends the handed-off tenant sessions too; the gate's cache must
                # not keep them alive for its TTL.
                for session_id in await self.accounts.sign_out(info.session_id):
                    self.gate.forget_session(session_id)
                log.info("account.signout", extra={"user": info.user_id})
        response = redirect("/signin")
        response.del_cookie(ACCOUNT_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
        self.pages.secure(response)
        return response

    async def connect(self, request: web.Request) -> web.StreamResponse:
        """Hand a signed-in person over to a tenant host with a one-time code."""
        instance_id = request.query.get("instance", "")
        state = request.query.get("state", "")
        next_path = safe_next(request.query.get("next"))
        if not is_instance_id(instance_id) or len(state) != 64:
            return self.pages.message("Bad link", "This link is not complete.", status=400)
        session = await self._session(request)
        user = None if session is None else (session.user_id, session.email)
        if session is None or user is None:
            back = "/connect?" + urlencode(
                {"instance": instance_id, "state": state, "next": next_path}
            )
            return redirect("/signin?" + urlencode({"next": back}))
        if not await self.accounts.can_access(user[0], instance_id):
            # Same answer for "no such home" and "not yours": nothing to enumerate.
            return self.pages.message(
                "No access",
                "This home does not exist, or your account has no access to it.",
                status=404,
                user_email=user[1],
            )
        code = await self.accounts.create_handoff(
            user[0], instance_id, state, session_id=session.session_id
        )
        target = (
            self.config.tenant_origin(instance_id)
            + "/.homeport/handoff?"
            + urlencode({"code": code, "next": next_path})
        )
        response = redirect(target)
        self.pages.secure(response)
        return response
