"""The account site's session list: where the account is signed in, and ending it there.

Threats this stops:

* A stolen or forgotten session (a shared computer, a lost phone) staying
  usable: the owner sees every live session, on the account site and on
  each home's host, with device, network and times, and ends one or all
  others; the ended sessions' open streams and WebSockets are cut at once
  (:meth:`homeport.relay.gate.SessionGate.end_sessions`).
* Cross-site request forgery: both actions are POSTs checked with
  ``AccountSite._same_origin``.
* Ending someone else's session by guessing ids: every action is limited to
  the signed-in account's own sessions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.devices import describe_device, describe_network
from homeport.accounts.service import SessionInfo
from homeport.relay.site_checks import signed_in_post
from homeport.relay.tenant import redirect

if TYPE_CHECKING:
    from homeport.relay.account_site import AccountSite

log = logging.getLogger(__name__)

PATH = "/security/sessions"


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


class SessionsPage:
    """``GET /security/sessions``, ``POST …/end`` (one) and ``POST …/end-others``."""

    def __init__(self, site: AccountSite) -> None:
        self.site = site
        site.router.add_route("GET", PATH, self.show)
        site.router.add_route("POST", PATH + "/end", self.end_one)
        site.router.add_route("POST", PATH + "/end-others", self.end_others)

    async def _views(self, current: SessionInfo) -> list[SessionView]:
        accounts = self.site.accounts
        homes = {i.id: i.name for i in await accounts.list_instances(user_id=current.user_id)}
        views = []
        for row in await accounts.list_sessions(current.user_id):
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
                    this_session=row.id == current.session_id,
                    this_browser=row.parent_session_id == current.session_id,
                )
            )
        # This browser first, then most recently used (list_sessions' order).
        views.sort(key=lambda v: not (v.this_session or v.this_browser))
        return views

    async def show(self, request: web.Request) -> web.StreamResponse:
        current = await self.site._session(request)
        if current is None:
            return redirect("/signin?" + urlencode({"next": PATH}))
        return await self._page(current, notice=request.query.get("done") == "1")

    async def _page(self, current: SessionInfo, *, notice: bool) -> web.Response:
        return self.site.pages.render(
            "sessions.html",
            title="Where you're signed in",
            user_email=current.email,
            sessions=await self._views(current),
            notice=notice,
        )

    async def end_one(self, request: web.Request) -> web.StreamResponse:
        current = await signed_in_post(self.site, request, PATH)
        if not isinstance(current, SessionInfo):
            return current
        form = await request.post()
        raw = str(form.get("session", ""))
        target = int(raw) if raw.isdecimal() and len(raw) < 19 else None
        mine = {row.id: row for row in await self.site.accounts.list_sessions(current.user_id)}
        row = mine.get(target) if target is not None else None
        if row is None:
            # Unknown, already ended, or not this account's: nothing to do, nothing to tell.
            return redirect(PATH + "?done=1")
        accounts = self.site.accounts
        if row.kind == "account":
            ended = await accounts.sign_out(row.id)  # and what it handed off
        else:
            ended = [row.id] if await accounts.revoke_session(row.id, user_id=row.user_id) else []
        self.site.gate.end_sessions(ended)
        await self.site.audit(
            request, EventType.SESSION_REVOKED, current, detail=f"{len(ended)} session(s)"
        )
        log.info("account.session_revoked", extra={"user": current.user_id, "ended": len(ended)})
        if row.id == current.session_id:
            return self.site.signed_out_response()
        return redirect(PATH + "?done=1")

    async def end_others(self, request: web.Request) -> web.StreamResponse:
        current = await signed_in_post(self.site, request, PATH)
        if not isinstance(current, SessionInfo):
            return current
        ended = await self.site.accounts.revoke_other_sessions(current.user_id, current.session_id)
        self.site.gate.end_sessions(ended)
        await self.site.audit(
            request, EventType.SESSION_REVOKED, current, detail=f"{len(ended)} other session(s)"
        )
        log.info("account.other_sessions_revoked", extra={"user": current.user_id})
        return redirect(PATH + "?done=1")
