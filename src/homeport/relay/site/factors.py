"""Second-factor management: turning TOTP off, new recovery codes, each on its own page.

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
from dataclasses import dataclass

from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.sessions import SessionInfo
from homeport.accounts.throttle import retry_after
from homeport.accounts.totp import TotpError
from homeport.relay.redirects import redirect
from homeport.relay.site.forms import read_form
from homeport.relay.site.keys import (
    ACCOUNTS,
    AUDIT,
    GATE,
    PAGES,
    current,
    notify,
    sign_in_first,
)
from homeport.relay.site.reauth import password_again
from homeport.relay.site.security import security_page, show_recovery_codes

__all__ = ["routes"]

log = logging.getLogger(__name__)

PATH = "/security"

routes = web.RouteTableDef()


@dataclass(frozen=True, slots=True)
class _Action:
    """A sensitive action's own page: one clear form, asking for the password or a code."""

    path: str
    title: str
    explanation: str
    button: str
    danger: bool


_TURN_OFF = _Action(
    "/security/totp/disable",
    "Turn off two-step verification",
    "Signing in will ask only for your password (or a passkey) again, and your recovery "
    "codes stop working. Your other sessions are ended.",
    "Turn off two-step verification",
    danger=True,
)
_NEW_CODES = _Action(
    "/security/recovery-codes",
    "Get new recovery codes",
    "You get ten new recovery codes, shown once on the next page; the ones you have "
    "now stop working.",
    "Get new recovery codes",
    danger=False,
)


def _action_page(
    request: web.Request,
    session: SessionInfo,
    action: _Action,
    *,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    return request.app[PAGES].render(
        "reauth_action.html",
        status=status,
        title=action.title,
        user_email=session.email,
        action=action.path,
        explanation=action.explanation,
        button=action.button,
        danger=action.danger,
        error=error,
        error_field="password" if error else None,
    )


async def _enabled_page(
    request: web.Request, action: _Action
) -> tuple[SessionInfo | None, web.StreamResponse]:
    session = current(request)
    if session is None:
        return None, sign_in_first(action.path)
    if not await request.app[ACCOUNTS].totp.is_enabled(session.user_id):
        return session, redirect(PATH)
    return session, _action_page(request, session, action)


@routes.get("/security/totp/disable")
async def disable_form(request: web.Request) -> web.StreamResponse:
    return (await _enabled_page(request, _TURN_OFF))[1]


@routes.get("/security/recovery-codes/new")
async def regenerate_form(request: web.Request) -> web.StreamResponse:
    return (await _enabled_page(request, _NEW_CODES))[1]


async def _reauthenticated(
    request: web.Request, session: SessionInfo, action: _Action
) -> web.Response | None:
    """``None`` if the form proves the person again (password or code), else the answer."""
    form = await read_form(request)
    password = str(form.get("password", ""))
    code = str(form.get("code", ""))
    accounts = request.app[ACCOUNTS]
    wait: float = 0.0
    if code:
        outcome = await accounts.totp.verify(session.user_id, code, ip=request.remote)
        if outcome.ok:
            return None
        wait = outcome.wait
    elif password:
        checked = await password_again(accounts, request, session, password)
        if checked is True:
            return None
        if checked is not False:
            wait = checked
    if wait > 0:
        response = _action_page(
            request,
            session,
            action,
            error="Too many attempts. Wait a moment, then try again.",
            status=429,
        )
        response.headers["Retry-After"] = retry_after(wait)
        return response
    log.warning("account.reauth_failed", extra={"user": session.user_id})
    return _action_page(
        request,
        session,
        action,
        error="That is not right. Enter your password, or a current code from your app.",
        status=401,
    )


@routes.post("/security/totp/disable")
async def disable(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    refused = await _reauthenticated(request, session, _TURN_OFF)
    if refused is not None:
        return refused
    accounts = request.app[ACCOUNTS]
    await accounts.totp.disable(session.user_id)
    await accounts.sessions.revoke_user(session.user_id, except_session_id=session.session_id)
    request.app[GATE].end_user(session.user_id, except_session_id=session.session_id)
    await request.app[AUDIT].record(request, EventType.TOTP_DISABLED, session, factor="totp")
    await notify(request, session.user_id, "two-step verification was turned off")
    log.info("account.totp_disabled", extra={"user": session.user_id})
    return redirect(PATH + "?done=totp-off")


@routes.post("/security/recovery-codes")
async def regenerate(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    refused = await _reauthenticated(request, session, _NEW_CODES)
    if refused is not None:
        return refused
    try:
        codes = await request.app[ACCOUNTS].totp.regenerate_recovery_codes(session.user_id)
    except TotpError as exc:
        return await security_page(request, session, error=str(exc), status=409)
    await request.app[AUDIT].record(request, EventType.RECOVERY_CODES_REGENERATED, session)
    await notify(request, session.user_id, "new recovery codes were made")
    return await show_recovery_codes(request, session, codes, first=False)
