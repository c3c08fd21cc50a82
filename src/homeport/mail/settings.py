"""SMTP settings for the relay's outgoing mail, checked once at start-up.

Threat this stops: credentials or codes sent in clear over the network. A
connection without TLS (``security = "none"``) is accepted only for a
loopback host (a local MTA or a test sink), never for a remote server.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.headerregistry import Address
from pathlib import Path
from typing import Final, Literal

__all__ = ["DEFAULT_PORTS", "SECURITY_MODES", "MailSettingsError", "SmtpSettings", "is_loopback"]

Security = Literal["starttls", "tls", "none"]
SECURITY_MODES: Final[dict[str, Security]] = {"starttls": "starttls", "tls": "tls", "none": "none"}
DEFAULT_PORTS: Final[dict[str, int]] = {"starttls": 587, "tls": 465, "none": 25}
#: Seconds for connecting, each SMTP command and the whole send.
DEFAULT_TIMEOUT: Final = 15.0


class MailSettingsError(ValueError):
    """SMTP settings that cannot work or would be unsafe; the message says which."""


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_from(mail_from: str) -> str:
    try:
        address = Address(addr_spec=mail_from)
    except (HeaderParseError, ValueError, IndexError) as exc:
        raise MailSettingsError(f"--mail-from is not an email address: {mail_from!r}") from exc
    if not address.username or not address.domain or any(c in mail_from for c in "\r\n"):
        raise MailSettingsError(f"--mail-from is not an email address: {mail_from!r}")
    return mail_from


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    mail_from: str
    port: int = 587
    security: Security = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def build(
        cls,
        *,
        host: str,
        mail_from: str | None,
        port: int | None = None,
        security: str = "starttls",
        username: str | None = None,
        password_file: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> SmtpSettings:
        """Validated settings; raises :class:`MailSettingsError` with a clear message."""
        mode = SECURITY_MODES.get(security.lower())
        if mode is None:
            raise MailSettingsError(
                f"--smtp-security must be starttls, tls or none, not {security!r}"
            )
        if mode == "none" and not is_loopback(host):
            raise MailSettingsError(
                "--smtp-security none sends mail in clear and is only allowed for a "
                f"loopback SMTP host, not {host!r}"
            )
        if not mail_from:
            raise MailSettingsError("--mail-from is required with --smtp-host")
        password = None
        if password_file is not None:
            try:
                password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise MailSettingsError(
                    f"cannot read --smtp-password-file {password_file}: {exc.strerror}"
                ) from exc
        if password is not None and not username:
            raise MailSettingsError("--smtp-password-file needs --smtp-user")
        if password is not None and mode == "none":
            raise MailSettingsError("refusing to send an SMTP password without TLS")
        chosen_port = DEFAULT_PORTS[mode] if port is None else int(port)
        if not 0 < chosen_port < 65536:
            raise MailSettingsError(f"--smtp-port out of range: {chosen_port}")
        return cls(
            host=host,
            mail_from=_check_from(mail_from),
            port=chosen_port,
            security=mode,
            username=username or None,
            password=password,
            timeout=timeout,
        )
