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
* **CSRF**: every POST is checked by :mod:`.guard` before it gets here.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.email_signin import CODE_LIFETIME, DEVICE_LIFETIME, PENDING_LIFETIME, Issued
from homeport.accounts.service import Accounts
from homeport.accounts.throttle import retry_after
from homeport.relay.pages import Pages
from homeport.relay.redirects import redirect
from homeport.relay.site.forms import field, read_form
from homeport.relay.site.keys import ACCOUNTS, CONFIG, GATE, MAIL, PAGES, SIGNIN, MailOut
from homeport.relay.site.mail import link_refused
from homeport.relay.site.signin_flow import ACCOUNT_COOKIE, PENDING_COOKIE

__all__ = ["DEVICE_COOKIE", "VERIFY_COOKIE", "EmailCodeStepUp", "mask_email", "routes"]

log = logging.getLogger(__name__)

#: Long-lived, opaque: marks a browser that finished a sign-in (hashed at rest).
DEVICE_COOKIE: Final = "__Host-homeport_device"
#: A sign-in waiting for its emailed code.
VERIFY_COOKIE: Final = "__Host-homeport_verify"

routes = web.RouteTableDef()


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


def _deny_url(account_origin: str, alert_token: str) -> str:
    return account_origin + "/signin/not-me?" + urlencode({"t": alert_token})


