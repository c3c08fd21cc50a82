"""The account site's session list: where the account is signed in, and ending it there.

Threats this stops:

* A stolen or forgotten session (a shared computer, a lost phone) staying
  usable: the owner sees every live session, on the account site and on
  each home's host, with device, network and times, and ends one or all
  others; the ended sessions' open streams and WebSockets are cut at once
  (:meth:`homeport.relay.gate.SessionGate.end_sessions`).
* Cross-site request forgery: both actions are POSTs, checked by :mod:`.guard`.
* Ending someone else's session by guessing ids: every action is limited to
  the signed-in account's own sessions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.devices import describe_device, describe_network
from homeport.accounts.sessions import SessionInfo
from homeport.relay.redirects import redirect
from homeport.relay.site.forms import read_form
from homeport.relay.site.keys import ACCOUNTS, AUDIT, GATE, PAGES, SIGNIN, current, sign_in_first

log = logging.getLogger(__name__)

__all__ = ["SessionView", "routes"]

PATH = "/security/sessions"

routes = web.RouteTableDef()


@dataclass(frozen=True, slots=True)
class SessionView:
    """One row of the session list, as the template shows it."""

    id: int
    where: str
    device: str
    network: str
    ip: str
    created_at: datetime
    last_seen_at: datetime
    this_session: bool
    this_browser: bool


async def _views(request: web.Request, session: SessionInfo) -> list[SessionView]:
    accounts = request.app[ACCOUNTS]
    homes = {i.id: i.name for i in await accounts.instances.find(user_id=session.user_id)}
    views = []
    for row in await accounts.sessions.of_user(session.user_id):
        if row.instance_id is None:
            where = "Account site"
        else:
            where = "Home: " + homes.get(row.instance_id, "a home you no longer use")
        views.append(
            SessionView(
                id=row.id,
                where=where,
                device=describe_device(row.user_agent),
                network=describe_network(row.ip),
                ip=row.ip,
                created_at=row.created_at,
                last_seen_at=row.last_seen_at,
                this_session=row.id == session.session_id,
                this_browser=row.parent_session_id == session.session_id,
            )
        )
    # This browser first, then most recently used (list_sessions' order).
    views.sort(key=lambda v: not (v.this_session or v.this_browser))
    return views


@routes.get(PATH)
async def show(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    return request.app[PAGES].render(
        "sessions.html",
        title="Where you're signed in",
        user_email=session.email,
        sessions=await _views(request, session),
        notice=request.query.get("done") == "1",
    )


@routes.post(PATH + "/end")
async def end_one(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    accounts = request.app[ACCOUNTS]
    form = await read_form(request)
    raw = str(form.get("session", ""))
    target = int(raw) if raw.isdecimal() and len(raw) < 19 else None
    mine = {row.id: row for row in await accounts.sessions.of_user(session.user_id)}
    row = mine.get(target) if target is not None else None
    if row is None:
        # Unknown, already ended, or not this account's: nothing to do, nothing to tell.
        return redirect(PATH + "?done=1")
    if row.kind == "account":
        ended = await accounts.sessions.sign_out(row.id)  # and what it handed off
    else:
        ended = [row.id] if await accounts.sessions.revoke(row.id, user_id=row.user_id) else []
    request.app[GATE].end_sessions(ended)
    await request.app[AUDIT].record(
        request, EventType.SESSION_REVOKED, session, detail=f"{len(ended)} session(s)"
    )
    log.info("account.session_revoked", extra={"user": session.user_id, "ended": len(ended)})
    if row.id == session.session_id:
        return request.app[SIGNIN].signed_out()
    return redirect(PATH + "?done=1")


@routes.post(PATH + "/end-others")
async def end_others(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    ended = await request.app[ACCOUNTS].sessions.revoke_others(session.user_id, session.session_id)
    request.app[GATE].end_sessions(ended)
    await request.app[AUDIT].record(
        request, EventType.SESSION_REVOKED, session, detail=f"{len(ended)} other session(s)"
    )
    log.info("account.other_sessions_revoked", extra={"user": session.user_id})
    return redirect(PATH + "?done=1")
