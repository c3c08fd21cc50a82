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
from homeport.mail.mailer import Outbox
from homeport.mail.messages import MailWriter
from homeport.relay.account_site import AccountSite
from homeport.relay.site_forms import field, read_form
from homeport.relay.site_mail import MailPages

__all__ = ["SignupSite"]

log = logging.getLogger(__name__)

_HOURS = int(VERIFY_LIFETIME.total_seconds() // 3600)


class SignupSite(MailPages):
    """Routes ``/signup`` and ``/signup/verify``."""

    def __init__(self, site: AccountSite, outbox: Outbox, writer: MailWriter) -> None:
        super().__init__(site, outbox, writer)
        add = site.router.add_route
        add("GET", "/signup", self.form)
        add("POST", "/signup", self.signup)
        add("GET", "/signup/verify", self.verify_form)
        add("POST", "/signup/verify", self.verify)
        site.pages.set_global("signup_open", True)

    def _page(
        self, *, sent: bool, email: str = "", error: str | None = None, status: int = 200
    ) -> web.Response:
        return self.pages.render(
            "signup.html",
            status=status,
            title="Create an account",
            sent=sent,
            email=email,
            error=error,
            hours=_HOURS,
        )

    async def form(self, request: web.Request) -> web.StreamResponse:
        return self._page(sent=False)

    async def signup(self, request: web.Request) -> web.StreamResponse:
        form = await read_form(self.site, request)
        if isinstance(form, web.Response):
            return form
        email = field(form, "email", 320)
        try:
            outcome = await self.accounts.signups.sign_up(
                email, field(form, "password", 4096), ip=request.remote
            )
        except InvalidEmail:
            return self._page(sent=False, email=email, error="Enter an email address.", status=400)
        except PasswordPolicyError as exc:
            return self._page(sent=False, email=email, error=str(exc), status=400)
        if outcome.wait > 0:
            log.warning("account.signup_throttled", extra={"ip": request.remote})
            response = self._page(
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
                self.site.config.account_origin
                + "/signup/verify?"
                + urlencode({"t": outcome.token})
            )
            self.outbox.post(
                self.writer.signup_verify(
                    outcome.email,
                    verify_url=link,
                    hours=_HOURS,
                    moment=moment,
                    ip=ip,
                    user_agent=agent,
                )
            )
        elif outcome.email is not None and outcome.mail == "exists":
            self.outbox.post(
                self.writer.signup_exists(outcome.email, moment=moment, ip=ip, user_agent=agent)
            )
        log.info("account.signup_requested", extra={"ip": request.remote})
        return self._page(sent=True)

    def _bad_link(self) -> web.Response:
        return self.link_refused(
            "This link was used already or has expired, or the address has an account "
            "now. Sign in, or sign up again.",
            link="/signin",
            link_text="Sign in",
        )

    async def verify_form(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("t", "")[:64]
        email = await self.accounts.signups.pending_email(token)
        if email is None:
            return self._bad_link()
        return self.pages.render(
            "signup_verify.html", title="Confirm your account", email=email, token=token
        )

    async def verify(self, request: web.Request) -> web.StreamResponse:
        form = await read_form(self.site, request)
        if isinstance(form, web.Response):
            return form
        user = await self.accounts.signups.verify(field(form, "t", 64))
        if user is None:
            return self._bad_link()
        log.info("account.signup_verified", extra={"user": user.id, "ip": request.remote})
        return self.pages.message(
            "Account created",
            "Your account is ready. Sign in with your email address and password.",
            status=200,
            link="/signin",
            link_text="Sign in",
        )
