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
from datetime import datetime
from typing import Protocol
from urllib.parse import urlencode

import pyotp
from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.errors import InvalidEmail
from homeport.accounts.identifiers import is_instance_id
from homeport.accounts.models import WebSession
from homeport.accounts.service import Accounts, SessionInfo
from homeport.accounts.throttle import account_key, network_key, retry_after, signin_keys
from homeport.accounts.totp import (
    DIGITS,
    ISSUER,
    PENDING_LIFETIME,
    STEP_SECONDS,
    Enrolment,
    Pending,
    TotpError,
)
from homeport.relay.config import RelayConfig
from homeport.relay.gate import SessionGate
from homeport.relay.hub import TunnelHub
from homeport.relay.pages import Pages
from homeport.relay.site_audit import AuditPage
from homeport.relay.site_factors import FactorActions, qr_data_uri
from homeport.relay.site_oidc import OidcSite
from homeport.relay.site_passkeys import PasskeyRoutes
from homeport.relay.site_password import PasswordPage
from homeport.relay.site_sessions import SessionsPage
from homeport.relay.tenant import redirect, safe_next

log = logging.getLogger(__name__)

ACCOUNT_COOKIE = "__Host-homeport_account"
#: A sign-in that passed the password and waits for its second factor (5 min).
PENDING_COOKIE = "__Host-homeport_pending"
MAX_FORM = 8 * 1024


class StepUp(Protocol):
    """A check between the last factor and the new session (the emailed code, R-EML)."""

    async def challenge(
        self, request: web.Request, user_id: int, next_path: str, *, second_factor: bool
    ) -> web.StreamResponse | None:
        """A response that asks for more (no session yet), or ``None``: go ahead."""

    async def signed_in(
        self, request: web.Request, response: web.StreamResponse, user_id: int, *, stepped_up: bool
    ) -> None:
        """A session was just created (``stepped_up``: after the check); remember what
        needs remembering on ``response``."""


class Notices(Protocol):
    """Tells the account's owner about a security change (R-OPS-05), e.g. by mail."""

    async def changed(self, request: web.Request, user_id: int, what: str) -> None:
        """``what`` happened to the account (a short phrase, e.g. "... was turned on")."""


