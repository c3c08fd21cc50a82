"""Second-factor management on the security page: QR code, turn off, new recovery codes.

Threats this stops:

* Someone at an unlocked, signed-in browser removing the second factor or
  taking a fresh set of recovery codes: both need the account's password or
  a current authenticator code, each checked and throttled as at sign-in.
* A session an attacker opened before a factor change living on: turning
  the factor off (and on, in ``AccountSite.totp_confirm``) ends every other
  session and cuts their open traffic (R-SES-04).
* Leaking the TOTP seed to a third party: the QR code is drawn here
  (``segno``) as an inline ``data:`` PNG, never fetched from a QR service,
  and only on the authenticated security page (R-TOTP-01).
* Cross-site request forgery: POSTs checked with ``AccountSite._same_origin``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import segno
from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.service import SessionInfo
from homeport.accounts.throttle import retry_after
from homeport.accounts.totp import TotpError
from homeport.relay.site_checks import password_again, signed_in_post
from homeport.relay.tenant import redirect

if TYPE_CHECKING:
    from homeport.relay.account_site import AccountSite

log = logging.getLogger(__name__)


def qr_data_uri(text: str) -> str:
    """A PNG QR code of ``text`` as a ``data:`` URI (CSP: ``img-src 'self' data:``).

    PNG rather than SVG: it scales cleanly in an ``<img>`` at any CSS size and
    carries no markup at all.
    """
    uri: str = segno.make(text, error="m").png_data_uri(scale=8, border=4)
    return uri


class FactorActions:
    def __init__(self, site: AccountSite) -> None:
        self.site = site
        site.router.add_route("POST", "/security/totp/disable", self.disable)
        site.router.add_route("POST", "/security/recovery-codes", self.regenerate)

    async def _reauthenticated(
        self, request: web.Request, current: SessionInfo
    ) -> web.Response | None:
        """``None`` if the form proves the person again (password or code), else the answer."""
        form = await request.post()
        password = str(form.get("password", ""))
        code = str(form.get("code", ""))
        accounts = self.site.accounts
        user_pair = (current.user_id, current.email)
        if code:
            outcome = await accounts.totp.verify(current.user_id, code, ip=request.remote)
            if outcome.ok:
                return None
            if outcome.wait > 0:
                response = await self.site._security_page(
                    user_pair, error="Too many attempts. Wait a moment, then try again.", status=429
                )
                response.headers["Retry-After"] = retry_after(outcome.wait)
                return response
        elif password:
            checked = await password_again(self.site, request, current, password)
            if checked is True:
                return None
            if checked is not False:
                response = await self.site._security_page(
                    user_pair, error="Too many attempts. Wait a moment, then try again.", status=429
                )
                response.headers["Retry-After"] = retry_after(checked)
                return response
        log.warning("account.reauth_failed", extra={"user": current.user_id})
        return await self.site._security_page(
            user_pair,
            error="To do this, enter your password or a current code from your app.",
            status=401,
        )

    async def disable(self, request: web.Request) -> web.StreamResponse:
        current = await signed_in_post(self.site, request, "/security")
        if not isinstance(current, SessionInfo):
            return current
        refused = await self._reauthenticated(request, current)
        if refused is not None:
            return refused
        await self.site.accounts.totp.disable(current.user_id)
        await self.site.accounts.revoke_user_sessions(
            current.user_id, except_session_id=current.session_id
        )
        self.site.gate.end_user(current.user_id, except_session_id=current.session_id)
        await self.site.audit(request, EventType.TOTP_DISABLED, current, factor="totp")
        await self.site.notify(request, current.user_id, "two-step verification was turned off")
        log.info("account.totp_disabled", extra={"user": current.user_id})
        return redirect("/security")

    async def regenerate(self, request: web.Request) -> web.StreamResponse:
        current = await signed_in_post(self.site, request, "/security")
        if not isinstance(current, SessionInfo):
            return current
        refused = await self._reauthenticated(request, current)
        if refused is not None:
            return refused
        user_pair = (current.user_id, current.email)
        try:
            codes = await self.site.accounts.totp.regenerate_recovery_codes(current.user_id)
        except TotpError as exc:
            return await self.site._security_page(user_pair, error=str(exc), status=409)
        await self.site.audit(request, EventType.RECOVERY_CODES_REGENERATED, current)
        await self.site.notify(request, current.user_id, "new recovery codes were made")
        return await self.site._security_page(user_pair, error=None, recovery_codes=codes)
