"""Account-site pages for the emailed sign-in code (R-EML-01..03) and "this wasn't me".

Threats this stops (the rules themselves live in
:mod:`homeport.accounts.email_signin`):

* **A stolen password (and second factor) used from elsewhere**: a sign-in
  from a browser without a known device cookie *and* from an unseen network
  gets no session until the code mailed to the account's address is typed
  in. The pending sign-in is its own cookie (``__Host-homeport_verify``),
  separate from the TOTP pending cookie, so neither step can stand in for
  the other.
* **The owner learning too late**: the mail names time, network and device,
  and its "this wasn't me" link ends every session of the account (account
  site and tenant hosts, also in the gate's cache), every pending sign-in,
  and forgets every known device and network.
* **Mail scanners following links**: the link opens a page with a button;
  only the POST (same-origin, CSRF-checked) acts.
* **CSRF**: every POST goes through :func:`~homeport.relay.site_forms.read_form`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.email_signin import CODE_LIFETIME, DEVICE_LIFETIME, PENDING_LIFETIME, Issued
from homeport.accounts.throttle import retry_after
from homeport.mail.mailer import Outbox
from homeport.mail.messages import MailWriter
from homeport.relay.account_site import ACCOUNT_COOKIE, PENDING_COOKIE, AccountSite
from homeport.relay.site_forms import field, read_form
from homeport.relay.site_mail import MailPages
from homeport.relay.tenant import redirect

__all__ = ["DEVICE_COOKIE", "VERIFY_COOKIE", "EmailCodeSite", "mask_email"]

log = logging.getLogger(__name__)

#: Long-lived, opaque: marks a browser that finished a sign-in (hashed at rest).
DEVICE_COOKIE: Final = "__Host-homeport_device"
#: A sign-in waiting for its emailed code.
VERIFY_COOKIE: Final = "__Host-homeport_verify"


def _set_cookie(response: web.StreamResponse, name: str, value: str, max_age: float) -> None:
    response.set_cookie(
        name, value, path="/", max_age=int(max_age), secure=True, httponly=True, samesite="Lax"
    )


def _drop_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path="/", secure=True, httponly=True, samesite="Lax")


def mask_email(email: str) -> str:
    """``o…r@example.com``: enough to recognise one's own address on a shared screen."""
    local, _, domain = email.rpartition("@")
    if len(local) <= 2:
        return f"{local[:1]}…@{domain}"
    return f"{local[0]}…{local[-1]}@{domain}"


