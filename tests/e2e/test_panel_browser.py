"""The ingress panel in a real Chromium: no CSP error, keyboard-usable, light and dark, phone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from panel_stack import panel_for, until_capability_known
from playwright.async_api import expect
from stack import Stack

from homeport.addon.client import AddonStatus, State
from homeport.addon.gate import RemoteAccessGate
from homeport.addon.panel import Panel, PanelSources

if TYPE_CHECKING:  # loaded by pytest_plugins below, so that pytest rewrites its asserts
    from browser import Chromium

pytest_plugins = ("browser",)


async def test_panel_in_chromium(chromium: Chromium, tmp_path: Path) -> None:
    status = AddonStatus(state=State.CONNECTED, public_url="https://abc.home.example")
    gate = RemoteAccessGate(tmp_path / "state")
    panel = Panel(
        PanelSources(
            status=lambda: status,
            gate=gate,
            trust=None,
            ha_how="Home Assistant at http://127.0.0.1:8123 (configured)",
            account_origin="https://homeport.example",
        ),
        allowed_peers=("127.0.0.1",),
    )
    await panel.start("127.0.0.1", 0)
    try:
        async with chromium.person() as person:
            page = person.page
            await page.goto(f"http://127.0.0.1:{panel.port}/")
            assert await page.text_content("#state") == "Connected"
            light = await page.evaluate("getComputedStyle(document.body).backgroundColor")
            await page.emulate_media(color_scheme="dark")
            dark = await page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert light != dark

            # Keyboard only: Tab to the switch, Enter.  A real form POST with the
            # browser's own Origin header passes the CSRF check.
            for _ in range(10):
                await page.keyboard.press("Tab")
                if await page.evaluate("document.activeElement.id") == "remote-switch":
                    break
            else:
                raise AssertionError("the switch cannot be reached with Tab")
            async with page.expect_navigation():
                await page.keyboard.press("Enter")
            assert not gate.enabled
            assert "off" in (await page.text_content("#remote-state") or "")

            await page.set_viewport_size({"width": 360, "height": 740})
            width = await page.evaluate("document.scrollingElement.scrollWidth")
            assert width <= 360, "the page scrolls sideways on a phone"
            assert person.csp_errors() == []
            assert person.page_errors == []
    finally:
        await panel.stop()


async def test_panel_creates_an_app_link_in_chromium(
    stack: Stack, chromium: Chromium, tmp_path: Path
) -> None:
    """Keyboard only: the card, the form, the answer; the QR code and the link work."""
    async with panel_for(stack, tmp_path) as panel:
        await until_capability_known(stack, True)
        async with chromium.person() as person:
            page = person.page
            await page.goto(panel + "/")
            for _ in range(15):
                await page.keyboard.press("Tab")
                if await page.evaluate("document.activeElement.id") == "app-links-open":
                    break
            else:
                raise AssertionError("the app-link button cannot be reached with Tab")
            async with page.expect_navigation():
                await page.keyboard.press("Enter")
            for _ in range(10):
                await page.keyboard.press("Tab")
                if await page.evaluate("document.activeElement.id") == "app-link-name":
                    break
            else:
                raise AssertionError("the device name field cannot be reached with Tab")
            await page.keyboard.type("Anna's phone")
            async with page.expect_navigation():
                await page.keyboard.press("Enter")  # submits the form, Origin and token as sent

            assert await page.text_content("#created") == "App link for Anna's phone"
            assert await page.is_visible("#app-link-qr svg")
            box = await page.locator("#app-link-qr svg").bounding_box()
            assert box is not None
            assert box["width"] >= 100  # big enough for a camera
            url = await page.input_value("#app-link-url")
            assert url.startswith("https://")
            assert await page.get_attribute("#app-link-url", "readonly") is not None
            assert "shown only this once" in (await page.text_content("#shown-once") or "")
            (link,) = await stack.relay.accounts.sharing.app_links(stack.instance_id)
            assert link.name == "Anna's phone"

            await page.set_viewport_size({"width": 360, "height": 740})
            width = await page.evaluate("document.scrollingElement.scrollWidth")
            assert width <= 360, "the answer page scrolls sideways on a phone"
            await page.emulate_media(color_scheme="dark")
            assert await page.is_visible("#app-link-qr svg")
            assert person.csp_errors() == []
            assert person.page_errors == []

        # The link, opened in a fresh context with no session, reaches Home Assistant.
        async with chromium.person() as app:
            await app.page.goto(url + "/")
            assert "Home Assistant stand-in" in await app.page.content()


async def test_panel_updates_its_state_without_reloading(
    chromium: Chromium, tmp_path: Path
) -> None:
    """No more 10-second reloads: the script updates the code in place (what the person
    typed and where they scrolled stay) and reloads only when the state changes; the
    remote-access card tells the truth while the add-on is not linked; "Open the account
    site" carries the code to the link form."""
    status = AddonStatus(state=State.UNLINKED, link_code="ABCDE-FGHJK", link_expires_in=600)
    panel = Panel(
        PanelSources(
            status=lambda: status,
            gate=RemoteAccessGate(tmp_path / "state"),
            trust=None,
            ha_how="Home Assistant at http://127.0.0.1:8123 (configured)",
            account_origin="https://homeport.example",
        ),
        allowed_peers=("127.0.0.1",),
    )
    await panel.start("127.0.0.1", 0)
    try:
        async with chromium.person() as person:
            page = person.page
            await page.clock.install()
            await page.goto(f"http://127.0.0.1:{panel.port}/")
            assert "not linked" in (await page.text_content("#remote-state") or "")
            assert "Remote access is on." not in await page.content()
            href = await page.get_attribute("#link-button", "href")
            assert href == "https://homeport.example/link?code=ABCDE-FGHJK"
            await page.evaluate("window.sameDocument = true")

            status.link_code = "KLMNP-QRSTV"
            await page.clock.run_for(10_500)
            await expect(page.locator("#link-code")).to_have_text("KLMNP-QRSTV")
            assert await page.get_attribute("#link-button", "href") == (
                "https://homeport.example/link?code=KLMNP-QRSTV"
            )
            assert await page.evaluate("window.sameDocument === true")  # not reloaded

            status.state = State.CONNECTED
            status.public_url = "https://abc.home.example"
            await page.clock.run_for(10_500)
            await expect(page.locator("#state")).to_have_text("Connected")
            assert await page.evaluate("window.sameDocument === undefined")  # reloaded
            assert "Remote access is on" in (await page.text_content("#remote-state") or "")
            assert person.csp_errors() == []
            assert person.page_errors == []
    finally:
        await panel.stop()