async def _mail_code(
    accounts: Accounts,
    mail: MailOut,
    account_origin: str,
    request: web.Request,
    issued: Issued,
    *,
    second_factor: bool,
) -> None:
    user = await accounts.users.get(issued.user_id)
    if user is None:
        return
    mail.outbox.post(
        mail.writer.signin_code(
            user.email,
            code=issued.code,
            minutes=int(CODE_LIFETIME.total_seconds() // 60),
            deny_url=_deny_url(account_origin, issued.alert_token),
            moment=datetime.now(UTC),
            ip=request.remote,
            user_agent=request.headers.get("User-Agent", ""),
            second_factor=second_factor,
        )
    )


class EmailCodeStepUp:
    """The account site's :class:`~homeport.relay.site.hooks.StepUp`: a code by mail."""

    def __init__(self, accounts: Accounts, pages: Pages, mail: MailOut, account_origin: str):
        self.accounts = accounts
        self.pages = pages
        self.mail = mail
        self.account_origin = account_origin

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
        await _mail_code(
            self.accounts,
            self.mail,
            self.account_origin,
            request,
            issued,
            second_factor=second_factor,
        )
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

    async def _mail_new_signin(self, request: web.Request, user_id: int) -> None:
        user = await self.accounts.users.get(user_id)
        if user is None:
            return
        alert = await self.accounts.email_signins.new_alert(user_id)
        self.mail.outbox.post(
            self.mail.writer.new_signin(
                user.email,
                deny_url=_deny_url(self.account_origin, alert),
                moment=datetime.now(UTC),
                ip=request.remote,
                user_agent=request.headers.get("User-Agent", ""),
            )
        )


# ------------------------------------------------------------------ pages


async def _page(
    request: web.Request,
    user_id: int,
    *,
    error: str | None = None,
    notice: str | None = None,
    status: int = 200,
) -> web.Response:
    user = await request.app[ACCOUNTS].users.get(user_id)
    return request.app[PAGES].render(
        "email_code.html",
        status=status,
        title="Check your email",
        masked_email=mask_email(user.email) if user is not None else "your address",
        minutes=int(CODE_LIFETIME.total_seconds() // 60),
        error=error,
        notice=notice,
    )


def _ended(pages: Pages) -> web.Response:
    response = pages.message(
        "Sign in again",
        "This sign-in has ended (too many wrong codes, or it expired). Sign in again "
        "to get a new code.",
        status=401,
        link="/signin",
        link_text="Sign in",
    )
    _drop_cookie(response, VERIFY_COOKIE)
    return response


@routes.get("/signin/email-code")
async def form(request: web.Request) -> web.StreamResponse:
    user_id = await request.app[ACCOUNTS].email_signins.pending_user(
        request.cookies.get(VERIFY_COOKIE, "")
    )
    if user_id is None:
        return redirect("/signin")
    return await _page(request, user_id)


@routes.post("/signin/email-code")
async def verify(request: web.Request) -> web.StreamResponse:
    accounts = request.app[ACCOUNTS]
    posted = await read_form(request)
    token = request.cookies.get(VERIFY_COOKIE, "")
    outcome = await accounts.email_signins.verify(
        token, field(posted, "code", 32), ip=request.remote
    )
    if outcome.ok and outcome.user_id is not None:
        # With TOTP on, the code was only mailed after the TOTP step passed.
        second_factor = await accounts.totp.is_enabled(outcome.user_id)
        return await request.app[SIGNIN].finish_signin(
            request,
            outcome.user_id,
            outcome.next_path,
            second_factor=second_factor,
            factor="password+totp+email" if second_factor else "password+email",
            step_up_passed=True,
        )
    if outcome.ended or outcome.user_id is None:
        log.warning("account.email_code_ended", extra={"user": outcome.user_id})
        return _ended(request.app[PAGES])
    log.warning("account.email_code_failed", extra={"user": outcome.user_id})
    if outcome.wait > 0:
        response = await _page(
            request,
            outcome.user_id,
            error="Too many attempts. Wait a moment, then try again.",
            status=429,
        )
        response.headers["Retry-After"] = retry_after(outcome.wait)
        return response
    return await _page(
        request,
        outcome.user_id,
        error="That code is not right, or it has expired. Use the newest email.",
        status=401,
    )


@routes.post("/signin/email-code/resend")
async def resend(request: web.Request) -> web.StreamResponse:
    accounts = request.app[ACCOUNTS]
    issued = await accounts.email_signins.resend(request.cookies.get(VERIFY_COOKIE, ""))
    if issued is None:
        return _ended(request.app[PAGES])
    if issued.wait > 0:
        response = await _page(
            request,
            issued.user_id,
            error="A new code cannot be sent yet. Wait a moment, or use the last one.",
            status=429,
        )
        response.headers["Retry-After"] = retry_after(issued.wait)
        return response
    second_factor = await accounts.totp.is_enabled(issued.user_id)
    await _mail_code(
        accounts,
        request.app[MAIL],
        request.app[CONFIG].account_origin,
        request,
        issued,
        second_factor=second_factor,
    )
    return await _page(
        request, issued.user_id, notice="We sent a new code. Earlier codes no longer work."
    )


# ------------------------------------------------------------------ not me


def _bad_link(pages: Pages) -> web.Response:
    return link_refused(
        pages,
        "This link was used already or has expired. If you still think someone else "
        "signed in, reset your password.",
        link="/signin/forgot",
        link_text="Reset your password",
    )


@routes.get("/signin/not-me")
async def not_me_form(request: web.Request) -> web.StreamResponse:
    token = request.query.get("t", "")[:64]
    if await request.app[ACCOUNTS].email_signins.alert_user(token) is None:
        return _bad_link(request.app[PAGES])
    return request.app[PAGES].render("not_me.html", title="Not you?", token=token)


@routes.post("/signin/not-me")
async def not_me(request: web.Request) -> web.StreamResponse:
    accounts, pages, mail = request.app[ACCOUNTS], request.app[PAGES], request.app[MAIL]
    posted = await read_form(request)
    user_id = await accounts.email_signins.deny(field(posted, "t", 64))
    if user_id is None:
        return _bad_link(pages)
    ended = await accounts.sessions.revoke_user(user_id)
    request.app[GATE].end_user(user_id)
    log.warning("account.signin_denied", extra={"user": user_id, "sessions": ended})
    user = await accounts.users.get(user_id)
    if user is not None:
        mail.outbox.post(mail.writer.signin_denied(user.email, moment=datetime.now(UTC)))
    response = pages.message(
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
