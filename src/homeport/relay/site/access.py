"""The owner's page for who may open a home until when, and for handing it over.

``/instances/{id}/access``: the members with their end dates (a guest for a
weekend), the app links with their expiry, and the hand-over of the home to a
member. The rules live in :mod:`homeport.accounts.sharing` and
:mod:`homeport.accounts.access` (the roles). Threats these pages stop:

* **A member managing a home**: every action is checked by the store against
  the account's role, in the transaction that makes the change; a member gets
  403 and nothing changes, anyone else the same 404 as for a home that does
  not exist.
* **Access that outlives its end date**: the database refuses an ended
  membership or app link from its end on; the relay's sweep
  (:mod:`homeport.relay.housekeeping`) deletes it and cuts its open requests
  and WebSockets within seconds, as a removal does.
* **Handing a home over by mistake or by a forged request**: a same-origin
  ``POST`` (:mod:`.guard`) with a ticked confirmation, to a current member only;
  the new owner is told (with mail), and both keep their access.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Final

from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.errors import NotOwner, UnknownInstance
from homeport.accounts.sessions import SessionInfo
from homeport.relay.redirects import redirect
from homeport.relay.site.forms import home_id, parse_until, path_int, small_int, text_fields, when
from homeport.relay.site.keys import ACCOUNTS, AUDIT, PAGES, current, notify, sign_in_first
from homeport.relay.site.refusals import no_access, owner_only

__all__ = ["routes"]

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

_NOTES: Final = {
    "member-end": "Saved. Their access ends at that time, on its own.",
    "member-end-lifted": "Saved. Their access no longer ends on its own.",
    "link-expiry": "Saved. The app link stops working at that time, on its own.",
    "link-expiry-lifted": "Saved. The app link no longer expires.",
}


def _field_value(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%dT%H:%M")


async def _page(
    request: web.Request,
    session: SessionInfo,
    instance_id: str,
    *,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    sharing = request.app[ACCOUNTS].sharing
    try:
        instance = await sharing.owned_instance(session.user_id, instance_id)
    except UnknownInstance:
        return no_access(request, session)
    except NotOwner:
        return owner_only(request, session)
    members = [
        {
            "id": m.user_id,
            "email": m.email,
            "since": when(m.since),
            "until": when(m.until),
            "until_value": _field_value(m.until),
            "ends": m.until is not None,
        }
        for m in await sharing.members(instance_id)
    ]
    links = [
        {
            "id": link.id,
            "name": link.name,
            "until": when(link.expires_at),
            "until_value": _field_value(link.expires_at),
            "ends": link.expires_at is not None,
        }
        for link in await sharing.app_links(instance_id)
    ]
    return request.app[PAGES].render(
        "access.html",
        status=status,
        title=f"Access to {instance.name}",
        user_email=session.email,
        instance={"id": instance.id, "name": instance.name},
        members=members,
        links=links,
        error=error,
        note=_NOTES.get(request.query.get("done", "")),
        now=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M"),
    )


def _back(instance_id: str, note: str) -> web.Response:
    return redirect(f"/instances/{instance_id}/access?done={note}")


@routes.get("/instances/{id}/access")
async def show(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(request.path)
    return await _page(request, session, home_id(request))


@routes.post("/instances/{id}/members/{uid}/end")
async def member_end(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first("/")
    instance_id, user_id = home_id(request), path_int(request, "uid")
    form = await text_fields(request)
    try:
        until = parse_until(form.get("until", ""))
        changed = await request.app[ACCOUNTS].sharing.set_member_end(
            session.user_id, instance_id, user_id, until
        )
    except UnknownInstance:
        return no_access(request, session)
    except NotOwner:
        return owner_only(request, session)
    except ValueError as exc:
        return await _page(request, session, instance_id, error=str(exc), status=400)
    if not changed:
        return await _page(
            request, session, instance_id, error="This person cannot open it any more.", status=404
        )
    await request.app[AUDIT].record(
        request,
        EventType.MEMBER_END_SET,
        session,
        instance_id=instance_id,
        detail=f"account {user_id} until {when(until)}",
    )
    log.info("account.member_end_set", extra={"user": session.user_id, "member": user_id})
    return _back(instance_id, "member-end" if until else "member-end-lifted")


@routes.post("/instances/{id}/app-links/{lid}/expiry")
async def link_expiry(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first("/")
    instance_id, link_id = home_id(request), path_int(request, "lid")
    form = await text_fields(request)
    try:
        until = parse_until(form.get("until", ""))
        changed = await request.app[ACCOUNTS].sharing.set_app_link_expiry(
            session.user_id, instance_id, link_id, until
        )
    except UnknownInstance:
        return no_access(request, session)
    except NotOwner:
        return owner_only(request, session)
    except ValueError as exc:
        return await _page(request, session, instance_id, error=str(exc), status=400)
    if not changed:
        return await _page(
            request, session, instance_id, error="This app link no longer exists.", status=404
        )
    await request.app[AUDIT].record(
        request,
        EventType.APP_LINK_EXPIRY_SET,
        session,
        instance_id=instance_id,
        detail=f"app link {link_id} until {when(until)}",
    )
    log.info("account.app_link_expiry_set", extra={"user": session.user_id, "link": link_id})
    return _back(instance_id, "link-expiry" if until else "link-expiry-lifted")


@routes.post("/instances/{id}/transfer")
async def transfer(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first("/")
    instance_id = home_id(request)
    form = await text_fields(request)
    accounts = request.app[ACCOUNTS]
    text = form.get("user", "")
    new_owner = small_int(text)
    if form.get("confirm") != "yes":
        return await _page(
            request,
            session,
            instance_id,
            error="Tick the box to confirm that you want to hand this home over.",
            status=400,
        )
    try:
        await accounts.sharing.transfer(session.user_id, instance_id, new_owner)
    except UnknownInstance:
        return no_access(request, session)
    except NotOwner:
        return owner_only(request, session)
    except ValueError as exc:
        return await _page(request, session, instance_id, error=str(exc), status=400)
    home = await accounts.instances.get(instance_id)
    name = home.name if home is not None else "Home"
    await request.app[AUDIT].record(
        request,
        EventType.OWNERSHIP_TRANSFERRED,
        session,
        instance_id=instance_id,
        detail=f"from account {session.user_id} to account {new_owner}",
    )
    await notify(request, new_owner, f"you became the owner of the home \u201c{name}\u201d")
    log.info(
        "account.ownership_transferred",
        extra={"user": session.user_id, "instance": instance_id, "to": new_owner},
    )
    return request.app[PAGES].message(
        "Home handed over",
        f"{name} has a new owner now. You can still open it, as a member, until the new "
        "owner decides otherwise.",
        status=200,
        user_email=session.email,
        link="/",
        link_text="Your homes",
    )
