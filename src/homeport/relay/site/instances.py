"""Account-site pages for one home: link by code, rename, unlink, sharing, app links, 2FA policy.

Only the owner sees or changes a home here (the roles:
:mod:`homeport.accounts.access`, checked by the store): a member, who can
open the home, gets a 403 saying only the owner manages it; for anyone else
"no such home" and "not yours" are the same 404. Every change is a POST
(origin and size checked by :mod:`.guard`, CSRF), from a signed-in account
session.

Threats this stops, beyond ownership and CSRF:

* **Guessing link codes online.** A link code has 50 bits; the web form is
  throttled per account (growing delay from the 5th consecutive failure,
  capped at 15 minutes) and per client network (20 failures an hour), so
  at most a few thousand guesses a day reach the database even from many
  accounts on one network, against a code space of 10^15 with codes that
  live 10 minutes.
* **Access that outlives its withdrawal.** Removing a member, revoking an
  app link, requiring a second factor or unlinking the home ends the
  affected sessions in the database, drops them from the relay's caches
  and closes their open requests and WebSockets at once
  (:class:`~homeport.relay.live.LiveTraffic`); unlinking also closes
  the add-on's tunnel.
* **Secrets shown once.** Accept links and app links are shown only on the
  page that creates them (``Cache-Control: no-store``) and stored hashed.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.errors import (
    AccessDenied,
    AlreadyLinked,
    InvalidEmail,
    LinkCodeInvalid,
    NotOwner,
    UnknownInstance,
    UnknownUser,
)
from homeport.accounts.sessions import SessionInfo
from homeport.accounts.sharing import InvitationInvalid, WrongAccount, display_name
from homeport.accounts.throttle import Backoff, Window, network_key, retry_after
from homeport.qr import qr_svg
from homeport.relay.app_links import app_link_url
from homeport.relay.live import Ending
from homeport.relay.redirects import redirect
from homeport.relay.site import integrations
from homeport.relay.site.forms import parse_until, text_fields
from homeport.relay.site.keys import (
    ACCOUNTS,
    APP_LINKS,
    AUDIT,
    CONFIG,
    GATE,
    HOMES,
    INVITATION_MAIL,
    PAGES,
    current,
    sign_in_first,
)
from homeport.relay.site.refusals import no_access, owner_only

__all__ = ["routes"]

log = logging.getLogger(__name__)

#: Link-code form: per account, from the 5th consecutive failure 1 s, 2 s, ... up to 15 min.
LINK_FORM_ACCOUNT: Final = Backoff(free=4, base=1.0, cap=15 * 60.0)
#: Link-code form: at most 20 failures per client network per hour.
LINK_FORM_NETWORK: Final = Window(limit=20, window=timedelta(hours=1))
#: Expiry choices on the invitation form (days; 0 = until accepted or withdrawn).
INVITE_DAYS: Final = (1, 7, 30, 0)

routes = web.RouteTableDef()


def when(value: datetime | None) -> str:
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


# ------------------------------------------------------------------ helpers


def _signed_in(request: web.Request) -> SessionInfo | web.Response:
    """The account session, or the way to sign in (and back here, for a GET)."""
    session = current(request)
    if session is None:
        return sign_in_first(request.path_qs if request.method == "GET" else "/")
    return session


def _home(request: web.Request) -> str:
    return request.match_info.get("id", "")


def _int(request: web.Request, name: str) -> int:
    text = request.match_info.get(name, "")
    return int(text) if text.isdigit() and len(text) < 12 else -1


def _back(instance_id: str, note: str = "") -> web.Response:
    query = "?" + urlencode({"done": note}) if note else ""
    return redirect(f"/instances/{instance_id}{query}")


async def _page(
    request: web.Request,
    session: SessionInfo,
    instance_id: str,
    *,
    status: int = 200,
    error: str | None = None,
    note: str | None = None,
    **extra: Any,
) -> web.Response:
    sharing = request.app[ACCOUNTS].sharing
    try:
        instance = await sharing.owned_instance(session.user_id, instance_id)
    except UnknownInstance:
        return no_access(request, session)
    except NotOwner:
        return owner_only(request, session)
    links = [
        {
            "id": link.id,
            "name": link.name,
            "created": when(link.created_at),
            "last_used": "not yet" if link.last_used_at is None else when(link.last_used_at),
            "expires": when(link.expires_at),
        }
        for link in await sharing.app_links(instance_id)
    ]
    invitations = [
        {
            "id": inv.id,
            "email": inv.email,
            "status": inv.status,
            "expires": when(inv.expires_at),
            "accepted_by": inv.accepted_by_email,
        }
        for inv in await sharing.invitations(instance_id)
        if inv.status == "pending"
    ]
    members = [
        {"id": m.user_id, "email": m.email, "since": when(m.since), "until": when(m.until)}
        for m in await sharing.members(instance_id)
    ]
    extra.setdefault("invite_link", None)
    extra.setdefault("app_link", None)
    return request.app[PAGES].render(
        "instance.html",
        status=status,
        title=instance.name,
        user_email=session.email,
        instance={
            "id": instance.id,
            "name": instance.name,
            "url": request.app[CONFIG].tenant_origin(instance.id),
            "connected": request.app[HOMES].tunnel_for(instance.id) is not None,
            "created": when(instance.created_at),
        },
        members=members,
        invitations=invitations,
        links=links,
        invite_days=INVITE_DAYS,
        require_second_factor=await sharing.requires_second_factor(instance_id),
        integrations=await integrations.card(request, instance_id),
        error=error,
        note=note,
        **extra,
    )


# ------------------------------------------------------------------ linking


def _link_page(
    request: web.Request,
    session: SessionInfo,
    *,
    error: str | None,
    status: int = 200,
    name: str = "Home",
) -> web.Response:
    return request.app[PAGES].render(
        "link.html",
        status=status,
        title="Link a home",
        user_email=session.email,
        error=error,
        name=name,
    )


@routes.get("/link")
async def link_form(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    return _link_page(request, session, error=None)


@routes.post("/link")
async def link(request: web.Request) -> web.StreamResponse:
    """Redeem an add-on's link code for the signed-in account (throttled, see module doc)."""
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    accounts = request.app[ACCOUNTS]
    form = await text_fields(request)
    name = form.get("name", "")[:200]
    try:
        # Before the throttle: a bad name is not a guess, and must not reset the counter.
        name = display_name(name)
    except ValueError as exc:
        return _link_page(request, session, status=400, name=name, error=str(exc))
    acct_key = f"linkweb:acct:{session.user_id}"
    net_key = f"linkweb:net:{network_key(request.remote)}"
    throttle = accounts.throttle
    wait = await throttle.attempt([(acct_key, LINK_FORM_ACCOUNT), (net_key, LINK_FORM_NETWORK)])
    if wait > 0:
        log.warning("account.link_throttled", extra={"user": session.user_id})
        response = _link_page(
            request,
            session,
            status=429,
            name=name,
            error="Too many attempts. Wait a moment, then try again.",
        )
        response.headers["Retry-After"] = retry_after(wait)
        return response
    try:
        instance = await accounts.instances.link(form.get("code", ""), session.email, name)
    except LinkCodeInvalid as exc:
        log.warning("account.link_failed", extra={"user": session.user_id})
        return _link_page(request, session, status=400, name=name, error=str(exc))
    except AlreadyLinked as exc:  # the code was real: that proves it was no guess
        await throttle.succeeded(clear=[acct_key], refund=[net_key])
        return _link_page(request, session, status=400, name=name, error=str(exc))
    except (UnknownUser, ValueError) as exc:
        return _link_page(request, session, status=400, name=name, error=str(exc))
    await throttle.succeeded(clear=[acct_key], refund=[net_key])
    log.info("account.linked", extra={"user": session.user_id, "instance": instance.id})
    return _back(instance.id, "linked")


