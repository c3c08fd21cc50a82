"""Home Assistant restarts under an open session: the real frontend reconnects on its own.

A person has Home Assistant's frontend open in a real Chromium, through the relay and
the tunnel.  Home Assistant restarts; the frontend's WebSocket drops, it retries by
itself (home-assistant-js-websocket's reconnect), and once Home Assistant is back the
page follows state changes live again, with nobody touching it.  Runs after
``test_browser.py`` and ``test_home_assistant_traffic.py`` in file order (it restarts
the session's Home Assistant).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
from ha_core import HomeAssistant
from playwright.async_api import Page, expect
from stack import Stack
from test_browser import ENTITY_NAME, STATE_JS, _set_entity, _sign_in_to_homeport

if TYPE_CHECKING:
    from browser import Chromium

pytest_plugins = ("browser",)
pytestmark = [pytest.mark.homeassistant, pytest.mark.timeout(280)]

#: The frontend's own view of its WebSocket connection.
CONNECTED_JS = "document.querySelector('home-assistant')?.hass?.connected === true"


async def _wait_for(page: Page, script: str, expected: object, timeout: float) -> float:
    """Poll ``script`` in the page until it returns ``expected``; seconds it took."""
    began = time.monotonic()
    while await page.evaluate(script) != expected:
        assert time.monotonic() - began < timeout, f"{script} never became {expected!r}"
        await asyncio.sleep(0.2)
    return time.monotonic() - began


async def test_frontend_reconnects_by_itself_after_a_restart(
    stack: Stack, home_assistant: HomeAssistant, chromium: Chromium
) -> None:
    await _set_entity(home_assistant, False)
    async with chromium.person() as person:
        page = person.page
        await _sign_in_to_homeport(person, stack)
        await page.locator("input[name=username]").fill(home_assistant.username)
        await page.locator("input[name=password]").fill(home_assistant.password)
        await page.locator("input[name=password]").press("Enter")
        await expect(page.get_by_role("switch", name=f"Toggle {ENTITY_NAME} on")).to_be_visible()
        await _wait_for(page, CONNECTED_JS, True, 30)

        restart = asyncio.create_task(home_assistant.restart())
        try:
            await _wait_for(page, CONNECTED_JS, False, 60)  # the drop reached the page
        finally:
            await restart
        reconnected = await _wait_for(page, CONNECTED_JS, True, 120)

        # Live again over the new WebSocket, without a reload.
        await _set_entity(home_assistant, True)
        await expect(page.get_by_role("switch", name=f"Toggle {ENTITY_NAME} off")).to_be_checked(
            timeout=15_000
        )
        assert await page.evaluate(STATE_JS) == "on"
        assert page.url.startswith(stack.tenant_origin + "/")
        assert person.csp_errors() == []
    print(f"\nfrontend reconnected {reconnected:.1f} s after Home Assistant was back")
