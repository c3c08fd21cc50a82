"""The "Add a home" page: everything a new home needs from this relay, in three steps.

1. Install the add-on: a "My Home Assistant" link opens the person's own Home
   Assistant on the add-on store with this project's repository filled in.
2. Pair it with this relay: one pairing string (:mod:`homeport.pairing`), the
   tunnel address and the relay's public key together, as text with a copy
   button and as a QR code.  Nothing in it is secret (the key is public).
3. Link it to this account: the code the add-on shows, typed here or carried in
   by the add-on panel's link (``/link?code=``, which only fills the form in:
   linking is always this account's own POST, CSRF-checked by the guard).
"""

from __future__ import annotations

from aiohttp import web

from homeport.pairing import ADDON_REPOSITORY, add_repository_link
from homeport.qr import qr_svg
from homeport.relay.site.keys import PAGES, PAIRING, current, sign_in_first

__all__ = ["routes"]

PATH = "/add"

routes = web.RouteTableDef()


@routes.get(PATH)
async def add_home(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None:
        return sign_in_first(PATH)
    pairing = request.app[PAIRING]
    return request.app[PAGES].render(
        "add.html",
        title="Add a home",
        user_email=session.email,
        section="add",
        pairing=pairing,
        pairing_qr=qr_svg(pairing, "QR code of the pairing string"),
        store_link=add_repository_link(),
        repository=ADDON_REPOSITORY,
        code="",
        name="Home",
    )
