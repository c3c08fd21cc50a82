"""The list of homes, and the hand-off from the account site to a home's own host.

Threats this stops:

* Open redirects: ``next`` is always a local path (:func:`safe_next`).
* Enumerating homes: "no such home" and "not yours" are the same ``404``.
* A code used by another browser: the hand-off code is bound to the hash of
  the tenant host's state cookie (``state``), lives 60 s and works once
  (:meth:`homeport.accounts.service.Accounts.consume_handoff`).
* A member skipping the owner's second-factor rule: checked before any code
  is issued.
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.identifiers import is_instance_id
from homeport.relay.redirects import redirect, safe_next
from homeport.relay.site.keys import ACCOUNTS, CONFIG, HOMES, PAGES, current, sign_in_first

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/")
async def home(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return redirect("/signin")
    config, homes = request.app[CONFIG], request.app[HOMES]
    instances = []
    for inst in await request.app[ACCOUNTS].instances.find(user_id=session.user_id):
        connected = homes.tunnel_for(inst.id) is not None
        instances.append(
            {
                "name": inst.name,
                "url": config.tenant_origin(inst.id),
                "connected": connected,
                "offline_since": None if connected else inst.last_disconnected_at,
                "id": inst.id,
                "owned": inst.owner_id == session.user_id,
                "owner_email": inst.owner_email,
                "until": inst.member_until,
            }
        )
    joined = request.query.get("joined")
    names = {inst["id"]: inst["name"] for inst in instances}
    note = f"You joined {names[joined]}. Open it below." if joined in names else None
    return request.app[PAGES].render(
        "home.html",
        title="Your homes",
        user_email=session.email,
        instances=instances,
        note=note,
    )


@routes.get("/connect")
async def connect(request: web.Request) -> web.StreamResponse:
    """Hand a signed-in person over to a tenant host with a one-time code."""
    accounts, pages = request.app[ACCOUNTS], request.app[PAGES]
    instance_id = request.query.get("instance", "")
    state = request.query.get("state", "")
    next_path = safe_next(request.query.get("next"))
    if not is_instance_id(instance_id) or len(state) != 64:
        return pages.message("Bad link", "This link is not complete.", status=400)
    session = current(request)
    if session is None:
        return sign_in_first(
            "/connect?" + urlencode({"instance": instance_id, "state": state, "next": next_path})
        )
    if not await accounts.instances.can_access(session.user_id, instance_id):
        # Same answer for "no such home" and "not yours": nothing to enumerate.
        return pages.message(
            "No access",
            "This home does not exist, or your account has no access to it.",
            status=404,
            user_email=session.email,
        )
    if not await accounts.sharing.second_factor_ok(
        session.user_id, instance_id, session.session_id
    ):
        # The owner requires two-step verification for everyone who opens this home.
        return pages.message(
            "Two-step verification required",
            "The owner of this home requires two-step verification. Turn it on for "
            "your account under Security, then sign out and sign in again with a code.",
            status=403,
            user_email=session.email,
            link="/security",
            link_text="Security settings",
        )
    code = await accounts.sessions.create_handoff(
        session.user_id, instance_id, state, session_id=session.session_id
    )
    target = (
        request.app[CONFIG].tenant_origin(instance_id)
        + "/.homeport/handoff?"
        + urlencode({"code": code, "next": next_path})
    )
    response = redirect(target)
    pages.secure(response)
    return response
