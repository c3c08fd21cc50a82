"""The account site's services, each in a typed slot of the site application.

Page modules read what they need from ``request.app`` (and the signed-in
account from the request, put there by :mod:`.guard`); none reaches back
into another page's object.
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from homeport.accounts.service import Accounts
from homeport.accounts.sessions import SessionInfo
from homeport.mail.mailer import Outbox
from homeport.mail.messages import MailWriter
from homeport.relay.app_links import AppLinkGate
from homeport.relay.config import RelayConfig
from homeport.relay.gate import SessionGate
from homeport.relay.pages import Pages
from homeport.relay.redirects import redirect
from homeport.relay.site.events import AuditTrail
from homeport.relay.site.hooks import Homes, InvitationMail, Notices
from homeport.relay.site.once import OnceStore
from homeport.relay.site.signin_flow import SignInFlow

__all__ = [
    "ACCOUNT",
    "ACCOUNTS",
    "APP_LINKS",
    "AUDIT",
    "CONFIG",
    "GATE",
    "HOMES",
    "INVITATION_MAIL",
    "MAIL",
    "NOTICES",
    "PAGES",
    "PAIRING",
    "SHOWN_ONCE",
    "SIGNIN",
    "MailOut",
    "current",
    "notify",
    "sign_in_first",
]

CONFIG = web.AppKey("config", RelayConfig)
ACCOUNTS = web.AppKey("accounts", Accounts)
PAGES = web.AppKey("pages", Pages)
#: Tenant-session cache and live traffic: what to cut when access ends.
GATE = web.AppKey("gate", SessionGate)
HOMES = web.AppKey[Homes]("homes")
APP_LINKS = web.AppKey("app_links", AppLinkGate)
AUDIT = web.AppKey("audit", AuditTrail)
SIGNIN = web.AppKey("signin", SignInFlow)
#: Security notices and invitation mail: ``None`` without mail.
NOTICES = web.AppKey[Notices | None]("notices")
INVITATION_MAIL = web.AppKey[InvitationMail | None]("invitation_mail")
#: This relay's pairing string (:mod:`homeport.pairing`), shown on "Add a home".
PAIRING = web.AppKey("pairing", str)
#: Secrets waiting for the page after a form's redirect (:mod:`.once`).
SHOWN_ONCE = web.AppKey("shown_once", OnceStore)


class MailOut:
    """Where the mail-backed pages post their mail, and how they write it."""

    def __init__(self, outbox: Outbox, writer: MailWriter) -> None:
        self.outbox = outbox
        self.writer = writer


#: Only on a site with mail (``relay/mail_features.py``).
MAIL = web.AppKey("mail", MailOut)

#: The signed-in account behind this request (its account-site session), or ``None``.
ACCOUNT = web.RequestKey[SessionInfo | None]("account")


def current(request: web.Request) -> SessionInfo | None:
    """The account session the guard found on this request."""
    return request[ACCOUNT]


def sign_in_first(back: str) -> web.Response:
    """Off to the sign-in page, and back to ``back`` (a local path) afterwards."""
    return redirect("/signin?" + urlencode({"next": back}))


async def notify(request: web.Request, user_id: int, what: str) -> None:
    """Tell the owner about a security change (R-OPS-05), when mail is on."""
    notices = request.app[NOTICES]
    if notices is not None:
        await notices.changed(request, user_id, what)
