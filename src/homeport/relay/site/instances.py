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
* **Secrets shown once.** Accept links and app links are stored hashed and
  shown once, on the page the form's ``303`` leads to (post/redirect/get,
  :mod:`.once`): a reload shows the page without them and creates nothing.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.alerts import AFTER_CHOICES
from homeport.accounts.audit import EventType
from homeport.accounts.errors import (
    AccessDenied,
    AccountExists,
    AlreadyLinked,
    InvalidEmail,
    LinkCodeInvalid,
    NotOwner,
    PasswordPolicyError,
    UnknownInstance,
    UnknownUser,
)
from homeport.accounts.sessions import SessionInfo
from homeport.accounts.sharing import (
    InvitationInvalid,
    InvitationView,
    WrongAccount,
    display_name,
)
from homeport.accounts.throttle import Backoff, Window, network_key, retry_after
from homeport.qr import qr_svg
from homeport.relay.app_links import app_link_url
from homeport.relay.live import Ending
from homeport.relay.redirects import redirect
from homeport.relay.site import integrations
from homeport.relay.site.forms import home_id, parse_until, path_int, text_fields, when
from homeport.relay.site.keys import (
    ACCOUNTS,
    APP_LINKS,
    AUDIT,
    CONFIG,
    GATE,
    HOMES,
    INVITATION_MAIL,
    NOTICES,
    PAGES,
    SHOWN_ONCE,
    SIGNIN,
    current,
    sign_in_first,
)
from homeport.relay.site.once import OnceUnavailable
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


# ------------------------------------------------------------------ helpers


def _signed_in(request: web.Request) -> SessionInfo | web.Response:
    """The account session, or the way to sign in (and back here, for a GET)."""
    session = current(request)
    if session is None:
        return sign_in_first(request.path_qs if request.method == "GET" else "/")
    return session


def _back(instance_id: str, note: str = "", *, shown: str = "") -> web.Response:
    query = {"done": note} if note else {}
    if shown:
        query["shown"] = shown  # a ticket for the secret the page shows once (.once)
    target = f"/instances/{instance_id}" + ("?" + urlencode(query) if query else "")
    return redirect(target + ("#new-secret" if shown else ""))


def _alert_label(minutes: int) -> str:
    return (
        f"{minutes} minutes"
        if minutes < 60
        else f"{minutes // 60} hour" + ("s" if minutes >= 120 else "")
    )


async def _page(
    request: web.Request,
    session: SessionInfo,
    instance_id: str,
    *,
    status: int = 200,
    error: str | None = None,
    error_field: str | None = None,
    note: str | None = None,
    **extra: Any,
) -> web.Response:
    accounts = request.app[ACCOUNTS]
    sharing = accounts.sharing
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
            "created": link.created_at,
            "last_used": link.last_used_at,
            "expires": when(link.expires_at),
        }
        for link in await sharing.app_links(instance_id)
    ]
    invitations = [
        {
            "id": inv.id,
            "email": inv.email,
            "status": inv.status,
            "expires": inv.expires_at,
            "accepted_by": inv.accepted_by_email,
        }
        for inv in await sharing.invitations(instance_id)
        if inv.status == "pending"
    ]
    members = [
        {"id": m.user_id, "email": m.email, "since": m.since, "until": when(m.until)}
        for m in await sharing.members(instance_id)
    ]
    extra.setdefault("invite_link", None)
    extra.setdefault("app_link", None)
    connected = request.app[HOMES].tunnel_for(instance.id) is not None
    alert_after = await accounts.offline_alerts.after(instance_id)
    return request.app[PAGES].render(
        "instance.html",
        status=status,
        title=instance.name,
        user_email=session.email,
        instance={
            "id": instance.id,
            "name": instance.name,
            "url": request.app[CONFIG].tenant_origin(instance.id),
            "connected": connected,
            "offline_since": None if connected else instance.last_disconnected_at,
            "created": instance.created_at,
        },
        # Offline alerts are mail: offered only when the relay has mail.
        alerts_available=request.app[NOTICES] is not None,
        alert={"enabled": alert_after is not None, "after": alert_after or 15},
        alert_choices=[(m, _alert_label(m)) for m in AFTER_CHOICES],
        members=members,
        invitations=invitations,
        links=links,
        invite_days=INVITE_DAYS,
        require_second_factor=await sharing.requires_second_factor(instance_id),
        integrations=await integrations.card(request, instance_id),
        error=error,
        error_field=error_field,
        note=note,
        **extra,
    )


