"""The account site's password change (R-PWD-05 change part, R-SES-04).

Threats this stops:

* Someone at an unlocked, signed-in browser taking the account over: the
  change needs the current password, checked (and throttled) like a sign-in.
* A thief who knew the old password, or held a session, staying in: every
  other session ends in the same transaction, and their open streams and
  WebSockets are cut at once (:meth:`SessionGate.end_user`).
* Weak new passwords: the full policy (:func:`check_new_password`: length,
  common-password blocklist, context words) applies, with the reason shown.
* Cross-site request forgery: POST checked with ``AccountSite._same_origin``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.errors import PasswordPolicyError
from homeport.accounts.service import SessionInfo
from homeport.accounts.throttle import retry_after
from homeport.relay.site_checks import password_again, signed_in_post
from homeport.relay.tenant import redirect

if TYPE_CHECKING:
    from homeport.relay.account_site import AccountSite

log = logging.getLogger(__name__)

PATH = "/security/password"


class PasswordPage:
    def __init__(self, site: AccountSite) -> None:
        self.site = site
        site.router.add_route("GET", PATH, self.show)
        site.router.add_route("POST", PATH, self.change)

    def _form(self, current: SessionInfo, *, error: str | None, status: int = 200) -> web.Response:
        return self.site.pages.render(
            "password.html",
            status=status,
            title="Change your password",
            user_email=current.email,
            error=error,
            done=False,
        )

    async def show(self, request: web.Request) -> web.StreamResponse:
        current = await self.site._session(request)
        if current is None:
            return redirect("/signin?" + urlencode({"next": PATH}))
        return self._form(current, error=None)

    async def change(self, request: web.Request) -> web.StreamResponse:
        site = self.site
        current = await signed_in_post(site, request, PATH)
        if not isinstance(current, SessionInfo):
            return current
        form = await request.post()
        old = str(form.get("current_password", ""))
        new = str(form.get("new_password", ""))
        again = str(form.get("new_password_again", ""))
        accounts = site.accounts
        checked = await password_again(site, request, current, old)
        if checked is not True:
            if checked is not False:
                response = self._form(
                    current, error="Too many attempts. Wait a moment, then try again.", status=429
                )
                response.headers["Retry-After"] = retry_after(checked)
                return response
            await site.audit(request, EventType.PASSWORD_CHANGE_FAILED, current)
            log.warning("account.password_change_refused", extra={"user": current.user_id})
            return self._form(current, error="Your current password is not right.", status=401)
        if new != again:
            return self._form(current, error="The two new passwords differ.", status=400)
        if new == old:
            return self._form(
                current, error="The new password must differ from the current one.", status=400
            )
        try:
            await accounts.set_password(current.user_id, new, keep_session_id=current.session_id)
        except (PasswordPolicyError, ValueError) as exc:
            return self._form(current, error=str(exc), status=400)
        # Every other session was revoked with the change: cut what they have open.
        site.gate.end_user(current.user_id, except_session_id=current.session_id)
        await site.audit(request, EventType.PASSWORD_CHANGED, current)
        await site.notify(request, current.user_id, "your password was changed")
        log.info("account.password_changed", extra={"user": current.user_id})
        return site.pages.render(
            "password.html",
            title="Password changed",
            user_email=current.email,
            error=None,
            done=True,
        )
