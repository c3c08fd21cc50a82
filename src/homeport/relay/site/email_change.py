"""Account-site pages for changing the account's email address (only with mail).

The rules live in :mod:`homeport.accounts.email_change`. Threats these pages stop:

* **Someone at a signed-in browser (or with a stolen session) moving the
  account to their own mailbox**: the form needs the password or a current
  authenticator code (:func:`~.reauth.password_or_code`, throttled like a
  sign-in), then the code mailed to the new address; the old address is told
  at once, with a link that undoes the change for 7 days and ends every
  session (:data:`UNDO_PATH`).
* **Mail scanners following the undo link**: it opens a page with a button;
  only the same-origin ``POST`` acts.
* **A code typed into another browser**: the pending change is bound to this
  browser's ``__Host-homeport_email_change`` cookie and to the account.
* **CSRF**: every ``POST`` passes :mod:`.guard` first.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.email_change import CODE_LIFETIME, UNDO_LIFETIME
from homeport.accounts.errors import InvalidEmail
from homeport.accounts.sessions import SessionInfo
from homeport.accounts.throttle import retry_after
from homeport.relay.redirects import redirect
from homeport.relay.site.forms import field, read_form
from homeport.relay.site.keys import (
    ACCOUNTS,
    AUDIT,
    CONFIG,
    GATE,
    MAIL,
    PAGES,
    current,
    sign_in_first,
)
from homeport.relay.site.mail import link_refused
from homeport.relay.site.reauth import password_or_code
from homeport.relay.site.signin_flow import ACCOUNT_COOKIE

__all__ = ["CHANGE_COOKIE", "PATH", "UNDO_PATH", "routes"]

log = logging.getLogger(__name__)

PATH: Final = "/account/email"
CONFIRM_PATH: Final = "/account/email/confirm"
UNDO_PATH: Final = "/account/email/undo"
#: The browser's pending change (a random token; only its hash is stored).
CHANGE_COOKIE: Final = "__Host-homeport_email_change"

routes = web.RouteTableDef()


def _set_cookie(response: web.StreamResponse, value: str) -> None:
    response.set_cookie(
        CHANGE_COOKIE,
        value,
        path="/",
        max_age=int(CODE_LIFETIME.total_seconds()),
        secure=True,
        httponly=True,
        samesite="Lax",
    )


def _drop_cookie(response: web.StreamResponse, name: str = CHANGE_COOKIE) -> None:
    response.del_cookie(name, path="/", secure=True, httponly=True, samesite="Lax")


async def _form(
    request: web.Request,
    session: SessionInfo,
    *,
    error: str | None = None,
    status: int = 200,
    new_email: str = "",
) -> web.Response:
    accounts = request.app[ACCOUNTS]
    user = await accounts.users.get(session.user_id)
    return request.app[PAGES].render(
        "email_change.html",
        status=status,
        title="Change your email address",
        user_email=session.email,
        error=error,
        new_email=new_email,
        has_password=user is not None and user.has_password,
        has_totp=await accounts.totp.is_enabled(session.user_id),
        changed=request.query.get("done") == "changed",
        undo_days=UNDO_LIFETIME.days,
    )


def _too_many(response: web.Response, wait: float) -> web.Response:
    response.headers["Retry-After"] = retry_after(wait)
    return response


@routes.get(PATH)
async def show(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    return await _form(request, session)


@routes.post(PATH)
async def start(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    accounts, mail = request.app[ACCOUNTS], request.app[MAIL]
    form = await read_form(request)
    new_email = field(form, "email", 320)
    checked = await password_or_code(
        accounts,
        request,
        session,
        password=field(form, "password", 4096),
        code=field(form, "code", 16),
    )
    if checked is not True:
        if checked is not False:
            return _too_many(
                await _form(
                    request,
                    session,
                    error="Too many attempts. Wait a moment, then try again.",
                    status=429,
                    new_email=new_email,
                ),
                checked,
            )
        log.warning("account.reauth_failed", extra={"user": session.user_id})
        return await _form(
            request,
            session,
            error="To change your address, enter your password or a current code from "
            "your authenticator app.",
            status=401,
            new_email=new_email,
        )
    try:
        started = await accounts.email_changes.start(session.user_id, new_email)
    except InvalidEmail:
        return await _form(
            request, session, error="Enter an email address.", status=400, new_email=new_email
        )
    except ValueError as exc:
        return await _form(request, session, error=str(exc), status=400, new_email=new_email)
    if started.wait > 0:
        return _too_many(
            await _form(
                request,
                session,
                error="We have mailed too many codes for this account. Wait a while, "
                "then try again.",
                status=429,
                new_email=new_email,
            ),
            started.wait,
        )
    moment, agent = datetime.now(UTC), request.headers.get("User-Agent", "")
    if started.mail == "code":
        mail.outbox.post(
            mail.writer.email_change_code(
                started.new_email,
                code=started.code,
                minutes=int(CODE_LIFETIME.total_seconds() // 60),
                moment=moment,
                ip=request.remote,
                user_agent=agent,
            )
        )
    elif started.mail == "exists":
        mail.outbox.post(
            mail.writer.email_change_exists(
                started.new_email, moment=moment, ip=request.remote, user_agent=agent
            )
        )
    await request.app[AUDIT].record(request, EventType.EMAIL_CHANGE_REQUESTED, session)
    log.info("account.email_change_requested", extra={"user": session.user_id})
    response = redirect(CONFIRM_PATH)
    _set_cookie(response, started.token)
    return response


async def _confirm_page(
    request: web.Request,
    session: SessionInfo,
    new_email: str,
    *,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    return request.app[PAGES].render(
        "email_change_confirm.html",
        status=status,
        title="Check your new mailbox",
        user_email=session.email,
        new_email=new_email,
        minutes=int(CODE_LIFETIME.total_seconds() // 60),
        error=error,
    )


def _start_again(request: web.Request, session: SessionInfo, text: str) -> web.Response:
    response = request.app[PAGES].message(
        "Start again",
        text,
        status=400,
        user_email=session.email,
        link=PATH,
        link_text="Change your email address",
    )
    _drop_cookie(response)
    return response


@routes.get(CONFIRM_PATH)
async def confirm_form(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    new_email = await request.app[ACCOUNTS].email_changes.pending(
        request.cookies.get(CHANGE_COOKIE, ""), session.user_id
    )
    if new_email is None:
        return redirect(PATH)
    return await _confirm_page(request, session, new_email)


@routes.post(CONFIRM_PATH)
async def confirm(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    accounts, mail, config = request.app[ACCOUNTS], request.app[MAIL], request.app[CONFIG]
    token = request.cookies.get(CHANGE_COOKIE, "")
    new_email = await accounts.email_changes.pending(token, session.user_id)
    form = await read_form(request)
    outcome = await accounts.email_changes.confirm(
        token,
        field(form, "code", 32),
        user_id=session.user_id,
        keep_session_id=session.session_id,
        ip=request.remote,
    )
    if not outcome.ok:
        if outcome.taken:
            return _start_again(
                request, session, "That address has a Homeport account now; nothing changed."
            )
        if outcome.gone or new_email is None:
            return _start_again(
                request,
                session,
                "This change has ended (too many wrong codes, or it expired). Nothing "
                "changed; start again to get a new code.",
            )
        log.warning("account.email_change_code_failed", extra={"user": session.user_id})
        if outcome.wait > 0:
            return _too_many(
                await _confirm_page(
                    request,
                    session,
                    new_email,
                    error="Too many attempts. Wait a moment, then try again.",
                    status=429,
                ),
                outcome.wait,
            )
        return await _confirm_page(
            request,
            session,
            new_email,
            error="That code is not right. Use the code from the newest email.",
            status=401,
        )
    # The other sessions ended with the change: cut what they have open.
    request.app[GATE].end_sessions(outcome.ended)
    undo_url = config.account_origin + UNDO_PATH + "?" + urlencode({"t": outcome.undo_token})
    mail.outbox.post(
        mail.writer.email_changed(
            outcome.old_email,
            new_email=outcome.new_email,
            undo_url=undo_url,
            days=UNDO_LIFETIME.days,
            moment=datetime.now(UTC),
            ip=request.remote,
            user_agent=request.headers.get("User-Agent", ""),
        )
    )
    await request.app[AUDIT].record(request, EventType.EMAIL_CHANGED, session)
    log.info("account.email_changed", extra={"user": session.user_id})
    response = redirect(PATH + "?done=changed")
    _drop_cookie(response)
    return response


# ------------------------------------------------------------------ undo


def _bad_undo(request: web.Request) -> web.Response:
    return link_refused(
        request.app[PAGES],
        "This link was used already or has expired. If someone else changed your "
        "address, contact the relay's operator.",
        link="/signin",
        link_text="Sign in",
    )


@routes.get(UNDO_PATH)
async def undo_form(request: web.Request) -> web.StreamResponse:
    token = request.query.get("t", "")[:64]
    found = await request.app[ACCOUNTS].email_changes.undo_view(token)
    if found is None:
        return _bad_undo(request)
    old_email, new_email = found
    return request.app[PAGES].render(
        "email_change_undo.html",
        title="Not you?",
        token=token,
        old_email=old_email,
        new_email=new_email,
    )


@routes.post(UNDO_PATH)
async def undo(request: web.Request) -> web.StreamResponse:
    accounts, pages = request.app[ACCOUNTS], request.app[PAGES]
    form = await read_form(request)
    undone = await accounts.email_changes.undo(field(form, "t", 64))
    if undone is None:
        return _bad_undo(request)
    # Every session of the account was revoked: forget them and cut their traffic.
    request.app[GATE].end_user(undone.user_id)
    await request.app[AUDIT].record(
        request,
        EventType.EMAIL_CHANGE_UNDONE,
        user_id=undone.user_id,
        detail="" if undone.restored else "old address has another account now",
    )
    log.warning(
        "account.email_change_undone",
        extra={"user": undone.user_id, "restored": undone.restored},
    )
    if undone.restored:
        text = (
            f"Your address is {undone.email} again, and every session of your account has "
            "ended. Whoever changed it knew your password: choose a new one now."
        )
    else:
        text = (
            "Every session of your account has ended, but your old address has another "
            "account now, so it could not be put back. Contact the relay's operator."
        )
    response = pages.message(
        "Change undone",
        text,
        status=200,
        link="/signin/forgot",
        link_text="Choose a new password",
    )
    _drop_cookie(response, ACCOUNT_COOKIE)
    _drop_cookie(response)
    return response
