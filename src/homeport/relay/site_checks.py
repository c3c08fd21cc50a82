"""Checks shared by the account site's signed-in forms (sessions, password, factors).

* :func:`signed_in_post`: the CSRF check (``AccountSite._same_origin``), a form
  size limit and a live account session, in that order, before anything is read.
* :func:`password_again`: re-checking the current password of a signed-in
  person, throttled with the sign-in counters (R-RATE) so a stolen session
  cannot be used to guess the password at full speed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.service import SessionInfo
from homeport.accounts.throttle import account_key, network_key, signin_keys
from homeport.relay.tenant import redirect

if TYPE_CHECKING:
    from homeport.relay.account_site import AccountSite

MAX_FORM = 8 * 1024


async def signed_in_post(
    site: AccountSite, request: web.Request, back: str
) -> SessionInfo | web.StreamResponse:
    """The session behind a state-changing POST, or the answer that refuses it."""
    if not site._same_origin(request):
        return site.pages.message("Not allowed", "Cross-site request refused.", status=403)
    if (request.content_length or 0) > MAX_FORM:
        return site.pages.message("Too large", "The form is too large.", status=413)
    current = await site._session(request)
    if current is None:
        return redirect("/signin?" + urlencode({"next": back}))
    return current


async def password_again(
    site: AccountSite, request: web.Request, current: SessionInfo, password: str
) -> float | bool:
    """``True`` if right, ``False`` if wrong, or the seconds to wait (throttled)."""
    accounts = site.accounts
    wait = await accounts.throttle.attempt(signin_keys(current.email, request.remote))
    if wait > 0:
        return wait
    user = await accounts.authenticate(current.email, password)
    if user is None or user.id != current.user_id:
        return False
    net = network_key(request.remote)
    await accounts.throttle.succeeded(
        clear=[f"pw:pair:{account_key(current.email)}:{net}"], refund=[f"pw:net:{net}"]
    )
    return True
