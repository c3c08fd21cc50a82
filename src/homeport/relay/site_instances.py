"""Account-site pages for one home: link by code, rename, unlink, sharing, app links, 2FA policy.

Only the owner sees or changes a home here; for anyone else "no such home"
and "not yours" are the same 404. Every change is a POST checked with
:meth:`AccountSite._same_origin` (CSRF), from a signed-in account session.

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
* **Secrets shown once.** Accept links and app links are shown only on the
  page that creates them (``Cache-Control: no-store``) and stored hashed.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.audit import EventType
from homeport.accounts.errors import (
    AccessDenied,
    AlreadyLinked,
    InvalidEmail,
    LinkCodeInvalid,
    UnknownInstance,
    UnknownUser,
)
from homeport.accounts.service import SessionInfo
from homeport.accounts.sharing import InvitationInvalid, WrongAccount, display_name
from homeport.accounts.throttle import Backoff, Window, network_key, retry_after
from homeport.qr import qr_svg
from homeport.relay.app_links import app_link_url
from homeport.relay.live import Ending
from homeport.relay.tenant import redirect

if TYPE_CHECKING:
    from homeport.relay.account_site import AccountSite
    from homeport.relay.app_links import AppLinkGate

log = logging.getLogger(__name__)

MAX_FORM: Final = 8 * 1024
#: Link-code form: per account, from the 5th consecutive failure 1 s, 2 s, ... up to 15 min.
LINK_FORM_ACCOUNT: Final = Backoff(free=4, base=1.0, cap=15 * 60.0)
#: Link-code form: at most 20 failures per client network per hour.
LINK_FORM_NETWORK: Final = Window(limit=20, window=timedelta(hours=1))
#: Expiry choices on the invitation form (days; 0 = until accepted or withdrawn).
INVITE_DAYS: Final = (1, 7, 30, 0)


def when(value: datetime | None) -> str:
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


class InstancePages:
    def __init__(self, site: AccountSite, app_links: AppLinkGate) -> None:
        self.site = site
        self.accounts = site.accounts
        self.sharing = site.accounts.sharing
        self.pages = site.pages
        self.config = site.config
        self.app_links = app_links

    def register(self) -> None:
        add = self.site.router.add_route
        add("GET", "/link", self.link_form)
        add("POST", "/link", self.link)
        add("GET", "/instances/{id}", self.instance)
        add("POST", "/instances/{id}/rename", self.rename)
        add("POST", "/instances/{id}/unlink", self.unlink)
        add("POST", "/instances/{id}/invitations", self.invite)
        add("POST", "/instances/{id}/invitations/{inv}/revoke", self.revoke_invitation)
        add("POST", "/instances/{id}/members/{uid}/remove", self.remove_member)
        add("POST", "/instances/{id}/leave", self.leave)
        add("POST", "/instances/{id}/app-links", self.create_app_link)
        add("POST", "/instances/{id}/app-links/{lid}/revoke", self.revoke_app_link)
        add("POST", "/instances/{id}/second-factor", self.second_factor)
        add("GET", "/invitations/accept", self.accept_form)
        add("POST", "/invitations/accept", self.accept)

    # --------------------------------------------------------------- helpers

    async def _signed_in(
        self, request: web.Request, *, post: bool
    ) -> SessionInfo | web.StreamResponse:
        """The account session, or the response to send instead (403 CSRF, 413, sign-in)."""
        if post:
            if not self.site._same_origin(request):
                return self.pages.message("Not allowed", "Cross-site request refused.", status=403)
            if (request.content_length or 0) > MAX_FORM:
                return self.pages.message("Too large", "The form is too large.", status=413)
        session = await self.site._session(request)
        if session is None:
            back = request.path_qs if request.method == "GET" else "/"
            return redirect("/signin?" + urlencode({"next": back}))
        return session

    def _not_found(self, session: SessionInfo) -> web.Response:
        return self.pages.message(
            "No access",
            "This home does not exist, or your account has no access to it.",
            status=404,
            user_email=session.email,
        )

    async def _form(self, request: web.Request) -> dict[str, str]:
        form = await request.post()
        return {k: v for k, v in form.items() if isinstance(v, str)}

    async def _param(self, request: web.Request, name: str) -> str:
        """A path parameter (the account site resolves routes on its own router)."""
        match = await self.site.router.resolve(request)
        return str(match.get(name, ""))

    async def _int(self, request: web.Request, name: str) -> int:
        text = await self._param(request, name)
        return int(text) if text.isdigit() and len(text) < 12 else -1

    def _back(self, instance_id: str, note: str = "") -> web.Response:
        query = "?" + urlencode({"done": note}) if note else ""
        return redirect(f"/instances/{instance_id}{query}")

    async def _page(
        self,
        session: SessionInfo,
        instance_id: str,
        *,
        status: int = 200,
        error: str | None = None,
        note: str | None = None,
        **extra: Any,
    ) -> web.Response:
        try:
            instance = await self.sharing.owned_instance(session.user_id, instance_id)
        except UnknownInstance:
            return self._not_found(session)
        links = [
            {
                "id": link.id,
                "name": link.name,
                "created": when(link.created_at),
                "last_used": "not yet" if link.last_used_at is None else when(link.last_used_at),
            }
            for link in await self.sharing.app_links(instance_id)
        ]
        invitations = [
            {
                "id": inv.id,
                "email": inv.email,
                "status": inv.status,
                "expires": when(inv.expires_at),
                "accepted_by": inv.accepted_by_email,
            }
            for inv in await self.sharing.invitations(instance_id)
            if inv.status == "pending"
        ]
        members = [
            {"id": m.user_id, "email": m.email, "since": when(m.since)}
            for m in await self.sharing.members(instance_id)
        ]
        extra.setdefault("invite_link", None)
        extra.setdefault("app_link", None)
        return self.pages.render(
            "instance.html",
            status=status,
            title=instance.name,
            user_email=session.email,
            instance={
                "id": instance.id,
                "name": instance.name,
                "url": self.config.tenant_origin(instance.id),
                "connected": self.site.hub.tunnel_for(instance.id) is not None,
                "created": when(instance.created_at),
            },
            members=members,
            invitations=invitations,
            links=links,
            invite_days=INVITE_DAYS,
            require_second_factor=await self.sharing.requires_second_factor(instance_id),
            error=error,
            note=note,
            **extra,
        )

    # ---------------------------------------------------------------- linking

    async def link_form(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request, post=False)
        if not isinstance(session, SessionInfo):
            return session
        return self._link_page(session, error=None)

    def _link_page(
        self, session: SessionInfo, *, error: str | None, status: int = 200, name: str = "Home"
    ) -> web.Response:
        return self.pages.render(
            "link.html",
            status=status,
            title="Link a home",
            user_email=session.email,
            error=error,
            name=name,
        )

    async def link(self, request: web.Request) -> web.StreamResponse:
        """Redeem an add-on's link code for the signed-in account (throttled, see module doc)."""
        session = await self._signed_in(request, post=True)
        if not isinstance(session, SessionInfo):
            return session
        form = await self._form(request)
        name = form.get("name", "")[:200]
        try:
            # Before the throttle: a bad name is not a guess, and must not reset the counter.
            name = display_name(name)
        except ValueError as exc:
            return self._link_page(session, status=400, name=name, error=str(exc))
        acct_key = f"linkweb:acct:{session.user_id}"
        net_key = f"linkweb:net:{network_key(request.remote)}"
        throttle = self.accounts.throttle
        wait = await throttle.attempt([(acct_key, LINK_FORM_ACCOUNT), (net_key, LINK_FORM_NETWORK)])
        if wait > 0:
            log.warning("account.link_throttled", extra={"user": session.user_id})
            response = self._link_page(
                session,
                status=429,
                name=name,
                error="Too many attempts. Wait a moment, then try again.",
            )
            response.headers["Retry-After"] = retry_after(wait)
            return response
        try:
            instance = await self.accounts.link_instance(form.get("code", ""), session.email, name)
        except LinkCodeInvalid as exc:
            log.warning("account.link_failed", extra={"user": session.user_id})
            return self._link_page(session, status=400, name=name, error=str(exc))
        except AlreadyLinked as exc:  # the code was real: that proves it was no guess
            await throttle.succeeded(clear=[acct_key], refund=[net_key])
            return self._link_page(session, status=400, name=name, error=str(exc))
        except (UnknownUser, ValueError) as exc:
            return self._link_page(session, status=400, name=name, error=str(exc))
        await throttle.succeeded(clear=[acct_key], refund=[net_key])
        log.info("account.linked", extra={"user": session.user_id, "instance": instance.id})
        return self._back(instance.id, "linked")

    # ------------------------------------------------------------ the page

    async def instance(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request, post=False)
        if not isinstance(session, SessionInfo):
            return session
        notes = {
            "linked": "Linked. The add-on connects within a few seconds.",
            "renamed": "Renamed.",
            "invitation-revoked": "Invitation withdrawn.",
            "member-removed": "Removed. Their open sessions have ended.",
            "link-revoked": "App link revoked. It stopped working at once.",
            "policy": "Saved.",
        }
        note = notes.get(request.query.get("done", ""))
        return await self._page(session, await self._param(request, "id"), note=note)

    async def rename(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request, post=True)
        if not isinstance(session, SessionInfo):
            return session
        instance_id = await self._param(request, "id")
        form = await self._form(request)
        try:
            await self.sharing.rename(session.user_id, instance_id, form.get("name", "")[:200])
        except UnknownInstance:
            return self._not_found(session)
        except ValueError as exc:
            return await self._page(session, instance_id, status=400, error=str(exc))
        return self._back(instance_id, "renamed")

    async def unlink(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request, post=True)
        if not isinstance(session, SessionInfo):
            return session
        instance_id = await self._param(request, "id")
        form = await self._form(request)
        if form.get("confirm") != "yes":
            return await self._page(
                session,
                instance_id,
                status=400,
                error="Tick the box to confirm that you want to unlink this home.",
            )
        try:
            await self.sharing.unlink(session.user_id, instance_id)
        except UnknownInstance:
            return self._not_found(session)
        await self.site.hub.close_instance(instance_id)
        self.app_links.forget_instance(instance_id)
        self.site.gate.end_instance(instance_id)
        log.info("account.unlinked", extra={"user": session.user_id, "instance": instance_id})
        return self.pages.message(
            "Home unlinked",
            "The home is no longer reachable through Homeport, its app links and "
            "invitations are gone, and everyone's sessions on it have ended. To link it "
            "again, use the new code the add-on shows.",
            status=200,
            user_email=session.email,
            link="/",
            link_text="Back to your homes",
        )

    # ------------------------------------------------------------ sharing

    async def invite(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request, post=True)
        if not isinstance(session, SessionInfo):
            return session
        instance_id = await self._param(request, "id")
        form = await self._form(request)
        days_text = form.get("days", "7")
        days = int(days_text) if days_text.isdigit() else -1
        if days not in INVITE_DAYS:
            return await self._page(session, instance_id, status=400, error="Choose an expiry.")
        try:
            token, row = await self.sharing.invite(
                session.user_id,
                instance_id,
                form.get("email", "")[:320],
                lifetime=timedelta(days=days) if days else None,
            )
        except UnknownInstance:
            return self._not_found(session)
        except (InvalidEmail, ValueError) as exc:
            return await self._page(session, instance_id, status=400, error=str(exc))
        link = self.config.account_origin + "/invitations/accept?" + urlencode({"token": token})
        log.info("account.invited", extra={"user": session.user_id, "instance": instance_id})
        await self.site.audit(
            request,
            EventType.INVITATION_SENT,
            session,
            instance_id=instance_id,
            detail=f"invitation {row.id}",
        )
        mailed = False
        if self.site.invitation_mail is not None:
            instance = await self.site.accounts.get_instance(instance_id)
            mailed = self.site.invitation_mail.invite(
                row.email,
                inviter=session.email,
                home=instance.name if instance is not None else "Home",
                accept_url=link,
                expires=row.expires_at,
            )
        return await self._page(
            session,
            instance_id,
            invite_link={"url": link, "email": row.email, "mailed": mailed},
        )

    async def revoke_invitation(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request, post=True)
        if not isinstance(session, SessionInfo):
            return session
        instance_id = await self._param(request, "id")
        try:
            invitation_id = await self._int(request, "inv")
            await self.sharing.revoke_invitation(session.user_id, instance_id, invitation_id)
        except UnknownInstance:
            return self._not_found(session)
        await self.site.audit(
            request,
            EventType.INVITATION_REVOKED,
            session,
            instance_id=instance_id,
            detail=f"invitation {invitation_id}",
        )
        return self._back(instance_id, "invitation-revoked")

    async def remove_member(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request, post=True)
        if not isinstance(session, SessionInfo):
            return session
        instance_id = await self._param(request, "id")
        user_id = await self._int(request, "uid")
        try:
            await self.sharing.remove_member(session.user_id, instance_id, user_id)
        except UnknownInstance:
            return self._not_found(session)
        # Sessions are revoked in the database; the cache and open streams go now too.
        self.site.gate.end_user(user_id, instance_id=instance_id, why=Ending.ACCESS_WITHDRAWN)
        log.info("account.member_removed", extra={"user": session.user_id, "member": user_id})
        return self._back(instance_id, "member-removed")

    async def leave(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request, post=True)
        if not isinstance(session, SessionInfo):
            return session
        instance_id = await self._param(request, "id")
        if not await self.sharing.leave(session.user_id, instance_id):
            return self._not_found(session)
        self.site.gate.end_user(
            session.user_id, instance_id=instance_id, why=Ending.ACCESS_WITHDRAWN
        )
        log.info("account.left_home", extra={"user": session.user_id, "instance": instance_id})
        return redirect("/")

    async def accept_form(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request, post=False)
        if not isinstance(session, SessionInfo):
            return session
        token = request.query.get("token", "")
        view = await self.sharing.invitation(token)
        if view is None:
            return self.pages.message(
                "Invitation not valid",
                str(InvitationInvalid()),
                status=404,
                user_email=session.email,
                link="/",
                link_text="Your homes",
            )
        return self.pages.render(
            "accept.html",
            title="Invitation",
            user_email=session.email,
            token=token,
            invitation={
                "home": view.instance_name,
                "inviter": view.inviter_email,
                "email": view.email,
                "expires": when(view.expires_at),
                "matches": view.email == session.email,
            },
        )

    async def accept(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request, post=True)
        if not isinstance(session, SessionInfo):
            return session
        form = await self._form(request)
        try:
            instance_id = await self.sharing.accept(form.get("token", ""), session.user_id)
        except (InvitationInvalid, WrongAccount, AccessDenied) as exc:
            return self.pages.message(
                "Invitation not accepted",
                str(exc),
                status=403 if isinstance(exc, WrongAccount) else 404,
                user_email=session.email,
                link="/",
                link_text="Your homes",
            )
        log.info("account.invitation_accepted", extra={"user": session.user_id})
        await self.site.audit(
            request, EventType.INVITATION_ACCEPTED, session, instance_id=instance_id
        )
        return self.pages.message(
            "Invitation accepted",
            "You can now open this home from your list of homes.",
            status=200,
            user_email=session.email,
            link=self.config.tenant_origin(instance_id) + "/",
            link_text="Open Home Assistant",
        )

    # ------------------------------------------------------------ app links

    async def create_app_link(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request, post=True)
        if not isinstance(session, SessionInfo):
            return session
        instance_id = await self._param(request, "id")
        form = await self._form(request)
        try:
            label, row = await self.sharing.create_app_link(
                session.user_id, instance_id, form.get("name", "")[:200]
            )
        except UnknownInstance:
            return self._not_found(session)
        except ValueError as exc:
            return await self._page(session, instance_id, status=400, error=str(exc))
        url = app_link_url(self.config, label)
        log.info("account.app_link_created", extra={"user": session.user_id, "link": row.id})
        await self.site.audit(
            request,
            EventType.APP_LINK_CREATED,
            session,
            instance_id=instance_id,
            detail=f"app link {row.id}",
        )
        return await self._page(
            session, instance_id, app_link={"name": row.name, "url": url, "qr": qr_svg(url)}
        )

    async def revoke_app_link(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request, post=True)
        if not isinstance(session, SessionInfo):
            return session
        instance_id = await self._param(request, "id")
        link_id = await self._int(request, "lid")
        try:
            revoked = await self.sharing.revoke_app_link(session.user_id, instance_id, link_id)
        except UnknownInstance:
            return self._not_found(session)
        if revoked:
            await self.site.audit(
                request,
                EventType.APP_LINK_REVOKED,
                session,
                instance_id=instance_id,
                detail=f"app link {link_id}",
            )
            # Then at once: no await between forgetting the link and cutting its traffic.
            self.app_links.forget_link(link_id)
            self.site.gate.live.end_app_link(link_id)
        return self._back(instance_id, "link-revoked")

    # ------------------------------------------------------------ 2FA policy

    async def second_factor(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request, post=True)
        if not isinstance(session, SessionInfo):
            return session
        instance_id = await self._param(request, "id")
        form = await self._form(request)
        try:
            ended = await self.sharing.set_require_second_factor(
                session.user_id,
                instance_id,
                form.get("required") == "yes",
                session_id=session.session_id,
            )
        except UnknownInstance:
            return self._not_found(session)
        except AccessDenied as exc:
            return await self._page(session, instance_id, status=409, error=str(exc))
        self.site.gate.end_sessions(ended)
        return self._back(instance_id, "policy")
