"""Mails the owner about security changes to the account (R-OPS-05).

Threat this stops: a change made by someone else in a stolen session going
unnoticed. The mail names what changed, when, from where and on what
device, and points to the password reset (which ends every session).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from aiohttp import web

from homeport.mail.mailer import Outbox
from homeport.mail.messages import MailWriter
from homeport.relay.account_site import AccountSite
from homeport.relay.site_mail import MailPages

__all__ = ["MailNotices"]

log = logging.getLogger(__name__)


class MailNotices(MailPages):
    """The account site's :class:`~homeport.relay.account_site.Notices`, by mail."""

    def __init__(self, site: AccountSite, outbox: Outbox, writer: MailWriter) -> None:
        super().__init__(site, outbox, writer)
        site.notices = self
        site.invitation_mail = self

    def invite(
        self, to: str, *, inviter: str, home: str, accept_url: str, expires: datetime | None
    ) -> bool:
        """Mail an owner's invitation; the accept link works only for that address."""
        return self.outbox.post(
            self.writer.invitation(
                to, inviter=inviter, home=home, accept_url=accept_url, expires=expires
            )
        )

    async def changed(self, request: web.Request, user_id: int, what: str) -> None:
        user = await self.accounts.get_user(user_id)
        if user is None:
            return
        self.outbox.post(
            self.writer.security_change(
                user.email,
                what=what,
                moment=datetime.now(UTC),
                ip=request.remote,
                user_agent=request.headers.get("User-Agent", ""),
            )
        )
        log.info("account.security_change_mailed", extra={"user": user_id})
