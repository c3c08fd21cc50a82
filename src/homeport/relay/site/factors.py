"""Second-factor management on the security page: turning TOTP off, new recovery codes.

Threats this stops:

* Someone at an unlocked, signed-in browser removing the second factor or
  taking a fresh set of recovery codes: both need the account's password or
  a current authenticator code, each checked and throttled as at sign-in.
* A session an attacker opened before a factor change living on: turning
  the factor off ends every other session and cuts their open traffic
  (R-SES-04).
"""

from __future__ import annotations

import logging

from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.sessions import SessionInfo
from homeport.accounts.throttle import retry_after
from homeport.accounts.totp import TotpError
from homeport.relay.redirects import redirect
from homeport.relay.site.forms import read_form
from homeport.relay.site.keys import ACCOUNTS, AUDIT, GATE, current, notify, sign_in_first
from homeport.relay.site.reauth import password_again
from homeport.relay.site.security import security_page

__all__ = ["routes"]

log = logging.getLogger(__name__)

PATH = "/security"

routes = web.RouteTableDef()


async def _reauthenticated(request: web.Request, session: SessionInfo) -> web.Response | None:
    """``None`` if the form proves the person again (password or code), else the answer."""
    form = await read_form(request)
    password = str(form.get("password", ""))
    code = str(form.get("code", ""))
    accounts = request.app[ACCOUNTS]
    if code:
        outcome = await accounts.totp.verify(session.user_id, code, ip=request.remote)
        if outcome.ok:
            return None
        if outcome.wait > 0:
            response = await security_page(
                request,
                session,
                error="Too many attempts. Wait a moment, then try again.",
                status=429,
            )
            response.headers["Retry-After"] = retry_after(outcome.wait)
            return response
    elif password:
        checked = await password_again(accounts, request, session, password)
        if checked is True:
            return None
        if checked is not False:
            response = await security_page(
                request,
                session,
                error="Too many attempts. Wait a moment, then try again.",
                status=429,
            )
            response.headers["Retry-After"] = retry_after(checked)
            return response
    log.warning("account.reauth_failed", extra={"user": session.user_id})
    return await security_page(
        request,
        session,
        error="To do this, enter your password or a current code from your app.",
        status=401,
    )


@routes.post("/security/totp/disable")
async def disable(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    refused = await _reauthenticated(request, session)
    if refused is not None:
        return refused
    accounts = request.app[ACCOUNTS]
    await accounts.totp.disable(session.user_id)
    await accounts.sessions.revoke_user(session.user_id, except_session_id=session.session_id)
    request.app[GATE].end_user(session.user_id, except_session_id=session.session_id)
    await request.app[AUDIT].record(request, EventType.TOTP_DISABLED, session, factor="totp")
    await notify(request, session.user_id, "two-step verification was turned off")
    log.info("account.totp_disabled", extra={"user": session.user_id})
    return redirect(PATH)


@routes.post("/security/recovery-codes")
async def regenerate(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    refused = await _reauthenticated(request, session)
    if refused is not None:
        return refused
    try:
        codes = await request.app[ACCOUNTS].totp.regenerate_recovery_codes(session.user_id)
    except TotpError as exc:
        return await security_page(request, session, error=str(exc), status=409)
    await request.app[AUDIT].record(request, EventType.RECOVERY_CODES_REGENERATED, session)
    await notify(request, session.user_id, "new recovery codes were made")
    return await security_page(request, session, error=None, recovery_codes=codes)
