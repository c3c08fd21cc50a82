"""How a sign-in ends, whatever its first factor: the second factor, the step-up, a session.

Every first factor (password, OpenID, a passkey as the second step) goes
through :meth:`SignInFlow.first_factor_passed` or
:meth:`SignInFlow.finish_signin`, so none can skip the account's second
factor (R-OIDC-05) or the emailed code for a new network (R-EML). Threats
this stops:

* Session fixation: a new session token is minted on every sign-in.
* A half-done sign-in standing in for a session: the TOTP step lives in its
  own short-lived cookie (:data:`PENDING_COOKIE`), never in a session.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.service import Accounts
from homeport.accounts.totp import PENDING_LIFETIME
from homeport.relay.pages import Pages
from homeport.relay.redirects import redirect
from homeport.relay.site.events import AuditTrail
from homeport.relay.site.hooks import StepUp

__all__ = ["ACCOUNT_COOKIE", "PENDING_COOKIE", "SignInFlow"]

log = logging.getLogger(__name__)

ACCOUNT_COOKIE: Final = "__Host-homeport_account"
#: A sign-in that passed the password and waits for its second factor (5 min).
PENDING_COOKIE: Final = "__Host-homeport_pending"


class SignInFlow:
    def __init__(
        self, accounts: Accounts, pages: Pages, trail: AuditTrail, step_up: StepUp | None
    ) -> None:
        self.accounts = accounts
        self.pages = pages
        self.trail = trail
        #: The emailed code for a sign-in from a new network (when mail is on).
        self.step_up = step_up

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
        token, row = await self.accounts.sessions.create(
            user_id,
            "account",
            user_agent=request.headers.get("User-Agent", ""),
            ip=request.remote or "",
            second_factor=second_factor,
        )
        await self.trail.record(
            request,
            EventType.SIGNIN_SUCCEEDED,
            user_id=user_id,
            factor=factor,
            detail=f"session {row.id}",
        )
        response = redirect(next_path)
        self.start_session(request, response, token, row.user_id)
        if self.step_up is not None:
            await self.step_up.signed_in(request, response, user_id, stepped_up=step_up_passed)
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

    def signed_out(self) -> web.Response:
        """Back to the sign-in page with the account cookie removed."""
        response = redirect("/signin")
        response.del_cookie(ACCOUNT_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
        self.pages.secure(response)
        return response
