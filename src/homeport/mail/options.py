"""The relay's mail options (``--smtp-*``, ``--mail-from``): flags, and reading them back."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Protocol

from homeport.mail.settings import MailSettingsError, SmtpSettings

__all__ = ["add_mail_arguments", "signup_open", "smtp_settings"]

_NAMES = ("smtp_port", "smtp_security", "smtp_user", "smtp_password_file", "mail_from")


class OptionSource(Protocol):
    def get(self, name: str, default: Any = None) -> Any: ...

    def path(self, name: str, default: Path | None = None) -> Path | None: ...


def add_mail_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mail (sign-in codes for new networks, password reset)")
    group.add_argument("--smtp-host", dest="smtp_host", help="SMTP server; default none: mail off")
    group.add_argument(
        "--smtp-port", dest="smtp_port", type=int, help="default 587 (starttls), 465 (tls), 25"
    )
    group.add_argument(
        "--smtp-security",
        dest="smtp_security",
        choices=["starttls", "tls", "none"],
        help="starttls (default, required), tls (implicit), none (loopback host only)",
    )
    group.add_argument("--smtp-user", dest="smtp_user", help="SMTP login name")
    group.add_argument(
        "--smtp-password-file", dest="smtp_password_file", help="file holding the SMTP password"
    )
    group.add_argument("--mail-from", dest="mail_from", help="From address, e.g. relay@example")
    group.add_argument(
        "--signup",
        dest="signup",
        choices=["open", "closed"],
        help="closed (default): accounts only by `homeport admin user create`; open: anyone "
        "may sign up with a verified email address (needs --smtp-host)",
    )


def signup_open(opts: OptionSource, smtp: SmtpSettings | None, *, dev: bool = False) -> bool:
    """``--signup``: closed by default (open in ``homeport dev``); open needs mail."""
    value = str(opts.get("signup", "open" if dev else "closed")).lower()
    if value not in ("open", "closed"):
        raise MailSettingsError(f"--signup must be open or closed, not {value!r}")
    if value == "open" and smtp is None and not dev:
        raise MailSettingsError("--signup open needs mail: set --smtp-host and --mail-from")
    return value == "open"


def smtp_settings(opts: OptionSource) -> SmtpSettings | None:
    """The SMTP settings, ``None`` without ``--smtp-host``; :class:`MailSettingsError` if bad."""
    host = opts.get("smtp_host")
    if not host:
        given = [name for name in _NAMES if opts.get(name) not in (None, "")]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise MailSettingsError(f"{flags} given without --smtp-host")
        return None
    port = opts.get("smtp_port")
    return SmtpSettings.build(
        host=str(host),
        mail_from=opts.get("mail_from"),
        port=int(port) if port is not None else None,
        security=str(opts.get("smtp_security", "starttls")),
        username=opts.get("smtp_user"),
        password_file=opts.path("smtp_password_file"),
    )