async def test_panel_follows_home_assistants_theme_in_its_frame(
    chromium: Chromium, tmp_path: Path
) -> None:
    """Inside Home Assistant's same-origin ingress frame, the panel takes the theme's
    variables from Home Assistant's root element; opened on its own it keeps its own."""
    status = AddonStatus(state=State.CONNECTED, public_url="https://abc.home.example")
    panel = Panel(
        PanelSources(
            status=lambda: status,
            gate=RemoteAccessGate(tmp_path / "state"),
            trust=None,
            ha_how="Home Assistant at http://127.0.0.1:8123 (configured)",
            account_origin="https://homeport.example",
        ),
        allowed_peers=("127.0.0.1",),
    )
    await panel.start("127.0.0.1", 0)
    origin = f"http://127.0.0.1:{panel.port}"
    try:
        async with chromium.person() as person:
            page = person.page
            await page.goto(origin + "/")
            alone = await page.evaluate("getComputedStyle(document.body).backgroundColor")

            # Home Assistant's page, as the ingress proxy would serve it from this origin.
            themed = (
                '<!doctype html><html lang="en" style="--primary-background-color: rgb(1, 2, 3);'
                ' --primary-color: rgb(200, 10, 10)"><title>HA</title>'
                '<iframe src="/" title="Homeport" width="800" height="600"></iframe></html>'
            )
            await page.route(
                origin + "/ha-frame",
                lambda route: route.fulfill(body=themed, content_type="text/html"),
            )
            await page.goto(origin + "/ha-frame")
            frame = page.frame_locator("iframe")
            await expect(frame.locator("#state")).to_have_text("Connected")
            body = frame.locator("body")
            await expect(body).to_have_css("background-color", "rgb(1, 2, 3)")
            assert alone != "rgb(1, 2, 3)"
            assert person.csp_errors() == []
            assert person.page_errors == []
    finally:
        await panel.stop()
