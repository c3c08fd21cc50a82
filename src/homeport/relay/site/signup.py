"""Account-site pages for public sign-up with email verification (``--signup open``).

Threats this stops (rules in :mod:`homeport.accounts.signup`): account
enumeration (one answer for new, pending and existing addresses; the owner
of an existing account is mailed a note instead), accounts for addresses
nobody controls (the account exists only once the mailed link is used),
mail scanners creating accounts (``GET`` shows a button; only the
same-origin ``POST`` acts), and sign-up floods (429 per network).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.errors import InvalidEmail
from homeport.accounts.passwords import PasswordPolicyError
from homeport.accounts.signup import VERIFY_LIFETIME
from homeport.accounts.throttle import retry_after
from homeport.relay.pages import Pages
from homeport.relay.site.forms import field, read_form
from homeport.relay.site.keys import ACCOUNTS, CONFIG, MAIL, PAGES
from homeport.relay.site.mail import link_refused

__all__ = ["routes"]

log = logging.getLogger(__name__)

_HOURS = int(VERIFY_LIFETIME.total_seconds() // 3600)

routes = web.RouteTableDef()


def _page(
    pages: Pages,
    *,
    sent: bool,
    email: str = "",
    error: str | None = None,
    error_field: str | None = None,
    status: int = 200,
) -> web.Response:
    return pages.render(
        "signup.html",
        status=status,
        title="Create an account",
        sent=sent,
        email=email,
        error=error,
        error_field=error_field,
        hours=_HOURS,
    )


@routes.get("/signup")
async def form(request: web.Request) -> web.StreamResponse:
    return _page(request.app[PAGES], sent=False)


@routes.post("/signup")
async def signup(request: web.Request) -> web.StreamResponse:
    accounts, pages, mail = request.app[ACCOUNTS], request.app[PAGES], request.app[MAIL]
    posted = await read_form(request)
    email = field(posted, "email", 320)
    try:
        outcome = await accounts.signups.sign_up(
            email, field(posted, "password", 4096), ip=request.remote
        )
    except InvalidEmail:
        return _page(
            pages,
            sent=False,
            email=email,
            error="Enter an email address.",
            error_field="email",
            status=400,
        )
    except PasswordPolicyError as exc:
        return _page(
            pages, sent=False, email=email, error=str(exc), error_field="password", status=400
        )
    if outcome.wait > 0:
        log.warning("account.signup_throttled", extra={"ip": request.remote})
        response = _page(
            pages,
            sent=False,
            email=email,
            error="Too many sign-ups from your network. Wait a while, then try again.",
            status=429,
        )
        response.headers["Retry-After"] = retry_after(outcome.wait)
        return response
    moment, ip = datetime.now(UTC), request.remote
    agent = request.headers.get("User-Agent", "")
    if outcome.email is not None and outcome.mail == "verify" and outcome.token:
        link = (
            request.app[CONFIG].account_origin + "/signup/verify?" + urlencode({"t": outcome.token})
        )
        mail.outbox.post(
            mail.writer.signup_verify(
                outcome.email,
                verify_url=link,
                hours=_HOURS,
                moment=moment,
                ip=ip,
                user_agent=agent,
            )
        )
    elif outcome.email is not None and outcome.mail == "exists":
        mail.outbox.post(
            mail.writer.signup_exists(outcome.email, moment=moment, ip=ip, user_agent=agent)
        )
    log.info("account.signup_requested", extra={"ip": request.remote})
    return _page(pages, sent=True)


def _bad_link(pages: Pages) -> web.Response:
    return link_refused(
        pages,
        "This link was used already or has expired, or the address has an account "
        "now. Sign in, or sign up again.",
        link="/signin",
        link_text="Sign in",
    )


@routes.get("/signup/verify")
async def verify_form(request: web.Request) -> web.StreamResponse:
    pages = request.app[PAGES]
    token = request.query.get("t", "")[:64]
    email = await request.app[ACCOUNTS].signups.pending_email(token)
    if email is None:
        return _bad_link(pages)
    return pages.render(
        "signup_verify.html", title="Confirm your account", email=email, token=token
    )


@routes.post("/signup/verify")
async def verify(request: web.Request) -> web.StreamResponse:
    pages = request.app[PAGES]
    posted = await read_form(request)
    user = await request.app[ACCOUNTS].signups.verify(field(posted, "t", 64))
    if user is None:
        return _bad_link(pages)
    log.info("account.signup_verified", extra={"user": user.id, "ip": request.remote})
    return pages.message(
        "Account created",
        "Your account is ready. Sign in with your email address and password.",
        status=200,
        link="/signin",
        link_text="Sign in",
    )
