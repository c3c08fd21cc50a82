"""The owner's page for one home in a real headless Chromium: rename, then an app link.

Debian's Chromium through Playwright (``tests/support/browser.py``), trusting the
relay's development CA, in front of the stand-in backend. The relay's strict CSP
applies as in a person's browser: the page, its forms and the inline SVG QR code
must work without any script or inline style.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
from playwright.async_api import expect
from stack import Stack

if TYPE_CHECKING:
    from browser import Chromium

pytest_plugins = ("browser",)
pytestmark = pytest.mark.timeout(120)


async def test_owner_renames_the_home_and_creates_an_app_link(
    stack: Stack, chromium: Chromium
) -> None:
    async with chromium.person() as owner:
        page = owner.page
        await page.goto(stack.account_origin + "/signin")
        await page.get_by_label("Email").fill(stack.email)
        await page.get_by_label("Password").fill(stack.password)
        await page.get_by_role("button", name="Sign in", exact=True).click()
        await expect(page.get_by_role("heading", name="Your homes")).to_be_visible()
        await page.get_by_role("link", name="Manage").click()
        await expect(page).to_have_url(
            re.compile(re.escape(f"{stack.account_origin}/instances/{stack.instance_id}"))
        )

        # Rename, with the keyboard only: the field, then Enter.
        name = page.get_by_label("Name", exact=True)
        await name.fill("Beach house")
        await name.press("Enter")
        await expect(page.get_by_role("status")).to_have_text("Renamed.")
        await expect(page.get_by_role("heading", name="Beach house", level=1)).to_be_visible()

        # An app link for one device: shown once, as text and as a QR code.
        await page.get_by_label("Device name").fill("Anna's phone")
        await page.get_by_role("button", name="Create app link").click()
        await expect(page.get_by_role("heading", name="App link for Anna's phone")).to_be_visible()
        url = await page.get_by_label("Server address for the Home Assistant app").input_value()
        assert re.fullmatch(
            rf"https://[a-z2-7]{{32}}\.{re.escape(stack.config.tenant_domain)}"
            rf"{re.escape(stack.config.port_suffix)}",
            url,
        )
        qr = page.locator(".qr svg")
        await expect(qr).to_be_visible()
        box = await qr.bounding_box()
        assert box is not None
        assert box["width"] >= 100
        assert owner.csp_errors() == []
        assert owner.page_errors == []

        # Listed afterwards by name, without the link itself.
        await page.goto(f"{stack.account_origin}/instances/{stack.instance_id}")
        await expect(page.get_by_text("Anna's phone (created")).to_be_visible()
        assert url not in await page.content()

        # On a phone-sized screen nothing needs sideways scrolling.
        await page.set_viewport_size({"width": 360, "height": 740})
        width = await page.evaluate("document.scrollingElement.scrollWidth")
        wide = await page.evaluate(
            "[...document.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > 360)"
            ".map(e => e.tagName + '.' + e.className + ' ' + e.getBoundingClientRect().right)"
        )
        assert width <= 360, (width, wide)

    # The app link opens the home in a browser that never signed in to Homeport.
    async with chromium.person() as device:
        await device.page.goto(url + "/")
        await expect(device.page.get_by_text("Home Assistant stand-in").first).to_be_visible()
        assert device.page.url == url + "/"
