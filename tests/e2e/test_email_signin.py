"""End to end: the emailed code for a sign-in from a new network (R-EML-01..03, R-RATE-02).

The relay runs as its own process with real SMTP to an aiosmtpd sink on
loopback; browsers connect from distinct loopback addresses (127.0.0.X), so
the relay sees distinct client networks through real sockets.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from email_flows import (
    MAIL_FROM,
    browser_from,
    cookie,
    get,
    mail_standin,
    password_step,
    post,
    sign_in,
)
from relay_process import Home
from smtp_sink import SmtpSink
from yarl import URL

from homeport.relay.site.email_code import DEVICE_COOKIE, VERIFY_COOKIE
from homeport.relay.site.signin_flow import ACCOUNT_COOKIE

pytestmark = pytest.mark.timeout(240)


@pytest_asyncio.fixture
async def mailed(tmp_path: Path) -> AsyncIterator[tuple[Home, SmtpSink]]:
    async with mail_standin(tmp_path) as running:
        yield running


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_new_network_gets_a_code_by_mail(mailed: tuple[Home, SmtpSink]) -> None:
    home, sink = mailed
    async with browser_from(home, "127.0.0.2") as browser:
        status, _, location = await password_step(browser, home, next_path="/")
        assert status == 303
        assert location == "/signin/email-code"
        assert cookie(browser, ACCOUNT_COOKIE) is None  # no session before the code
        assert cookie(browser, VERIFY_COOKIE)
        status, body, _ = await get(browser, home.account_origin + "/signin/email-code")
        assert status == 200
        assert "Check your email" in body
        assert "o…r@example.com" in body
        status, _, location = await get(browser, home.account_origin + "/")
        assert status == 303  # still not signed in
        mail = await sink.wait_for(home.email)
        assert mail.mail_from == MAIL_FROM
        assert "sign-in code" in str(mail.message["Subject"])
        text = mail.text
        assert "From:   127.0.0.2" in text
        assert "Device: " in text
        assert "UTC" in text
        assert "/signin/not-me?t=" in text
        code = mail.code()
        status, body, _ = await post(browser, home, "/signin/email-code", {"code": wrong(code)})
        assert status == 401
        assert "not right" in body
        status, _, location = await post(browser, home, "/signin/email-code", {"code": code})
        assert status == 303
        assert location == "/"
        assert cookie(browser, ACCOUNT_COOKIE)
        device = cookie(browser, DEVICE_COOKIE)
        assert device
        status, body, _ = await get(browser, home.account_origin + "/")
        assert status == 200
        # replaying the code is refused: the pending sign-in is used up
        status, body, _ = await post(browser, home, "/signin/email-code", {"code": code})
        assert status == 401
        assert "Sign in again" in body
        # the code never shows up in the relay's logs
        assert code not in home.relay.log_text()

    # another browser on the remembered network: no code, but the owner is told
    async with browser_from(home, "127.0.0.2") as browser:
        before = len(sink.to(home.email))
        status, _, location = await password_step(browser, home)
        assert (status, location) == (303, "/")
        notice = await sink.wait_for(home.email, before + 1)
        assert "New sign-in" in str(notice.message["Subject"])
        assert "From:   127.0.0.2" in notice.text
        assert "/signin/not-me?t=" in notice.text
        assert not re.search(r"^\s+\d{6}\s*$", notice.text, re.MULTILINE)  # no code in it


async def test_known_device_on_a_new_network_needs_no_code(
    mailed: tuple[Home, SmtpSink],
) -> None:
    home, sink = mailed
    async with browser_from(home, "127.0.0.4") as browser:
        assert await sign_in(browser, home, sink) is not None
        device = cookie(browser, DEVICE_COOKIE)
        assert device
    # The same browser (its device cookie), now on a network the account never used.
    async with browser_from(home, "127.0.0.5") as browser:
        browser.session.cookie_jar.update_cookies(
            {DEVICE_COOKIE: device}, response_url=URL(home.account_origin)
        )
        before = len(sink.to(home.email))
        status, _, location = await password_step(browser, home)
        assert (status, location) == (303, "/")
        assert len(sink.to(home.email)) == before
    # A forged device cookie does not count (on yet another network).
    async with browser_from(home, "127.0.0.13") as browser:
        browser.session.cookie_jar.update_cookies(
            {DEVICE_COOKIE: "x" * 43}, response_url=URL(home.account_origin)
        )
        status, _, location = await password_step(browser, home)
        assert location == "/signin/email-code"
    async with browser_from(home, "127.0.0.6") as fresh:  # no cookie, new network
        status, _, location = await password_step(fresh, home)
        assert location == "/signin/email-code"


async def test_five_wrong_codes_end_the_pending_signin(mailed: tuple[Home, SmtpSink]) -> None:
    home, sink = mailed
    async with browser_from(home, "127.0.0.7") as browser:
        await password_step(browser, home)
        code = (await sink.wait_for(home.email)).code()
        statuses = []
        for _ in range(5):
            status, body, _ = await post(browser, home, "/signin/email-code", {"code": wrong(code)})
            statuses.append(status)
        assert statuses == [401] * 5
        assert "Sign in again" in body
        status, body, _ = await post(browser, home, "/signin/email-code", {"code": code})
        assert status == 401
        assert "Sign in again" in body
        assert cookie(browser, ACCOUNT_COOKIE) is None
        status, _, location = await get(browser, home.account_origin + "/signin/email-code")
        assert (status, location) == (303, "/signin")


async def test_code_from_one_signin_is_refused_on_another(
    mailed: tuple[Home, SmtpSink],
) -> None:
    home, sink = mailed
    async with browser_from(home, "127.0.0.8") as first, browser_from(home, "127.0.0.9") as second:
        await password_step(first, home)
        first_code = (await sink.wait_for(home.email, 1)).code()
        await password_step(second, home)
        second_code = (await sink.wait_for(home.email, 2)).code()
        if first_code != second_code:  # one in a million they are equal
            status, _, _ = await post(second, home, "/signin/email-code", {"code": first_code})
            assert status == 401
        status, _, location = await post(first, home, "/signin/email-code", {"code": first_code})
        assert (status, location) == (303, "/")
        assert cookie(second, ACCOUNT_COOKIE) is None


async def test_cross_site_code_post_is_refused(mailed: tuple[Home, SmtpSink]) -> None:
    home, sink = mailed
    async with browser_from(home, "127.0.0.10") as browser:
        await password_step(browser, home)
        code = (await sink.wait_for(home.email)).code()
        status, _, _ = await post(
            browser, home, "/signin/email-code", {"code": code}, origin=home.tenant_origin
        )
        assert status == 403
        status, _, _ = await post(browser, home, "/signin/email-code", {"code": code})
        assert status == 303  # the refused post did not use anything up


async def test_this_wasnt_me_ends_every_session(mailed: tuple[Home, SmtpSink]) -> None:
    home, sink = mailed
    async with browser_from(home, "127.0.0.11") as owner:
        await sign_in(owner, home, sink)
        status, _, _ = await get(owner, home.account_origin + "/")
        assert status == 200
        # the owner opens their home: a tenant session through the hand-off
        async with owner.session.get(
            home.tenant_origin + "/", headers={"Accept": "text/html"}
        ) as r:
            assert r.status == 200
            assert str(r.url).startswith(home.tenant_origin)
        thief = browser_from(home, "127.0.0.12")
        await password_step(thief, home)
        alert = await sink.wait_for(home.email, 2)
        assert "127.0.0.12" in alert.text
        link = alert.link("/signin/not-me")
        async with browser_from(home, "127.0.0.11") as mail_client:
            # opening the link (a mail scanner would) changes nothing
            status, body, _ = await get(mail_client, link)
            assert status == 200
            assert "End every session" in body
            status, _, _ = await get(owner, home.account_origin + "/")
            assert status == 200
            token = link.rsplit("t=", 1)[1]
            status, _, _ = await post(
                mail_client, home, "/signin/not-me", {"t": token}, origin=home.tenant_origin
            )
            assert status == 403
            status, body, _ = await post(mail_client, home, "/signin/not-me", {"t": token})
            assert status == 200
            assert "change it now" in body
            status, _, _ = await post(mail_client, home, "/signin/not-me", {"t": token})
            assert status == 400  # single use
        status, _, location = await get(owner, home.account_origin + "/")
        assert (status, location) == (303, "/signin")
        async with owner.session.get(
            home.tenant_origin + "/", headers={"Accept": "text/html"}, allow_redirects=False
        ) as r:
            assert r.status == 303  # the tenant session ended too
            # back to the account site for a new hand-off, which needs a new sign-in
            assert r.headers["Location"].startswith(home.account_origin + "/connect?")
        ended = await sink.wait_for(home.email, 3)
        assert "sessions were ended" in str(ended.message["Subject"])
        # the thief's pending sign-in is gone as well
        status, body, _ = await post(thief, home, "/signin/email-code", {"code": alert.code()})
        assert status == 401
        assert "Sign in again" in body
        await thief.session.close()
