"""End to end: password reset by email (R-PWD-05, R-RATE-02/03, R-OPS-05).

Relay process, real SMTP to an aiosmtpd sink on loopback, browsers as real
HTTPS clients from distinct loopback addresses.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pyotp
import pytest
import pytest_asyncio
from email_flows import (
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
from stack import Browser

from homeport.relay.site.signin_flow import ACCOUNT_COOKIE

pytestmark = pytest.mark.timeout(240)

NEW_PASSWORD = "seven purple lanterns over the quiet harbour"


@pytest_asyncio.fixture
async def mailed(tmp_path: Path) -> AsyncIterator[tuple[Home, SmtpSink]]:
    async with mail_standin(tmp_path) as running:
        yield running


async def _forgot(browser: Browser, home: Home, email: str) -> tuple[int, str, str]:
    return await post(browser, home, "/signin/forgot", {"email": email})


async def test_sign_in_page_links_to_reset(mailed: tuple[Home, SmtpSink]) -> None:
    home, _ = mailed
    async with browser_from(home, "127.0.0.20") as browser:
        status, body, _ = await get(browser, home.account_origin + "/signin")
        assert status == 200
        assert 'href="/signin/forgot"' in body
        assert 'href="/signup"' not in body  # public sign-up is off by default
        status, _, _ = await get(browser, home.account_origin + "/signup")
        assert status == 404
        status, body, _ = await get(browser, home.account_origin + "/signin/forgot")
        assert status == 200
        assert '<label for="email">Email</label>' in body


async def test_unknown_email_gets_the_same_answer(mailed: tuple[Home, SmtpSink]) -> None:
    home, sink = mailed
    async with browser_from(home, "127.0.0.21") as browser:
        unknown = await _forgot(browser, home, "nobody@example.com")
        known = await _forgot(browser, home, home.email)
        malformed = await _forgot(browser, home, "not-an-address")
        assert unknown == known == malformed
        assert known[0] == 200
        assert "If an account uses this address" in known[1]
        mail = await sink.wait_for(home.email)
        assert "Reset your Homeport password" in str(mail.message["Subject"])
        assert "127.0.0.21" in mail.text
        assert [r.rcpt_tos for r in sink.received] == [[home.email]]


async def test_reset_end_to_end(mailed: tuple[Home, SmtpSink]) -> None:
    home, sink = mailed
    async with browser_from(home, "127.0.0.22") as signed_in:
        await sign_in(signed_in, home, sink)
        status, _, _ = await get(signed_in, home.account_origin + "/")
        assert status == 200
        mails = len(sink.to(home.email))
        async with browser_from(home, "127.0.0.23") as browser:
            await _forgot(browser, home, home.email)
            mail = await sink.wait_for(home.email, mails + 1)
            link = mail.link("/signin/reset")
            token = link.rsplit("t=", 1)[1]
            status, body, _ = await get(browser, link)
            assert status == 200
            assert 'autocomplete="new-password"' in body
            # opening the link used nothing up; bad input keeps the link usable
            status, body, _ = await post(
                browser,
                home,
                "/signin/reset",
                {"t": token, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD + "x"},
            )
            assert status == 400
            assert "differ" in body
            status, body, _ = await post(
                browser,
                home,
                "/signin/reset",
                {"t": token, "password": "short", "confirm": "short"},
            )
            assert status == 400
            assert "at least 15 characters" in body
            status, _, _ = await post(
                browser,
                home,
                "/signin/reset",
                {"t": token, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
                origin=home.tenant_origin,
            )
            assert status == 403
            status, body, _ = await post(
                browser,
                home,
                "/signin/reset",
                {"t": token, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
            )
            assert status == 200
            assert "Password changed" in body
            assert cookie(browser, ACCOUNT_COOKIE) is None  # a reset never signs in
            # single use
            status, _, _ = await post(
                browser,
                home,
                "/signin/reset",
                {"t": token, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
            )
            assert status == 400
            status, _, _ = await get(browser, link)
            assert status == 400
        # every session ended, and the owner is told
        status, _, location = await get(signed_in, home.account_origin + "/")
        assert (status, location) == (303, "/signin")
        told = await sink.wait_for(home.email, mails + 2)
        assert "password was changed" in str(told.message["Subject"])
        assert "127.0.0.23" in told.text
        assert token not in home.relay.log_text()
    async with browser_from(home, "127.0.0.22") as browser:  # a remembered network
        status, _, location = await password_step(browser, home)
        assert status == 401  # the old password is gone
        status, _, location = await password_step(browser, home, NEW_PASSWORD)
        assert (status, location) == (303, "/")


async def _enrol_totp(browser: Browser, home: Home) -> pyotp.TOTP:
    status, body, location = await post(browser, home, "/security/totp/start", {})
    assert (status, location) == (303, "/security/totp")
    status, body, _ = await get(browser, home.account_origin + location)
    secret = re.search(r"secret=([A-Z2-7]+)", body)
    assert secret is not None
    totp = pyotp.TOTP(secret.group(1))
    status, body, location = await post(
        browser,
        home,
        "/security/totp/confirm",
        {"code": totp.now()},
    )
    assert status == 303, body
    assert location.startswith("/security/recovery-codes?shown=")
    return totp


async def test_reset_never_bypasses_totp(mailed: tuple[Home, SmtpSink]) -> None:
    home, sink = mailed
    async with browser_from(home, "127.0.0.24") as browser:
        await sign_in(browser, home, sink)
        totp = await _enrol_totp(browser, home)
        notice = await sink.wait_for(home.email, 2)  # R-OPS-05: the 2FA change is mailed
        assert "two-step verification was turned on" in notice.text
        assert "127.0.0.24" in notice.text
        await post(browser, home, "/signout", {})
        mails = len(sink.to(home.email))
        await _forgot(browser, home, home.email)
        token = (await sink.wait_for(home.email, mails + 1)).link("/signin/reset").rsplit("t=")[1]
        status, _, _ = await post(
            browser,
            home,
            "/signin/reset",
            {"t": token, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
        )
        assert status == 200
        status, _, location = await password_step(browser, home, NEW_PASSWORD)
        assert (status, location) == (303, "/signin/totp")  # still the second factor
        assert cookie(browser, ACCOUNT_COOKIE) is None
        status, _, location = await post(
            browser, home, "/signin/totp", {"code": totp.at(time.time() + 30)}
        )
        assert (status, location) == (303, "/")  # known browser: no emailed code


async def test_reset_requests_are_throttled_per_network(mailed: tuple[Home, SmtpSink]) -> None:
    home, _ = mailed
    async with browser_from(home, "127.0.0.25") as browser:
        statuses = [(await _forgot(browser, home, f"n{n}@example.com"))[0] for n in range(11)]
        assert statuses == [200] * 10 + [429]
    async with browser_from(home, "127.0.0.26") as other:  # another network is not affected
        assert (await _forgot(other, home, home.email))[0] == 200


async def test_a_password_change_on_the_page_is_mailed_to_the_owner(
    mailed: tuple[Home, SmtpSink],
) -> None:
    """R-OPS-05: a change made in a (perhaps stolen) session is told to the owner by mail."""
    home, sink = mailed
    async with browser_from(home, "127.0.0.24") as browser:
        await sign_in(browser, home, sink)
        before = len(sink.to(home.email))
        status, body, _ = await post(
            browser,
            home,
            "/security/password",
            {
                "current_password": home.password,
                "new_password": NEW_PASSWORD,
                "new_password_again": NEW_PASSWORD,
            },
        )
        assert status == 200, body
        told = await sink.wait_for(home.email, before + 1)
        assert told.message["Subject"] == "Security change on your Homeport account"
        assert "your password was changed" in told.text
        assert "127.0.0.24" in told.text
        assert NEW_PASSWORD not in told.text
