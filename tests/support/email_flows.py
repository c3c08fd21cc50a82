"""A relay process that sends real mail to an aiosmtpd sink, and the flows that read it.

``mail_home`` starts :class:`smtp_sink.SmtpSink` on loopback and the relay as a
child process configured with ``--smtp-host 127.0.0.1 --smtp-security none``
(allowed for loopback only), plus a linked add-on (``relay_process.start_home``).
Browsers can connect from other loopback addresses (``127.0.0.2`` …) so the
relay sees distinct client networks, honestly, through real sockets.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from relay_process import Home, start_home
from smtp_sink import Received, SmtpSink
from stack import Browser

from homeport.standin import start_standin
from homeport.tls.devca import DevCA

MAIL_FROM = "relay@homeport.example"
NAVIGATE = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}


@contextlib.asynccontextmanager
async def mail_home(
    root: Path, backend_url: str, *relay_args: str, ca: DevCA | None = None
) -> AsyncIterator[tuple[Home, SmtpSink]]:
    with SmtpSink() as sink:
        args = [
            "--smtp-host", "127.0.0.1", "--smtp-port", str(sink.port),
            "--smtp-security", "none", "--mail-from", MAIL_FROM, *relay_args,
        ]  # fmt: skip
        async with start_home(root, backend_url, relay_args=args, ca=ca) as home:
            yield home, sink


@contextlib.asynccontextmanager
async def mail_standin(
    root: Path, *relay_args: str, ca: DevCA | None = None
) -> AsyncIterator[tuple[Home, SmtpSink]]:
    """``mail_home`` in front of the aiohttp stand-in for Home Assistant."""
    standin, url = await start_standin()
    try:
        async with mail_home(root, url, *relay_args, ca=ca) as running:
            yield running
    finally:
        await standin.cleanup()


def browser_from(home: Home, source_ip: str) -> Browser:
    return Browser(home, source_ip=source_ip)  # type: ignore[arg-type]  # Home duck-types Stack


def cookie(browser: Browser, name: str) -> str | None:
    for morsel in browser.session.cookie_jar:
        if morsel.key == name:
            return morsel.value
    return None


async def post(
    browser: Browser, home: Home, path: str, data: dict[str, str], *, origin: str | None = None
) -> tuple[int, str, str]:
    """POST a form to the account site; (status, body, Location)."""
    async with browser.request(
        "POST",
        home.account_origin + path,
        data=data,
        headers={"Origin": origin or home.account_origin},
    ) as r:
        return r.status, await r.text(), r.headers.get("Location", "")


async def get(browser: Browser, url: str) -> tuple[int, str, str]:
    async with browser.request("GET", url, headers=NAVIGATE) as r:
        return r.status, await r.text(), r.headers.get("Location", "")


async def password_step(
    browser: Browser, home: Home, password: str | None = None, next_path: str = "/"
) -> tuple[int, str, str]:
    return await post(
        browser,
        home,
        "/signin",
        {"email": home.email, "password": password or home.password, "next": next_path},
    )


async def sign_in(
    browser: Browser, home: Home, sink: SmtpSink, password: str | None = None
) -> Received | None:
    """A whole password sign-in, typing the mailed code if one is asked for."""
    before = len(sink.to(home.email))
    status, body, location = await password_step(browser, home, password)
    assert status == 303, body
    if location != "/signin/email-code":
        return None
    mail = await sink.wait_for(home.email, before + 1)
    status, body, location = await post(browser, home, "/signin/email-code", {"code": mail.code()})
    assert status == 303, body
    return mail
