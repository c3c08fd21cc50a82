"""The account site's audit log page and its CSV export.

Shows the signed-in account's own events and every event on the homes it
owns (whoever caused them), newest first, in pages. Read-only: nothing here
changes state, so GET is right; both answers are ``no-store`` like every
account-site page, and the CSV is sent as an attachment so a browser never
renders it.
"""

from __future__ import annotations

from aiohttp import web

from homeport.accounts.audit import describe_event, to_csv
from homeport.accounts.devices import describe_network
from homeport.accounts.instances import InstanceRow
from homeport.relay.site.keys import ACCOUNTS, PAGES, current, sign_in_first

__all__ = ["routes"]

PATH = "/security/audit"
PER_PAGE = 50
MAX_PAGE = 10_000

routes = web.RouteTableDef()


async def _homes(request: web.Request, user_id: int) -> list[InstanceRow]:
    return await request.app[ACCOUNTS].instances.find(user_id=user_id)


@routes.get(PATH)
async def show(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    raw = request.query.get("page", "0")
    page = min(int(raw), MAX_PAGE) if raw.isdecimal() and len(raw) < 6 else 0
    listed = await _homes(request, session.user_id)
    homes = {i.id: i.name for i in listed}
    owned = {i.id: i.name for i in listed if i.owner_id == session.user_id}
    home = request.query.get("home")
    if home is not None and home not in owned:
        home = None  # not a home of this account: show the whole log instead
    events, more = await request.app[ACCOUNTS].audit.page(
        session.user_id, page=page, per_page=PER_PAGE, instance_id=home
    )
    rows = [
        {
            "at": event.at,
            "what": describe_event(event.kind),
            "home": homes.get(event.instance_id, "a removed home") if event.instance_id else "",
            "place": event.ip + (f" ({describe_network(event.ip)})" if ":" in event.ip else ""),
            "device": event.device,
            "factor": event.factor or "",
            "mine": event.user_id == session.user_id,
        }
        for event in events
    ]
    return request.app[PAGES].render(
        "audit.html",
        title="Account activity",
        user_email=session.email,
        section="activity",
        wide=True,  # the table uses the width it has
        rows=rows,
        page=page,
        more=more,
        homes=sorted(owned.items(), key=lambda item: item[1]),
        home=home,
        home_name=owned.get(home, "") if home else "",
    )


@routes.get(PATH + ".csv")
async def export(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    events = await request.app[ACCOUNTS].audit.export(session.user_id)
    homes = {i.id: i.name for i in await _homes(request, session.user_id)}
    response = web.Response(
        text=to_csv(events, homes),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": 'attachment; filename="homeport-activity.csv"'},
    )
    request.app[PAGES].secure(response)
    return response
