"""Account-site pages for what a person may ask for under the GDPR: their data, and deletion.

The rules live in :mod:`homeport.accounts.export` and
:mod:`homeport.accounts.deletion`. Threats these pages stop:

* **The export handing out a way in**: it carries no secret or hash of one;
  it is served ``no-store``, as an attachment, only to the signed-in account.
* **Someone at a signed-in browser (or with a stolen session) deleting the
  account**: deletion needs the password or a current authenticator code
  (throttled like a sign-in) and a ticked confirmation; the address is told by
  mail afterwards when the relay has mail.
* **Access that outlives the account**: the homes it owned are unlinked and
  their tunnels closed, every session and app link that died is cut at once
  (open requests and WebSockets included), as revocation does
  (:func:`cut_deleted`).
* **CSRF**: the ``POST`` passes :mod:`.guard` first.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Final

from aiohttp import web

from homeport.accounts.deletion import Deleted
from homeport.accounts.errors import AccountsError
from homeport.accounts.sessions import SessionInfo
from homeport.accounts.throttle import retry_after
from homeport.relay.live import Ending
from homeport.relay.site.forms import field, read_form
from homeport.relay.site.keys import (
    ACCOUNTS,
    APP_LINKS,
    GATE,
    HOMES,
    MAIL,
    PAGES,
    current,
    sign_in_first,
)
from homeport.relay.site.reauth import password_or_code
from homeport.relay.site.signin_flow import ACCOUNT_COOKIE

__all__ = ["EXPORT_PATH", "PATH", "cut_deleted", "routes"]

log = logging.getLogger(__name__)

PATH: Final = "/account/privacy"
EXPORT_PATH: Final = "/account/export"
DELETE_PATH: Final = "/account/delete"

routes = web.RouteTableDef()


async def _page(
    request: web.Request, session: SessionInfo, *, error: str | None = None, status: int = 200
) -> web.Response:
    accounts = request.app[ACCOUNTS]
    user = await accounts.users.get(session.user_id)
    homes = [
        row
        for row in await accounts.instances.find(user_id=session.user_id)
        if row.owner_id == session.user_id
    ]
    return request.app[PAGES].render(
        "privacy.html",
        status=status,
        title="Your data",
        user_email=session.email,
        error=error,
        homes=[home.name for home in homes],
        has_password=user is not None and user.has_password,
        has_totp=await accounts.totp.is_enabled(session.user_id),
    )


@routes.get(PATH)
async def show(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    return await _page(request, session)


@routes.get(EXPORT_PATH)
async def export(request: web.Request) -> web.StreamResponse:
    """Everything the relay holds about the account, as one JSON download."""
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    document = await request.app[ACCOUNTS].exports.export(session.user_id)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    response = web.Response(
        text=json.dumps(document, indent=2, ensure_ascii=False) + "\n",
        content_type="application/json",
        charset="utf-8",
    )
    request.app[PAGES].secure(response)  # no-store, nosniff, CSP
    response.headers["Content-Disposition"] = f'attachment; filename="homeport-account-{day}.json"'
    log.info("account.exported", extra={"user": session.user_id})
    return response


def cut_deleted(app: web.Application, deleted: Deleted) -> None:
    """Cut what a deletion ended, in this process, at once (the homes' tunnels are closed
    by the caller: that awaits)."""
    gate, app_links = app[GATE], app[APP_LINKS]
    for instance_id in deleted.homes:
        app_links.forget_instance(instance_id)
        gate.end_instance(instance_id)
    for link_id in deleted.app_links:
        app_links.forget_link(link_id)
        gate.live.end_app_link(link_id)
    gate.end_sessions(deleted.sessions)
    gate.end_user(deleted.user_id, why=Ending.ACCESS_WITHDRAWN)


@routes.post(DELETE_PATH)
async def delete(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    accounts, pages = request.app[ACCOUNTS], request.app[PAGES]
    form = await read_form(request)
    checked = await password_or_code(
        accounts,
        request,
        session,
        password=field(form, "password", 4096),
        code=field(form, "code", 16),
    )
    if checked is not True:
        if checked is not False:
            response = await _page(
                request,
                session,
                error="Too many attempts. Wait a moment, then try again.",
                status=429,
            )
            response.headers["Retry-After"] = retry_after(checked)
            return response
        log.warning("account.reauth_failed", extra={"user": session.user_id})
        return await _page(
            request,
            session,
            error="To delete your account, enter your password or a current code from your "
            "authenticator app.",
            status=401,
        )
    if field(form, "confirm", 8) != "yes":
        return await _page(
            request,
            session,
            error="Tick the box to confirm that you want to delete your account.",
            status=400,
        )
    try:
        deleted = await accounts.deletion.delete(
            session.user_id, ip=request.remote, user_agent=request.headers.get("User-Agent", "")
        )
    except AccountsError as exc:
        return await _page(request, session, error=str(exc), status=409)
    for instance_id in deleted.homes:
        await request.app[HOMES].close_instance(instance_id)
    cut_deleted(request.app, deleted)
    mail = request.app.get(MAIL)
    if mail is not None:
        mail.outbox.post(
            mail.writer.account_deleted(
                deleted.email,
                homes=len(deleted.homes),
                moment=datetime.now(UTC),
                ip=request.remote,
                user_agent=request.headers.get("User-Agent", ""),
            )
        )
    log.info(
        "account.deleted",
        extra={"user": deleted.user_id, "homes": len(deleted.homes)},
    )
    response = pages.message(
        "Account deleted",
        "Your Homeport account is deleted. The homes it owned are unlinked, you have "
        "left the homes shared with you, and every session and app link has ended. The "
        "relay keeps the account's activity log (no passwords, codes or content) for up "
        "to 180 days for security, then deletes it too.",
        status=200,
        link="/signin",
        link_text="Sign in page",
    )
    response.del_cookie(ACCOUNT_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
    return response
