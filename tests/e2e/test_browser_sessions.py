"""In a real headless Chromium: the sessions page lists both browsers and signs the other out.

The relay fronts the aiohttp stand-in (no Home Assistant needed): one person's
"phone" holds a WebSocket open on the home's host; the same person's "laptop"
opens the sessions page and signs the phone out with the keyboard and the
mouse; the phone's WebSocket closes at once with code 4001.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
from playwright.async_api import expect
from stack import Stack

if TYPE_CHECKING:
    from browser import Chromium, Person

pytest_plugins = ("browser",)
pytestmark = [pytest.mark.timeout(90), pytest.mark.stack(housekeeping=False)]

OPEN_WEBSOCKET_JS = """() => new Promise(resolve => {
    window.homeportClosed = null;
    const ws = new WebSocket(location.origin.replace('https:', 'wss:') + '/ws/echo');
    ws.onopen = () => resolve('open');
    ws.onclose = event => { window.homeportClosed = event.code + ' ' + event.reason; };
    ws.onerror = () => resolve('error');
    setTimeout(() => resolve('timeout'), 15000);
})"""


async def _sign_in(person: Person, stack: Stack, start: str) -> None:
    page = person.page
    await page.goto(start)
    await expect(page.get_by_role("heading", name="Sign in", exact=True)).to_be_visible()
    await page.get_by_label("Email").fill(stack.email)
    await page.get_by_label("Password").fill(stack.password)
    await page.get_by_role("button", name="Sign in", exact=True).click()


async def test_sessions_page_signs_the_other_browser_out(stack: Stack, chromium: Chromium) -> None:
    async with chromium.person() as phone, chromium.person() as laptop:
        await _sign_in(phone, stack, stack.tenant_origin + "/")
        await expect(phone.page).to_have_url(re.compile(re.escape(stack.tenant_origin) + "/"))
        assert await phone.page.evaluate(OPEN_WEBSOCKET_JS) == "open"

        await _sign_in(laptop, stack, stack.account_origin + "/security/sessions")
        page = laptop.page
        await expect(page).to_have_url(stack.account_origin + "/security/sessions")
        await expect(page.get_by_role("heading", name="Where you're signed in")).to_be_visible()
        cards = page.locator("ul.sessions > li")
        await expect(cards).to_have_count(3)  # laptop; phone's account and home sessions
        await expect(page.locator("li.current").get_by_text("This session")).to_be_visible()
        phone_home = page.locator("li:not(.current)").filter(has_text="Home: Home")
        await expect(phone_home).to_contain_text("Chrome on Linux")
        await expect(phone_home).to_contain_text("127.0.0.1")

        await phone_home.get_by_role("button", name=re.compile("^Sign out")).click()
        await expect(page.get_by_role("status")).to_contain_text("signed out")
        await expect(cards).to_have_count(2)
        await phone.page.wait_for_function("window.homeportClosed !== null", timeout=10_000)
        assert await phone.page.evaluate("window.homeportClosed") == "4001 session ended"

        # Keyboard only: open the confirmation (a dangerous action), then confirm.
        await page.locator("summary", has_text="Sign out all other sessions").focus()
        await page.keyboard.press("Enter")
        others = page.get_by_role("button", name="Sign out all other sessions")
        await others.focus()
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("status")).to_be_visible()
        await expect(cards).to_have_count(1)
        await expect(cards.first).to_contain_text("This session")

        # The phone is out everywhere: the account site asks it to sign in again.
        await phone.page.goto(stack.account_origin + "/security/sessions")
        await expect(phone.page.get_by_role("heading", name="Sign in", exact=True)).to_be_visible()

        for person in (phone, laptop):
            assert person.csp_errors() == []
            assert person.page_errors == []


async def test_security_pages_in_chromium(stack: Stack, chromium: Chromium) -> None:
    """QR code under the strict CSP, activity table, password change with the keyboard."""
    async with chromium.person() as person:
        page = person.page
        await _sign_in(person, stack, stack.account_origin + "/security")
        await expect(page.get_by_role("heading", name="Security")).to_be_visible()
        await page.get_by_role("button", name="Set up an authenticator app").click()
        qr = page.get_by_role("img", name=re.compile("QR code"))
        await expect(qr).to_be_visible()
        assert await qr.evaluate("img => img.complete && img.naturalWidth > 0")
        await expect(page.get_by_label("Authentication code")).to_be_visible()

        # The set-up is a page of its own; the site navigation leads on.
        await (
            page.get_by_role("navigation", name="Homeport")
            .get_by_role("link", name="Activity")
            .click()
        )
        await expect(page.get_by_role("heading", name="Account activity")).to_be_visible()
        await expect(page.get_by_role("cell", name="Signed in").first).to_be_visible()

        await page.goto(stack.account_origin + "/security/password")
        await page.get_by_label("Current password").fill(stack.password)
        await page.get_by_label("New password", exact=True).fill("password1234567")
        await page.get_by_label("New password again").fill("password1234567")
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("alert")).to_contain_text("common")
        new = "seven purple otters under a bridge"
        await page.get_by_label("Current password").fill(stack.password)
        await page.get_by_label("New password", exact=True).fill(new)
        await page.get_by_label("New password again").fill(new)
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("status")).to_contain_text("Your password is changed")

        assert person.csp_errors() == []
        assert person.page_errors == []