# ------------------------------------------------------------------ the page

_NOTES: Final = {
    "linked": "Linked. The add-on connects within a few seconds.",
    "renamed": "Renamed.",
    "invitation-revoked": "Invitation withdrawn.",
    "member-removed": "Removed. Their open sessions have ended.",
    "link-revoked": "App link revoked. It stopped working at once.",
    "policy": "Saved.",
}


@routes.get("/instances/{id}")
async def instance(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    note = _NOTES.get(request.query.get("done", ""))
    return await _page(request, session, _home(request), note=note)


@routes.post("/instances/{id}/rename")
async def rename(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    instance_id = _home(request)
    form = await text_fields(request)
    try:
        await request.app[ACCOUNTS].sharing.rename(
            session.user_id, instance_id, form.get("name", "")[:200]
        )
    except UnknownInstance:
        return no_access(request, session)
    except NotOwner:
        return owner_only(request, session)
    except ValueError as exc:
        return await _page(request, session, instance_id, status=400, error=str(exc))
    return _back(instance_id, "renamed")


@routes.post("/instances/{id}/unlink")
async def unlink(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    instance_id = _home(request)
    form = await text_fields(request)
    if form.get("confirm") != "yes":
        return await _page(
            request,
            session,
            instance_id,
            status=400,
            error="Tick the box to confirm that you want to unlink this home.",
        )
    try:
        await request.app[ACCOUNTS].sharing.unlink(session.user_id, instance_id)
    except UnknownInstance:
        return no_access(request, session)
    except NotOwner:
        return owner_only(request, session)
    await request.app[HOMES].close_instance(instance_id)
    request.app[APP_LINKS].forget_instance(instance_id)
    request.app[integrations.INTEGRATIONS].forget(instance_id)
    request.app[GATE].end_instance(instance_id)
    log.info("account.unlinked", extra={"user": session.user_id, "instance": instance_id})
    return request.app[PAGES].message(
        "Home unlinked",
        "The home is no longer reachable through Homeport, its app links and "
        "invitations are gone, and everyone's sessions on it have ended. To link it "
        "again, use the new code the add-on shows.",
        status=200,
        user_email=session.email,
        link="/",
        link_text="Back to your homes",
    )


# ------------------------------------------------------------------ sharing


@routes.post("/instances/{id}/invitations")
async def invite(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    accounts, config = request.app[ACCOUNTS], request.app[CONFIG]
    instance_id = _home(request)
    form = await text_fields(request)
    days_text = form.get("days", "7")
    days = int(days_text) if days_text.isdigit() else -1
    if days not in INVITE_DAYS:
        return await _page(request, session, instance_id, status=400, error="Choose an expiry.")
    try:
        token, row = await accounts.sharing.invite(
            session.user_id,
            instance_id,
            form.get("email", "")[:320],
            lifetime=timedelta(days=days) if days else None,
        )
    except UnknownInstance:
        return no_access(request, session)
    except NotOwner:
        return owner_only(request, session)
    except (InvalidEmail, ValueError) as exc:
        return await _page(request, session, instance_id, status=400, error=str(exc))
    link = config.account_origin + "/invitations/accept?" + urlencode({"token": token})
    log.info("account.invited", extra={"user": session.user_id, "instance": instance_id})
    await request.app[AUDIT].record(
        request,
        EventType.INVITATION_SENT,
        session,
        instance_id=instance_id,
        detail=f"invitation {row.id}",
    )
    mailed = False
    mail = request.app[INVITATION_MAIL]
    if mail is not None:
        home = await accounts.instances.get(instance_id)
        mailed = mail.invite(
            row.email,
            inviter=session.email,
            home=home.name if home is not None else "Home",
            accept_url=link,
            expires=row.expires_at,
        )
    return await _page(
        request,
        session,
        instance_id,
        invite_link={"url": link, "email": row.email, "mailed": mailed},
    )


@routes.post("/instances/{id}/invitations/{inv}/revoke")
async def revoke_invitation(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    instance_id = _home(request)
    invitation_id = _int(request, "inv")
    try:
        await request.app[ACCOUNTS].sharing.revoke_invitation(
            session.user_id, instance_id, invitation_id
        )
    except UnknownInstance:
        return no_access(request, session)
    except NotOwner:
        return owner_only(request, session)
    await request.app[AUDIT].record(
        request,
        EventType.INVITATION_REVOKED,
        session,
        instance_id=instance_id,
        detail=f"invitation {invitation_id}",
    )
    return _back(instance_id, "invitation-revoked")


@routes.post("/instances/{id}/members/{uid}/remove")
async def remove_member(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    instance_id = _home(request)
    user_id = _int(request, "uid")
    try:
        await request.app[ACCOUNTS].sharing.remove_member(session.user_id, instance_id, user_id)
    except UnknownInstance:
        return no_access(request, session)
    except NotOwner:
        return owner_only(request, session)
    # Sessions are revoked in the database; the cache and open streams go now too.
    request.app[GATE].end_user(user_id, instance_id=instance_id, why=Ending.ACCESS_WITHDRAWN)
    log.info("account.member_removed", extra={"user": session.user_id, "member": user_id})
    return _back(instance_id, "member-removed")


@routes.post("/instances/{id}/leave")
async def leave(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    instance_id = _home(request)
    if not await request.app[ACCOUNTS].sharing.leave(session.user_id, instance_id):
        return no_access(request, session)
    request.app[GATE].end_user(
        session.user_id, instance_id=instance_id, why=Ending.ACCESS_WITHDRAWN
    )
    log.info("account.left_home", extra={"user": session.user_id, "instance": instance_id})
    return redirect("/")


@routes.get("/invitations/accept")
async def accept_form(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    pages = request.app[PAGES]
    token = request.query.get("token", "")
    view = await request.app[ACCOUNTS].sharing.invitation(token)
    if view is None:
        return pages.message(
            "Invitation not valid",
            str(InvitationInvalid()),
            status=404,
            user_email=session.email,
            link="/",
            link_text="Your homes",
        )
    return pages.render(
        "accept.html",
        title="Invitation",
        user_email=session.email,
        token=token,
        invitation={
            "home": view.instance_name,
            "inviter": view.inviter_email,
            "email": view.email,
            "expires": when(view.expires_at),
            "matches": view.email == session.email,
        },
    )


@routes.post("/invitations/accept")
async def accept(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    pages = request.app[PAGES]
    form = await text_fields(request)
    try:
        instance_id = await request.app[ACCOUNTS].sharing.accept(
            form.get("token", ""), session.user_id
        )
    except (InvitationInvalid, WrongAccount, AccessDenied) as exc:
        return pages.message(
            "Invitation not accepted",
            str(exc),
            status=403 if isinstance(exc, WrongAccount) else 404,
            user_email=session.email,
            link="/",
            link_text="Your homes",
        )
    log.info("account.invitation_accepted", extra={"user": session.user_id})
    await request.app[AUDIT].record(
        request, EventType.INVITATION_ACCEPTED, session, instance_id=instance_id
    )
    return pages.message(
        "Invitation accepted",
        "You can now open this home from your list of homes.",
        status=200,
        user_email=session.email,
        link=request.app[CONFIG].tenant_origin(instance_id) + "/",
        link_text="Open Home Assistant",
    )


# ------------------------------------------------------------------ app links


@routes.post("/instances/{id}/app-links")
async def create_app_link(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    instance_id = _home(request)
    form = await text_fields(request)
    try:
        until = parse_until(form.get("until", ""))
        label, row = await request.app[ACCOUNTS].sharing.create_app_link(
            session.user_id, instance_id, form.get("name", "")[:200], expires_at=until
        )
    except UnknownInstance:
        return no_access(request, session)
    except NotOwner:
        return owner_only(request, session)
    except ValueError as exc:
        return await _page(request, session, instance_id, status=400, error=str(exc))
    url = app_link_url(request.app[CONFIG], label)
    log.info("account.app_link_created", extra={"user": session.user_id, "link": row.id})
    await request.app[AUDIT].record(
        request,
        EventType.APP_LINK_CREATED,
        session,
        instance_id=instance_id,
        detail=f"app link {row.id}" + ("" if until is None else f" until {when(until)}"),
    )
    return await _page(
        request,
        session,
        instance_id,
        app_link={"name": row.name, "url": url, "qr": qr_svg(url), "until": when(until)},
    )


@routes.post("/instances/{id}/app-links/{lid}/revoke")
async def revoke_app_link(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    instance_id = _home(request)
    link_id = _int(request, "lid")
    try:
        revoked = await request.app[ACCOUNTS].sharing.revoke_app_link(
            session.user_id, instance_id, link_id
        )
    except UnknownInstance:
        return no_access(request, session)
    except NotOwner:
        return owner_only(request, session)
    if revoked:
        await request.app[AUDIT].record(
            request,
            EventType.APP_LINK_REVOKED,
            session,
            instance_id=instance_id,
            detail=f"app link {link_id}",
        )
        # Then at once: no await between forgetting the link and cutting its traffic.
        request.app[APP_LINKS].forget_link(link_id)
        request.app[GATE].live.end_app_link(link_id)
    return _back(instance_id, "link-revoked")


# ------------------------------------------------------------------ 2FA policy


@routes.post("/instances/{id}/second-factor")
async def second_factor(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    instance_id = _home(request)
    form = await text_fields(request)
    try:
        ended = await request.app[ACCOUNTS].sharing.set_require_second_factor(
            session.user_id,
            instance_id,
            form.get("required") == "yes",
            session_id=session.session_id,
        )
    except UnknownInstance:
        return no_access(request, session)
    except NotOwner:
        return owner_only(request, session)
    except AccessDenied as exc:
        return await _page(request, session, instance_id, status=409, error=str(exc))
    request.app[GATE].end_sessions(ended)
    return _back(instance_id, "policy")
