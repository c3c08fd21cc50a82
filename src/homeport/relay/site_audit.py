"""The account site's audit log page and its CSV export.

Shows the signed-in account's own events and every event on the homes it
owns (whoever caused them), newest first, in pages. Read-only: nothing here
changes state, so GET is right; both answers are ``no-store`` like every
account-site page, and the CSV is sent as an attachment so a browser never
renders it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.audit import describe_event, to_csv
from homeport.accounts.devices import describe_network
from homeport.accounts.service import InstanceRow
from homeport.relay.tenant import redirect

if TYPE_CHECKING:
    from homeport.relay.account_site import AccountSite

PATH = "/security/audit"
PER_PAGE = 50
MAX_PAGE = 10_000


class AuditPage:
    def __init__(self, site: AccountSite) -> None:
        self.site = site
        site.router.add_route("GET", PATH, self.show)
        site.router.add_route("GET", PATH + ".csv", self.export)

    async def _homes(self, user_id: int) -> dict[str, str]:
        return {i.id: i.name for i in await self.site.accounts.list_instances(user_id=user_id)}

    async def _owned(self, user_id: int) -> list[InstanceRow]:
        return [
            i
            for i in await self.site.accounts.list_instances(user_id=user_id)
            if i.owner_id == user_id
        ]

    async def show(self, request: web.Request) -> web.StreamResponse:
        current = await self.site._session(request)
        if current is None:
            return redirect("/signin?" + urlencode({"next": PATH}))
        raw = request.query.get("page", "0")
        page = min(int(raw), MAX_PAGE) if raw.isdecimal() and len(raw) < 6 else 0
        homes = await self._homes(current.user_id)
        owned = {i.id: i.name for i in await self._owned(current.user_id)}
        home = request.query.get("home")
        if home is not None and home not in owned:
            home = None  # not a home of this account: show the whole log instead
        events, more = await self.site.accounts.audit.page(
            current.user_id, page=page, per_page=PER_PAGE, instance_id=home
        )
        rows = [
            {
                "at": event.at,
                "what": describe_event(event.kind),
                "home": homes.get(event.instance_id, "a removed home") if event.instance_id else "",
                "place": event.ip + (f" ({describe_network(event.ip)})" if ":" in event.ip else ""),
                "device": event.device,
                "factor": event.factor or "",
                "mine": event.user_id == current.user_id,
            }
            for event in events
        ]
        return self.site.pages.render(
            "audit.html",
            title="Account activity",
            user_email=current.email,
            rows=rows,
            page=page,
            more=more,
            homes=sorted(owned.items(), key=lambda item: item[1]),
            home=home,
            home_name=owned.get(home, "") if home else "",
        )

    async def export(self, request: web.Request) -> web.StreamResponse:
        current = await self.site._session(request)
        if current is None:
            return redirect("/signin?" + urlencode({"next": PATH}))
        events = await self.site.accounts.audit.export(current.user_id)
        body = to_csv(events, await self._homes(current.user_id))
        response = web.Response(
            text=body,
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": 'attachment; filename="homeport-activity.csv"'},
        )
        self.site.pages.secure(response)
        return response