class InvitationMail(Protocol):
    """Mails an invitation's accept link to the invited address (when mail is on)."""

    def invite(
        self, to: str, *, inviter: str, home: str, accept_url: str, expires: datetime | None
    ) -> bool:
        """Queue the mail; ``False`` if it could not be queued."""


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
        #: Set by the mail features: the emailed code for a sign-in from a new network.
        self.step_up: StepUp | None = None
        self.notices: Notices | None = None
        #: Set when mail is on (``relay/mail_features.py``): invitations go out by mail.
        self.invitation_mail: InvitationMail | None = None
        self.router = web.UrlDispatcher()
        add = self.router.add_route
        add("GET", "/", self.home)
        add("GET", "/signin", self.signin_form)
        add("POST", "/signin", self.signin)
        add("POST", "/signout", self.signout)
        add("GET", "/signin/totp", self.totp_form)
        add("POST", "/signin/totp", self.totp_signin)
        add("GET", "/security", self.security)
        add("POST", "/security/totp/start", self.totp_start)
        add("POST", "/security/totp/confirm", self.totp_confirm)
        add("GET", "/connect", self.connect)
        add("GET", "/static/homeport.css", self.stylesheet)
        add("GET", "/healthz", self.healthz)
        add("GET", "/static/passkeys.js", self.passkeys_script)
        add("GET", "/v1/tunnel", hub.handle)
        self.passkey_routes = PasskeyRoutes(self)
        #: Google / Apple / generic OpenID sign-in, linking and unlinking.
        self.oidc = OidcSite(self, config.oidc_providers)
        SessionsPage(self)
        AuditPage(self)
        PasswordPage(self)
        FactorActions(self)

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

    async def audit(
        self,
        request: web.Request,
        kind: EventType | str,
        session: SessionInfo | None = None,
        *,
        user_id: int | None = None,
        instance_id: str | None = None,
        factor: str | None = None,
        detail: str = "",
    ) -> None:
        """Record an audit event with this request's place and device."""
        await self.accounts.audit.record(
            kind,
            user_id=session.user_id if session is not None else user_id,
            instance_id=instance_id,
            ip=request.remote or "",
            user_agent=request.headers.get("User-Agent", ""),
            factor=factor,
            session_id=session.session_id if session is not None else None,
            detail=detail,
        )

    async def notify(self, request: web.Request, user_id: int, what: str) -> None:
        """Tell the owner about a security change (R-OPS-05), when mail is on."""
        if self.notices is not None:
            await self.notices.changed(request, user_id, what)

    def signed_out_response(self) -> web.Response:
        """Back to the sign-in page with the account cookie removed."""
        response = redirect("/signin")
        response.del_cookie(ACCOUNT_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
        self.pages.secure(response)
        return response

    def _same_origin(self, request: web.Request) -> bool:
        """CSRF check: POSTs must come from a page of the account site itself."""
        return request.headers.get("Origin") == self.config.account_origin

    # ---------------------------------------------------------------- routes

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def stylesheet(self, request: web.Request) -> web.StreamResponse:
        return self.pages.stylesheet()

    async def passkeys_script(self, request: web.Request) -> web.StreamResponse:
        return self.pages.script("passkeys.js")

    async def home(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request)
        if user is None:
            return redirect("/signin")
        instances = [
            {
                "name": inst.name,
                "url": self.config.tenant_origin(inst.id),
                "connected": self.hub.tunnel_for(inst.id) is not None,
                "id": inst.id,
                "owned": inst.owner_id == user[0],
                "owner_email": inst.owner_email,
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
            # Same work for known and unknown addresses (one lookup, one insert), so
            # the audit write cannot tell them apart by timing; unknown ones are
            # kept without an account, for the operator.
            known = await self.accounts.get_user_by_email(email)
            await self.audit(
                request,
                EventType.SIGNIN_FAILED,
                user_id=known.id if known is not None else None,
                factor="password",
            )
            return self.pages.render(
                "signin.html",
                status=401,
                title="Sign in",
                next=next_path,
                email=email,
                error="Wrong email or password.",
            )
        net = network_key(request.remote)
        await self.accounts.throttle.succeeded(
            clear=[f"pw:pair:{account_key(email)}:{net}", f"pw:acct:{account_key(email)}"],
            refund=[f"pw:net:{net}"],
        )
        return await self.first_factor_passed(request, user.id, next_path)

    async def first_factor_passed(
        self, request: web.Request, user_id: int, next_path: str, *, factor: str = "password"
    ) -> web.StreamResponse:
        """After a password or an OpenID sign-in: the second factor if on, else a session.

        Every first factor ends here, so none skips the account's TOTP (R-OIDC-05).
        """
        if await self.accounts.totp.is_enabled(user_id):
            # No session yet: only the second factor turns this into one.
            pending = await self.accounts.totp.start_pending(user_id, next_path)
            log.info("account.signin_second_factor", extra={"user": user_id})
            response = redirect("/signin/totp")
            response.set_cookie(
                PENDING_COOKIE,
                pending,
                path="/",
                max_age=int(PENDING_LIFETIME.total_seconds()),
                secure=True,
                httponly=True,
                samesite="Lax",
            )
            self.pages.secure(response)
            return response
        return await self.finish_signin(
            request, user_id, next_path, second_factor=False, factor=factor
        )

    async def finish_signin(
        self,
        request: web.Request,
        user_id: int,
        next_path: str,
        *,
        second_factor: bool,
        factor: str = "password",
        step_up_passed: bool = False,
    ) -> web.StreamResponse:
        """Every factor passed: the step-up check (if any, R-EML), then a new session.

        ``second_factor``: the sign-in passed one (owners may require that of members).
        """
        if self.step_up is not None and not step_up_passed:
            challenge = await self.step_up.challenge(
                request, user_id, next_path, second_factor=second_factor
            )
            if challenge is not None:
                return challenge
        token, row = await self.accounts.create_session(
            user_id,
            "account",
            user_agent=request.headers.get("User-Agent", ""),
            ip=request.remote or "",
            second_factor=second_factor,
        )
        await self.audit(
            request,
            EventType.SIGNIN_SUCCEEDED,
            user_id=user_id,
            factor=factor,
            detail=f"session {row.id}",
        )
        response = self._signed_in(request, token, row, next_path)
        if self.step_up is not None:
            await self.step_up.signed_in(request, response, user_id, stepped_up=step_up_passed)
        return response

    def _signed_in(
        self, request: web.Request, token: str, row: WebSession, next_path: str
    ) -> web.StreamResponse:
        response = redirect(next_path)
        self.start_session(request, response, token, row.user_id)
        return response

    def start_session(
        self, request: web.Request, response: web.StreamResponse, token: str, user_id: int
    ) -> None:
        """Hand a new account session to the browser (and end a pending sign-in)."""
        log.info("account.signin", extra={"user": user_id, "ip": request.remote})
        response.set_cookie(
            ACCOUNT_COOKIE, token, path="/", secure=True, httponly=True, samesite="Lax"
        )
        response.del_cookie(PENDING_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
        self.pages.secure(response)

    # ------------------------------------------------------- second factor

    async def _pending(self, request: web.Request) -> tuple[str, Pending] | None:
        token = request.cookies.get(PENDING_COOKIE, "")
        pending = await self.accounts.totp.pending(token)
        return None if pending is None else (token, pending)

    async def totp_form(self, request: web.Request) -> web.StreamResponse:
        found = await self._pending(request)
        if found is None:
            return redirect("/signin")
        return self.pages.render(
            "totp.html",
            title="Two-step verification",
            recovery=request.query.get("recovery") == "1",
            error=None,
            passkey=await self.accounts.passkeys.count(found[1].user_id) > 0,
        )

    async def totp_signin(self, request: web.Request) -> web.StreamResponse:
        if not self._same_origin(request):
            return self.pages.message("Not allowed", "Cross-site request refused.", status=403)
        if (request.content_length or 0) > MAX_FORM:
            return self.pages.message("Too large", "The form is too large.", status=413)
        found = await self._pending(request)
        if found is None:
            return redirect("/signin")
        token, pending = found
        form = await request.post()
        recovery_code = str(form.get("recovery_code", ""))
        totp = self.accounts.totp
        if recovery_code:
            outcome = await totp.use_recovery_code(
                pending.user_id, recovery_code, ip=request.remote
            )
        else:
            code = str(form.get("code", ""))
            outcome = await totp.verify(pending.user_id, code, ip=request.remote)
        if not outcome.ok:
            if outcome.wait > 0:
                error = "Too many attempts. Wait a moment, then try again."
            else:
                error = "That code is not right. Try again."
            log.warning("account.second_factor_failed", extra={"user": pending.user_id})
            await self.audit(
                request,
                EventType.SECOND_FACTOR_FAILED,
                user_id=pending.user_id,
                factor="recovery_code" if recovery_code else "totp",
            )
            response = self.pages.render(
                "totp.html",
                status=429 if outcome.wait > 0 else 401,
                title="Two-step verification",
                recovery=bool(recovery_code),
                error=error,
                passkey=await self.accounts.passkeys.count(pending.user_id) > 0,
            )
            if outcome.wait > 0:
                response.headers["Retry-After"] = retry_after(outcome.wait)
            return response
        if not await totp.finish_pending(token):
            return redirect("/signin")
        return await self.finish_signin(
            request,
            pending.user_id,
            pending.next_path,
            second_factor=True,
            factor="password+recovery_code" if recovery_code else "password+totp",
        )

    async def security(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request)
        if user is None:
            return redirect("/signin?" + urlencode({"next": "/security"}))
        return await self._security_page(user, error=None)

    async def _security_page(
        self,
        user: tuple[int, str],
        *,
        error: str | None,
        status: int = 200,
        enrolment: Enrolment | None = None,
        recovery_codes: list[str] | None = None,
    ) -> web.Response:
        totp = self.accounts.totp
        enabled = await totp.is_enabled(user[0])
        if enrolment is None and not enabled:
            secret = await totp.enrolment_secret(user[0])
            if secret is not None:
                enrolment = Enrolment(secret, _otpauth_uri(secret, user[1]))
        return self.pages.render(
            "security.html",
            status=status,
            title="Security",
            user_email=user[1],
            error=error,
            enabled=enabled,
            enrolment=enrolment,
            qr=qr_data_uri(enrolment.uri) if enrolment is not None else None,
            recovery_codes=recovery_codes or [],
            codes_left=await totp.recovery_codes_left(user[0]) if enabled else 0,
            passkeys=await self.accounts.passkeys.list(user[0]),
        )

    async def totp_start(self, request: web.Request) -> web.StreamResponse:
        if not self._same_origin(request):
            return self.pages.message("Not allowed", "Cross-site request refused.", status=403)
        user = await self._user(request)
        if user is None:
            return redirect("/signin?" + urlencode({"next": "/security"}))
        try:
            enrolment = await self.accounts.totp.start_enrolment(user[0], user[1])
        except TotpError as exc:
            return await self._security_page(user, error=str(exc), status=409)
        return await self._security_page(user, error=None, enrolment=enrolment)

    async def totp_confirm(self, request: web.Request) -> web.StreamResponse:
        if not self._same_origin(request):
            return self.pages.message("Not allowed", "Cross-site request refused.", status=403)
        if (request.content_length or 0) > MAX_FORM:
            return self.pages.message("Too large", "The form is too large.", status=413)
        user = await self._user(request)
        if user is None:
            return redirect("/signin?" + urlencode({"next": "/security"}))
        form = await request.post()
        outcome, codes = await self.accounts.totp.confirm_enrolment(
            user[0], str(form.get("code", "")), ip=request.remote
        )
        if not outcome.ok:
            status = 429 if outcome.wait > 0 else 400
            error = (
                "Too many attempts. Wait a moment, then try again."
                if outcome.wait > 0
                else "That code is not right. Check the app and try again."
            )
            return await self._security_page(user, error=error, status=status)
        log.info("account.totp_enabled", extra={"user": user[0]})
        # A factor change ends every other session (R-SES-04): one opened by whoever
        # knew the password before the factor was added must not stay.
        current = await self._session(request)
        keep = current.session_id if current is not None else None
        await self.accounts.revoke_user_sessions(user[0], except_session_id=keep)
        self.gate.end_user(user[0], except_session_id=keep)
        await self.audit(request, EventType.TOTP_ENABLED, current, factor="totp")
        if self.notices is not None:
            await self.notices.changed(request, user[0], "two-step verification was turned on")
        return await self._security_page(user, error=None, recovery_codes=codes)

    async def signout(self, request: web.Request) -> web.StreamResponse:
        if not self._same_origin(request):
            return self.pages.message("Not allowed", "Cross-site request refused.", status=403)
        token = request.cookies.get(ACCOUNT_COOKIE)
        if token:
            info = await self.accounts.resolve_session(token, kind="account")
            if info is not None:
                # Ends the handed-off tenant sessions too; the gate's cache must
                # not keep them alive for its TTL.
                # Cuts their open streams and WebSockets at once too.
                self.gate.end_sessions(await self.accounts.sign_out(info.session_id))
                await self.audit(request, EventType.SIGNED_OUT, info)
                log.info("account.signout", extra={"user": info.user_id})
        return self.signed_out_response()

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
        if not await self.accounts.sharing.second_factor_ok(
            user[0], instance_id, session.session_id
        ):
            # The owner requires two-step verification for everyone who opens this home.
            return self.pages.message(
                "Two-step verification required",
                "The owner of this home requires two-step verification. Turn it on for "
                "your account under Security, then sign out and sign in again with a code.",
                status=403,
                user_email=user[1],
                link="/security",
                link_text="Security settings",
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


def _otpauth_uri(secret_base32: str, email: str) -> str:
    return pyotp.TOTP(secret_base32, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=email, issuer_name=ISSUER
    )
