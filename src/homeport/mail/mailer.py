"""Sending mail: over SMTP (aiosmtplib), or to the console in ``homeport dev`` only.

Threats and failure modes this handles:

* **A slow or dead SMTP server must not hold requests.** Mail is handed to
  :class:`Outbox`, which sends in the background (bounded concurrency and
  queue) with a timeout on every step; a request never waits for SMTP. This
  also keeps answers like "if the address has an account, we sent a link"
  equally fast whether or not a mail went out (no enumeration by timing).
* **Logs carry metadata only**: the kind of mail, the recipient's domain and
  the error class; never the address, the body, a code or a link.
* **Header injection**: recipients and subjects are set through
  :class:`email.message.EmailMessage`, which refuses CR/LF in headers.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Final, Protocol, TextIO

import aiosmtplib

from homeport.mail.settings import SmtpSettings

__all__ = ["ConsoleMailer", "Mail", "Mailer", "Outbox", "SmtpMailer", "recipient_domain"]

_log = logging.getLogger(__name__)

#: Mails waiting or being sent at once; more are dropped (and logged) rather than
#: growing memory without bound while the SMTP server is down.
OUTBOX_LIMIT: Final = 200
PARALLEL_SENDS: Final = 4


@dataclass(frozen=True, slots=True)
class Mail:
    """One plain-text mail (optionally with a simple HTML alternative)."""

    to: str
    subject: str
    text: str
    kind: str
    html: str | None = None


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2][:64] or "?"


class Mailer(Protocol):
    async def send(self, mail: Mail) -> None:
        """Deliver ``mail`` or raise; implementations bound their own time."""


def build_message(mail: Mail, mail_from: str, now: datetime | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = mail_from
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = format_datetime(now or datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=recipient_domain(mail_from))
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(mail.text)
    if mail.html is not None:
        message.add_alternative(mail.html, subtype="html")
    return message


class SmtpMailer:
    """aiosmtplib with STARTTLS (required, not opportunistic), implicit TLS, or none (loopback)."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    async def send(self, mail: Mail) -> None:
        s = self.settings
        message = build_message(mail, s.mail_from)
        async with asyncio.timeout(s.timeout * 2):
            await aiosmtplib.send(
                message,
                hostname=s.host,
                port=s.port,
                username=s.username,
                password=s.password,
                use_tls=s.security == "tls",
                start_tls=s.security == "starttls",
                timeout=s.timeout,
            )


class ConsoleMailer:
    """Development only (``homeport dev`` without SMTP): prints mails to the console.

    The mails carry sign-in codes and reset links, so this is never used by
    ``homeport relay``; there, no SMTP means the mail features are off.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    async def send(self, mail: Mail) -> None:
        stream = self._stream or sys.stdout
        rule = "-" * 72
        stream.write(
            f"\n{rule}\n[dev mail, not sent] To: {mail.to}\nSubject: {mail.subject}\n\n"
            f"{mail.text}\n{rule}\n"
        )
        stream.flush()


class Outbox:
    """Sends mails in the background so no request waits on SMTP."""

    def __init__(self, mailer: Mailer, *, on_sent: Callable[[Mail], None] | None = None) -> None:
        self.mailer = mailer
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(PARALLEL_SENDS)
        self._on_sent = on_sent

    def post(self, mail: Mail) -> bool:
        """Queue ``mail``; ``False`` (and a log line) if the outbox is full."""
        if len(self._tasks) >= OUTBOX_LIMIT:
            _log.error(
                "mail.dropped",
                extra={
                    "kind": mail.kind,
                    "domain": recipient_domain(mail.to),
                    "why": "outbox full",
                },
            )
            return False
        task = asyncio.get_running_loop().create_task(self._deliver(mail))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _deliver(self, mail: Mail) -> None:
        domain = recipient_domain(mail.to)
        async with self._slots:
            try:
                await self.mailer.send(mail)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any SMTP, TLS, DNS or timeout failure
                _log.error(
                    "mail.send_failed",
                    extra={"kind": mail.kind, "domain": domain, "error": type(exc).__name__},
                )
                return
        _log.info("mail.sent", extra={"kind": mail.kind, "domain": domain})
        if self._on_sent is not None:
            self._on_sent(mail)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait (bounded) for queued mails, then cancel the rest (relay shutdown)."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            _log.warning("mail.unsent_at_shutdown", extra={"count": len(pending)})
