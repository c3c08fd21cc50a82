"""In headless Chromium: a first sign-in asks for the emailed code, typed with the keyboard.

Relay process with real SMTP to an aiosmtpd sink; Chromium is Debian's, trusting
the relay's development CA (see ``tests/support/browser.py``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from email_flows import mail_standin
from playwright.async_api import expect
from relay_process import Home
from smtp_sink import SmtpSink

from homeport.tls.devca import DevCA

if TYPE_CHECKING:  # loaded by pytest_plugins below, so that pytest rewrites its asserts
    from browser import Chromium

pytest_plugins = ("browser",)
pytestmark = pytest.mark.timeout(240)


@pytest_asyncio.fixture
async def mailed(tmp_path: Path, dev_ca: DevCA) -> AsyncIterator[tuple[Home, SmtpSink]]:
    async with mail_standin(tmp_path, ca=dev_ca) as running:
        yield running


async def test_new_browser_types_the_emailed_code(
    mailed: tuple[Home, SmtpSink], chromium: Chromium, tmp_path: Path
) -> None:
    home, sink = mailed
    async with chromium.person() as person:
        page = person.page
        await page.set_viewport_size({"width": 390, "height": 844})  # a phone screen
        await page.goto(home.tenant_origin + "/")
        await page.get_by_label("Email").fill(home.email)
        await page.get_by_label("Password").fill(home.password)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
        assert "/signin/email-code" in page.url
        field = page.get_by_label("Code from the email")
        await expect(field).to_be_focused()  # autofocus: type straight away
        await expect(page.get_by_role("button", name="Send a new code")).to_be_visible()
        await page.screenshot(path=tmp_path / "email-code.png")
        code = (await sink.wait_for(home.email)).code()
        await page.keyboard.type("000000" if code != "000000" else "111111")
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("alert")).to_contain_text("not right")
        await field.fill(code)
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("heading", name="Home Assistant stand-in")).to_be_visible()
        await expect(page).to_have_url(re.compile("^" + re.escape(home.tenant_origin)))
        cookies = {c["name"]: c for c in await page.context.cookies(home.account_origin)}
        device = cookies["__Host-homeport_device"]
        assert device["httpOnly"]
        assert device["secure"]
        assert device["expires"] > 0  # long-lived, unlike the session cookie
        assert "__Host-homeport_verify" not in cookies
        assert person.csp_errors() == []
        assert person.page_errors == []


async def test_forgot_password_in_chromium(
    mailed: tuple[Home, SmtpSink], chromium: Chromium
) -> None:
    home, sink = mailed
    new_password = "eleven quiet owls above the marsh"
    async with chromium.person() as person:
        page = person.page
        await page.goto(home.account_origin + "/signin")
        await page.get_by_role("link", name="Forgot password?").click()
        await expect(page.get_by_role("heading", name="Reset your password")).to_be_visible()
        await page.get_by_label("Email").fill(home.email)
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("status")).to_contain_text("If an account uses this")
        link = (await sink.wait_for(home.email)).link("/signin/reset")
        await page.goto(link)
        await page.get_by_label("New password", exact=True).fill(new_password)
        await page.get_by_label("New password again").fill(new_password)
        await page.get_by_role("button", name="Set the password").click()
        await expect(page.get_by_role("heading", name="Password changed")).to_be_visible()
        await page.get_by_role("link", name="Sign in").last.click()
        await page.get_by_label("Email").fill(home.email)
        await page.get_by_label("Password").fill(new_password)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
        assert person.csp_errors() == []
        assert person.page_errors == []
