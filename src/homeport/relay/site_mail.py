"""What the mail-backed account-site pages share: their wiring and their refusals."""

from __future__ import annotations

from aiohttp import web

from homeport.accounts.throttle import retry_after
from homeport.mail.mailer import Outbox
from homeport.mail.messages import MailWriter
from homeport.relay.account_site import AccountSite

__all__ = ["MailPages"]


class MailPages:
    """Base of a group of routes on the account site that send mail through ``outbox``."""

    def __init__(self, site: AccountSite, outbox: Outbox, writer: MailWriter) -> None:
        self.site = site
        self.accounts = site.accounts
        self.pages = site.pages
        self.outbox = outbox
        self.writer = writer

    def link_refused(
        self, text: str, *, link: str, link_text: str, wait: float = 0.0
    ) -> web.Response:
        """A mailed link that is unknown, used or expired (429 while throttled)."""
        response = self.pages.message(
            "Link not valid",
            text,
            status=429 if wait > 0 else 400,
            link=link,
            link_text=link_text,
        )
        if wait > 0:
            response.headers["Retry-After"] = retry_after(wait)
        return response
