"""The ingress panel in a real Chromium: no CSP error, keyboard-usable, light and dark, phone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from homeport.addon.client import AddonStatus, State
from homeport.addon.gate import RemoteAccessGate
from homeport.addon.panel import Panel, PanelSources
from homeport.tls.devca import create_independent_ca

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
        await chromium.start(create_independent_ca(tmp_path / "ca").cert_path)
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