# ------------------------------------------------------------------ linking


def _link_page(
    request: web.Request,
    session: SessionInfo,
    *,
    error: str | None,
    error_field: str | None = "code",
    status: int = 200,
    name: str = "Home",
    code: str = "",
) -> web.Response:
    return request.app[PAGES].render(
        "link.html",
        status=status,
        title="Link a home",
        user_email=session.email,
        error=error,
        error_field=error_field if error else None,
        name=name,
        code=code,
    )


@routes.get("/link")
async def link_form(request: web.Request) -> web.StreamResponse:
    """The link form; ``?code=`` (the add-on panel's button) fills the code in, nothing more:
    linking stays this account's own same-origin POST."""
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    code = request.query.get("code", "")
    code = code if len(code) <= 32 and code.replace("-", "").isalnum() else ""
    return _link_page(request, session, error=None, code=code.upper())


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
        return _link_page(
            request,
            session,
            status=400,
            name=name,
            error=str(exc),
            error_field="name",
            code=form.get("code", "")[:32],
        )
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
            error_field=None,
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
        return _link_page(request, session, status=400, name=name, error=str(exc), error_field=None)
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
    "alerts": "Saved: offline alerts for this home are updated.",
}


@routes.get("/instances/{id}")
async def instance(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    note = _NOTES.get(request.query.get("done", ""))
    extra: dict[str, Any] = {}
    ticket = request.query.get("shown")
    once = request.app[SHOWN_ONCE]
    status = 200
    try:
        if (shown := await once.take(session.session_id, "app_link", ticket)) is not None:
            extra = _shown("app_link", shown)
        elif (shown := await once.take(session.session_id, "invitation", ticket)) is not None:
            extra = _shown("invitation", shown)
        elif ticket:
            note = "That link was shown once already; it is not shown again."
    except OnceUnavailable:
        # Not taken: the link still waits (.once), for a reload once the store answers.
        status = 503
        note = (
            "The new link cannot be shown at this moment. Reload this page in a few seconds "
            "to see it; if it still does not appear, revoke it below and make a new one."
        )
    response = await _page(request, session, home_id(request), status=status, note=note, **extra)
    if status == 503:
        response.headers["Retry-After"] = "5"
    return response


def _shown(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """What the home's page shows for a secret waiting in :mod:`.once`."""
    if kind == "app_link":
        return {"app_link": {**payload, "qr": qr_svg(payload["url"])}}
    return {"invite_link": payload}


async def _show_once(
    request: web.Request, session: SessionInfo, instance_id: str, kind: str, payload: dict[str, Any]
) -> web.Response:
    """Post/redirect/get for a new link (:mod:`.once`); when it cannot wait (Redis down on a
    cluster), this answer shows it itself, so a link made is never lost unseen."""
    try:
        ticket = await request.app[SHOWN_ONCE].put(session.session_id, kind, payload)
    except OnceUnavailable:
        return await _page(request, session, instance_id, **_shown(kind, payload))
    return _back(instance_id, shown=ticket)


@routes.post("/instances/{id}/rename")
async def rename(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    instance_id = home_id(request)
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
        return await _page(
            request, session, instance_id, status=400, error=str(exc), error_field="name"
        )
    return _back(instance_id, "renamed")


@routes.post("/instances/{id}/unlink")
async def unlink(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    instance_id = home_id(request)
    form = await text_fields(request)
    if form.get("confirm") != "yes":
        return await _page(
            request,
            session,
            instance_id,
            status=400,
            error="Tick the box to confirm that you want to unlink this home.",
            error_field="confirm",
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
    instance_id = home_id(request)
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
        return await _page(
            request, session, instance_id, status=400, error=str(exc), error_field="invite-email"
        )
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
    return await _show_once(
        request,
        session,
        instance_id,
        "invitation",
        {"url": link, "email": row.email, "mailed": mailed},
    )


@routes.post("/instances/{id}/invitations/{inv}/revoke")
async def revoke_invitation(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    instance_id = home_id(request)
    invitation_id = path_int(request, "inv")
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
    instance_id = home_id(request)
    user_id = path_int(request, "uid")
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
    instance_id = home_id(request)
    if not await request.app[ACCOUNTS].sharing.leave(session.user_id, instance_id):
        return no_access(request, session)
    request.app[GATE].end_user(
        session.user_id, instance_id=instance_id, why=Ending.ACCESS_WITHDRAWN
    )
    log.info("account.left_home", extra={"user": session.user_id, "instance": instance_id})
    return redirect("/")


def _invitation_gone(request: web.Request, session: SessionInfo | None) -> web.Response:
    return request.app[PAGES].message(
        "Invitation not valid",
        str(InvitationInvalid()),
        status=404,
        user_email=session.email if session is not None else None,
        link="/",
        link_text="Your homes",
    )


def _invitation_view(view: InvitationView, token: str) -> dict[str, Any]:
    query = urlencode({"token": token})
    return {
        "home": view.instance_name,
        "inviter": view.inviter_email,
        "email": view.email,
        "expires": view.expires_at,
        "signin_url": "/signin?" + urlencode({"next": "/invitations/accept?" + query}),
        "signup_url": "/invitations/signup?" + query,
    }


@routes.get("/invitations/accept")
async def accept_form(request: web.Request) -> web.StreamResponse:
    """The invitation link's page: who invites whom to which home, and what to do next.

    Signed in with the invited address: accept.  Signed in as someone else: sign
    out first.  Not signed in: sign in, or create the account for the invited
    address right here (:func:`invited_signup_form`); the token stays in every link.
    """
    session = current(request)
    token = request.query.get("token", "")
    view = await request.app[ACCOUNTS].sharing.invitation(token)
    if view is None:
        return _invitation_gone(request, session)
    return request.app[PAGES].render(
        "accept.html",
        title=f"Invitation to {view.instance_name}",
        user_email=session.email if session is not None else None,
        token=token,
        signed_in=session is not None,
        invitation={
            **_invitation_view(view, token),
            "matches": session is not None and view.email == session.email,
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
    return redirect("/?" + urlencode({"joined": instance_id}))


def _invited_signup_page(
    request: web.Request,
    view: InvitationView,
    token: str,
    *,
    error: str | None = None,
    error_field: str | None = None,
    status: int = 200,
) -> web.Response:
    return request.app[PAGES].render(
        "invited_signup.html",
        status=status,
        title=f"Join {view.instance_name}",
        token=token,
        invitation=_invitation_view(view, token),
        error=error,
        error_field=error_field,
    )


@routes.get("/invitations/signup")
async def invited_signup_form(request: web.Request) -> web.StreamResponse:
    """Create the account an invitation is for, even while public sign-up is closed.

    The invitation link went to the invited mailbox, so it proves the address the
    way a sign-up's mailed link would: the account is made for that address only,
    with no second mail and no emailed sign-in code right after.  (The owner who
    made the link saw it too; an account the owner made this way for someone
    else's address is the mailbox owner's to take back by password reset.)
    """
    session = current(request)
    token = request.query.get("token", "")
    if session is not None:
        return redirect("/invitations/accept?" + urlencode({"token": token}))
    view = await request.app[ACCOUNTS].sharing.invitation(token)
    if view is None:
        return _invitation_gone(request, None)
    return _invited_signup_page(request, view, token)


@routes.post("/invitations/signup")
async def invited_signup(request: web.Request) -> web.StreamResponse:
    accounts = request.app[ACCOUNTS]
    form = await text_fields(request)
    token = form.get("token", "")[:128]
    view = await accounts.sharing.invitation(token)
    if view is None:
        return _invitation_gone(request, current(request))
    password, again = form.get("password", "")[:4096], form.get("password_again", "")[:4096]
    if password != again:
        return _invited_signup_page(
            request,
            view,
            token,
            status=400,
            error="The two passwords differ.",
            error_field="password_again",
        )
    try:
        user = await accounts.users.create(view.email, password)
    except AccountExists:
        return request.app[PAGES].message(
            "You already have an account",
            f"There is already a Homeport account for {view.email}. Sign in to it to "
            "accept the invitation.",
            status=409,
            link=_invitation_view(view, token)["signin_url"],
            link_text="Sign in to accept",
        )
    except (PasswordPolicyError, InvalidEmail, ValueError) as exc:
        return _invited_signup_page(
            request, view, token, status=400, error=str(exc), error_field="password"
        )
    try:
        instance_id = await accounts.sharing.accept(token, user.id)
    except (InvitationInvalid, WrongAccount, AccessDenied):
        # Withdrawn in the meantime: the account stays, without the home.
        instance_id = None
    log.info("account.invited_signup", extra={"user": user.id})
    if instance_id is not None:
        await request.app[AUDIT].record(
            request, EventType.INVITATION_ACCEPTED, user_id=user.id, instance_id=instance_id
        )
    next_path = "/?" + urlencode({"joined": instance_id}) if instance_id else "/"
    # The invitation link proved the mailbox moments ago: no emailed code on top.
    return await request.app[SIGNIN].finish_signin(
        request, user.id, next_path, second_factor=False, factor="password", step_up_passed=True
    )


# ------------------------------------------------------------------ app links


@routes.post("/instances/{id}/app-links")
async def create_app_link(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    instance_id = home_id(request)
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
        return await _page(
            request, session, instance_id, status=400, error=str(exc), error_field="app-name"
        )
    url = app_link_url(request.app[CONFIG], label)
    log.info("account.app_link_created", extra={"user": session.user_id, "link": row.id})
    await request.app[AUDIT].record(
        request,
        EventType.APP_LINK_CREATED,
        session,
        instance_id=instance_id,
        detail=f"app link {row.id}" + ("" if until is None else f" until {when(until)}"),
    )
    return await _show_once(
        request,
        session,
        instance_id,
        "app_link",
        {"name": row.name, "url": url, "until": when(until)},
    )


@routes.post("/instances/{id}/app-links/{lid}/revoke")
async def revoke_app_link(request: web.Request) -> web.StreamResponse:
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    instance_id = home_id(request)
    link_id = path_int(request, "lid")
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
    instance_id = home_id(request)
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


# ------------------------------------------------------------------ offline alerts


@routes.post("/instances/{id}/offline-alert")
async def offline_alert(request: web.Request) -> web.StreamResponse:
    """The owner's opt-in mail when this home stays offline (and when it is back)."""
    session = _signed_in(request)
    if not isinstance(session, SessionInfo):
        return session
    instance_id = home_id(request)
    if request.app[NOTICES] is None:
        return no_access(request, session)  # no mail on this relay: no such setting
    form = await text_fields(request)
    after_text = form.get("after", "")
    after = int(after_text) if after_text.isdigit() and len(after_text) < 6 else -1
    try:
        await request.app[ACCOUNTS].offline_alerts.choose(
            session.user_id, instance_id, after if form.get("enabled") == "yes" else None
        )
    except UnknownInstance:
        return no_access(request, session)
    except ValueError as exc:
        return await _page(request, session, instance_id, status=400, error=str(exc))
    return _back(instance_id, "alerts")
