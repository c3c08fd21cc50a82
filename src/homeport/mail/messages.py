"""The mails the relay sends, from plain-text templates: no more than each one needs.

Each mail names what happened, when, from which network and on what device
(a short browser/OS summary, never the raw User-Agent), and what to do if
it was not the reader. Codes and links appear only in the mail meant to
carry them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import jinja2
from ua_parser import parse_os, parse_user_agent

from homeport.accounts.throttle import network_key
from homeport.mail.mailer import Mail

__all__ = ["MailWriter", "describe_device", "describe_network"]

_MAX_UA: Final = 512


def describe_device(user_agent: str) -> str:
    """``"Firefox 133 on Windows"``-style summary of a User-Agent; ``"an unknown device"``."""
    ua = user_agent[:_MAX_UA]
    browser = parse_user_agent(ua)
    system = parse_os(ua)
    name = browser.family if browser is not None and browser.family != "Other" else ""
    if name and browser is not None and browser.major:
        name = f"{name} {browser.major}"
    os_name = system.family if system is not None and system.family != "Other" else ""
    text = " on ".join(part for part in (name, os_name) if part)
    return "".join(ch for ch in text if ch.isprintable())[:80] or "an unknown device"


def describe_network(ip: str | None) -> str:
    """The address and, for IPv6, the /64 it counts as."""
    net = network_key(ip)
    if net == "unknown":
        return "an unknown address"
    return net if net == ip else f"{ip} (network {net})"


def _when(moment: datetime) -> str:
    return moment.strftime("%A %d %B %Y, %H:%M UTC")


class MailWriter:
    """Renders the relay's mails (Jinja2 text templates; no HTML, so nothing to escape)."""

    def __init__(self, account_origin: str) -> None:
        self.account_origin = account_origin
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("homeport.mail", "templates"),
            autoescape=False,  # plain text mail  # noqa: S701
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )

    def _mail(self, kind: str, to: str, subject: str, **context: Any) -> Mail:
        text = self._env.get_template(f"{kind}.txt").render(**context)
        return Mail(to=to, subject=subject, text=text, kind=kind)

    def _where(self, moment: datetime, ip: str | None, user_agent: str) -> dict[str, str]:
        return {
            "when": _when(moment),
            "network": describe_network(ip),
            "device": describe_device(user_agent),
        }

    def signin_code(
        self,
        to: str,
        *,
        code: str,
        minutes: int,
        deny_url: str,
        moment: datetime,
        ip: str | None,
        user_agent: str,
        second_factor: bool,
    ) -> Mail:
        return self._mail(
            "signin_code",
            to,
            f"Your Homeport sign-in code: {code}",
            code=code,
            minutes=minutes,
            deny_url=deny_url,
            second_factor=second_factor,
            **self._where(moment, ip, user_agent),
        )

    def password_reset(
        self,
        to: str,
        *,
        reset_url: str,
        minutes: int,
        moment: datetime,
        ip: str | None,
        user_agent: str,
    ) -> Mail:
        return self._mail(
            "password_reset",
            to,
            "Reset your Homeport password",
            reset_url=reset_url,
            minutes=minutes,
            **self._where(moment, ip, user_agent),
        )

    def password_changed(
        self, to: str, *, by_reset: bool, moment: datetime, ip: str | None, user_agent: str
    ) -> Mail:
        return self._mail(
            "password_changed",
            to,
            "Your Homeport password was changed",
            by_reset=by_reset,
            forgot_url=self.account_origin + "/signin/forgot",
            **self._where(moment, ip, user_agent),
        )

    def signup_verify(
        self,
        to: str,
        *,
        verify_url: str,
        hours: int,
        moment: datetime,
        ip: str | None,
        user_agent: str,
    ) -> Mail:
        return self._mail(
            "signup_verify",
            to,
            "Confirm your Homeport account",
            verify_url=verify_url,
            hours=hours,
            **self._where(moment, ip, user_agent),
        )

    def signup_exists(self, to: str, *, moment: datetime, ip: str | None, user_agent: str) -> Mail:
        return self._mail(
            "signup_exists",
            to,
            "You already have a Homeport account",
            forgot_url=self.account_origin + "/signin/forgot",
            **self._where(moment, ip, user_agent),
        )

    def new_signin(
        self, to: str, *, deny_url: str, moment: datetime, ip: str | None, user_agent: str
    ) -> Mail:
        return self._mail(
            "new_signin",
            to,
            "New sign-in to your Homeport account",
            deny_url=deny_url,
            **self._where(moment, ip, user_agent),
        )

    def security_change(
        self, to: str, *, what: str, moment: datetime, ip: str | None, user_agent: str
    ) -> Mail:
        return self._mail(
            "security_change",
            to,
            "Security change on your Homeport account",
            what=what,
            forgot_url=self.account_origin + "/signin/forgot",
            **self._where(moment, ip, user_agent),
        )

    def invitation(
        self,
        to: str,
        *,
        inviter: str,
        home: str,
        accept_url: str,
        expires: datetime | None,
    ) -> Mail:
        return self._mail(
            "invitation",
            to,
            f"{inviter} invites you to a home on Homeport",
            invited=to,
            inviter=inviter,
            home=home,
            accept_url=accept_url,
            expires=_when(expires) if expires is not None else "",
        )

    def signin_denied(self, to: str, *, moment: datetime) -> Mail:
        return self._mail(
            "signin_denied",
            to,
            "Your Homeport sessions were ended",
            when=_when(moment),
            forgot_url=self.account_origin + "/signin/forgot",
        )

    def app_link_created(
        self, to: str, *, home: str, device: str, manage_url: str, moment: datetime, ip: str | None
    ) -> Mail:
        """An app link was made from the add-on's panel (no link in the mail: it is shown once)."""
        return self._mail(
            "app_link_created",
            to,
            f'New app link "{device}" for your home on Homeport',
            home=home,
            device=device,
            manage_url=manage_url,
            when=_when(moment),
            network=describe_network(ip),
        )

    def email_change_code(
        self,
        to: str,
        *,
        code: str,
        minutes: int,
        moment: datetime,
        ip: str | None,
        user_agent: str,
    ) -> Mail:
        """The code that proves a new address (sent to the new address only)."""
        return self._mail(
            "email_change_code",
            to,
            f"Your Homeport code to confirm this address: {code}",
            code=code,
            minutes=minutes,
            **self._where(moment, ip, user_agent),
        )

    def email_change_exists(
        self, to: str, *, moment: datetime, ip: str | None, user_agent: str
    ) -> Mail:
        """To an address that has an account already: a note, no code."""
        return self._mail(
            "email_change_exists",
            to,
            "Someone tried to move a Homeport account to this address",
            **self._where(moment, ip, user_agent),
        )

    def email_changed(
        self,
        to: str,
        *,
        new_email: str,
        undo_url: str,
        days: int,
        moment: datetime,
        ip: str | None,
        user_agent: str,
    ) -> Mail:
        """To the old address after a change, with the "this was not me" link."""
        return self._mail(
            "email_changed",
            to,
            "The email address of your Homeport account was changed",
            new_email=new_email,
            undo_url=undo_url,
            days=days,
            **self._where(moment, ip, user_agent),
        )

    def account_deleted(
        self, to: str, *, homes: int, moment: datetime, ip: str | None, user_agent: str
    ) -> Mail:
        """To the address of an account that was just deleted (it is told once, then gone)."""
        return self._mail(
            "account_deleted",
            to,
            "Your Homeport account was deleted",
            homes=homes,
            **self._where(moment, ip, user_agent),
        )

    def home_offline(self, to: str, *, home: str, since: datetime, manage_url: str) -> Mail:
        """The owner asked to hear when this home stays offline (one mail per outage)."""
        return self._mail(
            "home_offline",
            to,
            f"Your home {home} is offline",
            home=home,
            since=_when(since),
            manage_url=manage_url,
        )

    def home_back(
        self, to: str, *, home: str, since: datetime, back: datetime, manage_url: str
    ) -> Mail:
        """The outage the owner was told about is over."""
        return self._mail(
            "home_back",
            to,
            f"Your home {home} is back online",
            home=home,
            since=_when(since),
            back=_when(back),
            manage_url=manage_url,
        )
