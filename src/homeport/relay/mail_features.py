"""Wires outgoing mail into the relay, or says clearly which features are off without it.

With ``--smtp-host`` (or, in ``homeport dev`` only, the console), the relay
asks for an emailed code on sign-ins from new networks and offers password
reset by email. Without SMTP those features are off: ``homeport relay`` logs
``mail.disabled`` naming them at start-up, and their pages do not exist.
"""

from __future__ import annotations

import logging
from typing import Final

from homeport.mail.mailer import ConsoleMailer, Mailer, Outbox, SmtpMailer
from homeport.mail.messages import MailWriter
from homeport.relay.config import RelayConfig
from homeport.relay.site.keys import MailOut
from homeport.relay.site.reset import RESET_JOBS, BackgroundJobs

__all__ = ["MAIL_FEATURES", "MailFeatures"]

log = logging.getLogger(__name__)

MAIL_FEATURES: Final = (
    "email code for sign-ins from new networks",
    "password reset by email",
    "public sign-up",
    "security notices by email",
)


def _mailer(config: RelayConfig) -> Mailer | None:
    if config.smtp is not None:
        return SmtpMailer(config.smtp)
    if config.dev_console_mail:
        return ConsoleMailer()
    return None


class MailFeatures:
    """The relay's outbox, and what the account site's mail-backed pages need of it.

    The account site (:func:`homeport.relay.site.app.account_site`) adds those
    pages only when :attr:`out` is set.
    """

    def __init__(self, config: RelayConfig) -> None:
        mailer = _mailer(config)
        self.outbox: Outbox | None = None
        #: Outbox and message writer for the account site's pages; ``None``: mail is off.
        self.out: MailOut | None = None
        #: Password-reset links being made after their answer (drained on close).
        self.reset_jobs = BackgroundJobs(RESET_JOBS)
        if mailer is None:
            if config.signup:
                raise ValueError("public sign-up needs mail: configure SMTP (--smtp-host)")
            return
        self.outbox = Outbox(mailer)
        self.out = MailOut(self.outbox, MailWriter(config.account_origin))

    @property
    def enabled(self) -> bool:
        return self.outbox is not None

    def announce(self, config: RelayConfig) -> None:
        """One start-up log line saying where mail goes, or what is off without it."""
        if config.smtp is not None:
            log.info(
                "mail.enabled",
                extra={
                    "smtp_host": config.smtp.host,
                    "smtp_port": config.smtp.port,
                    "security": config.smtp.security,
                },
            )
        elif config.dev_console_mail:
            log.warning("mail.dev_console", extra={"why": "homeport dev without SMTP"})
        else:
            log.warning(
                "mail.disabled",
                extra={"why": "no --smtp-host", "features_off": "; ".join(MAIL_FEATURES)},
            )

    def summary(self, config: RelayConfig) -> str:
        """The same, as one line for the console."""
        if config.smtp is not None:
            return f"Mail: via {config.smtp.host}:{config.smtp.port} ({config.smtp.security})"
        if config.dev_console_mail:
            return "Mail: printed here (homeport dev without SMTP; never in production)"
        return "Mail: off (no --smtp-host); disabled: " + "; ".join(MAIL_FEATURES)

    async def close(self) -> None:
        if self.outbox is not None:
            await self.reset_jobs.drain()  # reset links still being made post into the outbox
            await self.outbox.drain()
