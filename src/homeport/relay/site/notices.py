"""Mails the owner about security changes to the account (R-OPS-05).

Threat this stops: a change made by someone else in a stolen session going
unnoticed. The mail names what changed, when, from where and on what
device, and points to the password reset (which ends every session).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from aiohttp import web

from homeport.accounts.service import Accounts
from homeport.relay.site.keys import MailOut

__all__ = ["MailNotices"]

log = logging.getLogger(__name__)


class MailNotices:
    """The account site's :class:`~homeport.relay.site.hooks.Notices` and
    :class:`~homeport.relay.site.hooks.InvitationMail`, by mail."""

    def __init__(self, accounts: Accounts, mail: MailOut) -> None:
        self.accounts = accounts
        self.mail = mail

    def invite(
        self, to: str, *, inviter: str, home: str, accept_url: str, expires: datetime | None
    ) -> bool:
        """Mail an owner's invitation; the accept link works only for that address."""
        return self.mail.outbox.post(
            self.mail.writer.invitation(
                to, inviter=inviter, home=home, accept_url=accept_url, expires=expires
            )
        )

    async def changed(self, request: web.Request, user_id: int, what: str) -> None:
        user = await self.accounts.users.get(user_id)
        if user is None:
            return
        self.mail.outbox.post(
            self.mail.writer.security_change(
                user.email,
                what=what,
                moment=datetime.now(UTC),
                ip=request.remote,
                user_agent=request.headers.get("User-Agent", ""),
            )
        )
        log.info("account.security_change_mailed", extra={"user": user_id})