class EmailCodeSite(MailPages):
    """Routes ``/signin/email-code`` and ``/signin/not-me``; the account site's step-up."""

    def __init__(self, site: AccountSite, outbox: Outbox, writer: MailWriter) -> None:
        super().__init__(site, outbox, writer)
        add = site.router.add_route
        add("GET", "/signin/email-code", self.form)
        add("POST", "/signin/email-code", self.verify)
        add("POST", "/signin/email-code/resend", self.resend)
        add("GET", "/signin/not-me", self.not_me_form)
        add("POST", "/signin/not-me", self.not_me)
        site.step_up = self

    # ------------------------------------------------------------ step-up

    async def challenge(
        self, request: web.Request, user_id: int, next_path: str, *, second_factor: bool
    ) -> web.StreamResponse | None:
        signins = self.accounts.email_signins
        if await signins.is_known(user_id, request.cookies.get(DEVICE_COOKIE), request.remote):
            return None
        issued = await signins.start(user_id, next_path)
        if issued.wait > 0:
            response = self.pages.message(
                "Too many codes",
                "We have mailed this account too many sign-in codes. Wait a while, "
                "then sign in again.",
                status=429,
                link="/signin",
                link_text="Sign in",
            )
            response.headers["Retry-After"] = retry_after(issued.wait)
            return response
        await self._mail_code(request, issued, second_factor=second_factor)
        log.info("account.signin_email_code", extra={"user": user_id, "ip": request.remote})
        response = redirect("/signin/email-code")
        _set_cookie(response, VERIFY_COOKIE, issued.token, PENDING_LIFETIME.total_seconds())
        _drop_cookie(response, PENDING_COOKIE)
        self.pages.secure(response)
        return response

    async def signed_in(
        self, request: web.Request, response: web.StreamResponse, user_id: int, *, stepped_up: bool
    ) -> None:
        signins = self.accounts.email_signins
        presented = request.cookies.get(DEVICE_COOKIE)
        if not stepped_up and not await signins.device_known(user_id, presented):
            # A new browser on a known network: no code asked, but the owner hears of it
            # (R-OPS-05); the code mail already said so when a code was asked.
            await self._mail_new_signin(request, user_id)
        device = await signins.remember(user_id, presented, request.remote)
        _set_cookie(response, DEVICE_COOKIE, device, DEVICE_LIFETIME.total_seconds())
        _drop_cookie(response, VERIFY_COOKIE)

    def _deny_url(self, alert_token: str) -> str:
        return self.site.config.account_origin + "/signin/not-me?" + urlencode({"t": alert_token})

    async def _mail_new_signin(self, request: web.Request, user_id: int) -> None:
        user = await self.accounts.get_user(user_id)
        if user is None:
            return
        alert = await self.accounts.email_signins.new_alert(user_id)
        self.outbox.post(
            self.writer.new_signin(
                user.email,
                deny_url=self._deny_url(alert),
                moment=datetime.now(UTC),
                ip=request.remote,
                user_agent=request.headers.get("User-Agent", ""),
            )
        )

    async def _mail_code(
        self, request: web.Request, issued: Issued, *, second_factor: bool
    ) -> None:
        user = await self.accounts.get_user(issued.user_id)
        if user is None:
            return
        deny_url = self._deny_url(issued.alert_token)
        self.outbox.post(
            self.writer.signin_code(
                user.email,
                code=issued.code,
                minutes=int(CODE_LIFETIME.total_seconds() // 60),
                deny_url=deny_url,
                moment=datetime.now(UTC),
                ip=request.remote,
                user_agent=request.headers.get("User-Agent", ""),
                second_factor=second_factor,
            )
        )

    # --------------------------------------------------------------- pages

    async def _page(
        self,
        user_id: int,
        *,
        error: str | None = None,
        notice: str | None = None,
        status: int = 200,
    ) -> web.Response:
        user = await self.accounts.get_user(user_id)
        return self.pages.render(
            "email_code.html",
            status=status,
            title="Check your email",
            masked_email=mask_email(user.email) if user is not None else "your address",
            minutes=int(CODE_LIFETIME.total_seconds() // 60),
            error=error,
            notice=notice,
        )

    def _ended(self) -> web.Response:
        response = self.pages.message(
            "Sign in again",
            "This sign-in has ended (too many wrong codes, or it expired). Sign in again "
            "to get a new code.",
            status=401,
            link="/signin",
            link_text="Sign in",
        )
        _drop_cookie(response, VERIFY_COOKIE)
        return response

    async def form(self, request: web.Request) -> web.StreamResponse:
        user_id = await self.accounts.email_signins.pending_user(
            request.cookies.get(VERIFY_COOKIE, "")
        )
        if user_id is None:
            return redirect("/signin")
        return await self._page(user_id)

    async def verify(self, request: web.Request) -> web.StreamResponse:
        form = await read_form(self.site, request)
        if isinstance(form, web.Response):
            return form
        token = request.cookies.get(VERIFY_COOKIE, "")
        outcome = await self.accounts.email_signins.verify(
            token, field(form, "code", 32), ip=request.remote
        )
        if outcome.ok and outcome.user_id is not None:
            # With TOTP on, the code was only mailed after the TOTP step passed.
            second_factor = await self.accounts.totp.is_enabled(outcome.user_id)
            return await self.site.finish_signin(
                request,
                outcome.user_id,
                outcome.next_path,
                second_factor=second_factor,
                factor="password+totp+email" if second_factor else "password+email",
                step_up_passed=True,
            )
        if outcome.ended or outcome.user_id is None:
            log.warning("account.email_code_ended", extra={"user": outcome.user_id})
            return self._ended()
        log.warning("account.email_code_failed", extra={"user": outcome.user_id})
        if outcome.wait > 0:
            response = await self._page(
                outcome.user_id,
                error="Too many attempts. Wait a moment, then try again.",
                status=429,
            )
            response.headers["Retry-After"] = retry_after(outcome.wait)
            return response
        return await self._page(
            outcome.user_id,
            error="That code is not right, or it has expired. Use the newest email.",
            status=401,
        )

    async def resend(self, request: web.Request) -> web.StreamResponse:
        form = await read_form(self.site, request)
        if isinstance(form, web.Response):
            return form
        issued = await self.accounts.email_signins.resend(request.cookies.get(VERIFY_COOKIE, ""))
        if issued is None:
            return self._ended()
        if issued.wait > 0:
            response = await self._page(
                issued.user_id,
                error="A new code cannot be sent yet. Wait a moment, or use the last one.",
                status=429,
            )
            response.headers["Retry-After"] = retry_after(issued.wait)
            return response
        second_factor = await self.accounts.totp.is_enabled(issued.user_id)
        await self._mail_code(request, issued, second_factor=second_factor)
        return await self._page(
            issued.user_id, notice="We sent a new code. Earlier codes no longer work."
        )

    # ---------------------------------------------------------- not me

    def _bad_link(self) -> web.Response:
        return self.link_refused(
            "This link was used already or has expired. If you still think someone else "
            "signed in, reset your password.",
            link="/signin/forgot",
            link_text="Reset your password",
        )

    async def not_me_form(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("t", "")[:64]
        if await self.accounts.email_signins.alert_user(token) is None:
            return self._bad_link()
        return self.pages.render("not_me.html", title="Not you?", token=token)

    async def not_me(self, request: web.Request) -> web.StreamResponse:
        form = await read_form(self.site, request)
        if isinstance(form, web.Response):
            return form
        user_id = await self.accounts.email_signins.deny(field(form, "t", 64))
        if user_id is None:
            return self._bad_link()
        ended = await self.accounts.revoke_user_sessions(user_id)
        self.site.gate.end_user(user_id)
        log.warning("account.signin_denied", extra={"user": user_id, "sessions": ended})
        user = await self.accounts.get_user(user_id)
        if user is not None:
            self.outbox.post(self.writer.signin_denied(user.email, moment=datetime.now(UTC)))
        response = self.pages.message(
            "Every session ended",
            "Every session of your account has ended. Whoever signed in knows your "
            "password: change it now.",
            status=200,
            link="/signin/forgot",
            link_text="Choose a new password",
        )
        _drop_cookie(response, ACCOUNT_COOKIE)
        _drop_cookie(response, DEVICE_COOKIE)
        _drop_cookie(response, VERIFY_COOKIE)
        return response
