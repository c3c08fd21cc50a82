"""The account site's password change (R-PWD-05 change part, R-SES-04).

Threats this stops:

* Someone at an unlocked, signed-in browser taking the account over: the
  change needs the current password, checked (and throttled) like a sign-in.
* A thief who knew the old password, or held a session, staying in: every
  other session ends in the same transaction, and their open streams and
  WebSockets are cut at once (:meth:`SessionGate.end_user`).
* Weak new passwords: the full policy (:func:`check_new_password`: length,
  common-password blocklist, context words) applies, with the reason shown.
* Cross-site request forgery: the POST is checked by :mod:`.guard`.
"""

from __future__ import annotations

import logging

from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.errors import PasswordPolicyError
from homeport.accounts.sessions import SessionInfo
from homeport.accounts.throttle import retry_after
from homeport.relay.site.forms import read_form
from homeport.relay.site.keys import ACCOUNTS, AUDIT, GATE, PAGES, current, notify, sign_in_first
from homeport.relay.site.reauth import password_again

__all__ = ["routes"]

log = logging.getLogger(__name__)

PATH = "/security/password"

routes = web.RouteTableDef()


def _form(
    request: web.Request,
    session: SessionInfo,
    *,
    error: str | None,
    error_field: str | None = None,
    status: int = 200,
) -> web.Response:
    return request.app[PAGES].render(
        "password.html",
        status=status,
        title="Change your password",
        user_email=session.email,
        error=error,
        error_field=error_field,
        done=False,
    )


@routes.get(PATH)
async def show(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    return _form(request, session, error=None)


@routes.post(PATH)
async def change(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    form = await read_form(request)
    old = str(form.get("current_password", ""))
    new = str(form.get("new_password", ""))
    again = str(form.get("new_password_again", ""))
    accounts = request.app[ACCOUNTS]
    checked = await password_again(accounts, request, session, old)
    if checked is not True:
        if checked is not False:
            response = _form(
                request,
                session,
                error="Too many attempts. Wait a moment, then try again.",
                status=429,
            )
            response.headers["Retry-After"] = retry_after(checked)
            return response
        await request.app[AUDIT].record(request, EventType.PASSWORD_CHANGE_FAILED, session)
        log.warning("account.password_change_refused", extra={"user": session.user_id})
        return _form(
            request,
            session,
            error="Your current password is not right.",
            error_field="current_password",
            status=401,
        )
    if new != again:
        return _form(
            request,
            session,
            error="The two new passwords differ.",
            error_field="new_password_again",
            status=400,
        )
    if new == old:
        return _form(
            request,
            session,
            error="The new password must differ from the current one.",
            error_field="new_password",
            status=400,
        )
    try:
        await accounts.users.set_password(session.user_id, new, keep_session_id=session.session_id)
    except (PasswordPolicyError, ValueError) as exc:
        return _form(request, session, error=str(exc), error_field="new_password", status=400)
    # Every other session was revoked with the change: cut what they have open.
    request.app[GATE].end_user(session.user_id, except_session_id=session.session_id)
    await request.app[AUDIT].record(request, EventType.PASSWORD_CHANGED, session)
    await notify(request, session.user_id, "your password was changed")
    log.info("account.password_changed", extra={"user": session.user_id})
    return request.app[PAGES].render(
        "password.html",
        title="Password changed",
        user_email=session.email,
        error=None,
        done=True,
    )
