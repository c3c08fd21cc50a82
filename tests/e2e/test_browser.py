"""A person in a real headless Chromium uses Home Assistant through the relay.

Debian's Chromium (``scripts/system-deps``) driven by Playwright, in front of the
session's real Home Assistant Core. Certificate checks stay on: each Chromium trusts
the relay's development CA through an NSS database in its own fresh HOME (see
``tests/support/browser.py``), so the ``__Host-`` cookies, HSTS and the CSP of the
relay's pages are exercised exactly as a person's browser applies them.

The person signs in to Homeport, then to Home Assistant's own login page, and sees the
frontend follow state changes live over the WebSocket carried by the tunnel; a second
person who never signed in sees nothing but the relay's sign-in page.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from ha_core import HomeAssistant
from playwright.async_api import Response, expect
from stack import Stack

if TYPE_CHECKING:  # loaded by pytest_plugins below, so that pytest rewrites its asserts
    from browser import Chromium, Person

pytest_plugins = ("browser",)
pytestmark = [pytest.mark.homeassistant, pytest.mark.timeout(60)]

ENTITY = "input_boolean.homeport_test"
ENTITY_NAME = "Homeport test"
#: What the frontend's own WebSocket-fed state store says about the entity.
STATE_JS = f"document.querySelector('home-assistant')?.hass?.states?.['{ENTITY}']?.state"
LIVE_TIMEOUT_MS = 10_000
FETCH_API_JS = "fetch('/api/').then(async r => [r.status, await r.text()])"
#: Opens Home Assistant's WebSocket from the page; what became of it, within 5 s.
OPEN_WEBSOCKET_JS = """() => new Promise(resolve => {
    const ws = new WebSocket(location.origin.replace('https:', 'wss:') + '/api/websocket');
    ws.onmessage = event => resolve('message: ' + event.data);
    ws.onerror = () => resolve('error');
    setTimeout(() => resolve('timeout'), 5000);
})"""


async def _ha_rest(ha: HomeAssistant, method: str, path: str, body: object = None) -> object:
    """Straight to Home Assistant, behind the relay's back."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.request(method, f"{ha.url}{path}", headers=ha.headers, json=body) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.json()


async def _set_entity(ha: HomeAssistant, on: bool) -> None:
    service = "turn_on" if on else "turn_off"
    await _ha_rest(ha, "POST", f"/api/services/input_boolean/{service}", {"entity_id": ENTITY})


async def _entity_state(ha: HomeAssistant) -> str:
    state = await _ha_rest(ha, "GET", f"/api/states/{ENTITY}")
    assert isinstance(state, dict)
    return str(state["state"])


def _signin_url(stack: Stack) -> re.Pattern[str]:
    return re.compile(re.escape(stack.account_origin) + r"/signin(\?|$)")


async def _open_and_reach_signin(person: Person, stack: Stack) -> None:
    """Open the home's address; the relay sends the browser to the account site."""
    page = person.page
    await page.goto(stack.tenant_origin + "/")
    await expect(page).to_have_url(_signin_url(stack))
    await expect(page.get_by_role("heading", name="Sign in", exact=True)).to_be_visible()


async def _sign_in_to_homeport(person: Person, stack: Stack) -> None:
    page = person.page
    await _open_and_reach_signin(person, stack)
    await page.get_by_label("Email").fill(stack.email)
    await page.get_by_label("Password").fill(stack.password)
    await page.get_by_role("button", name="Sign in", exact=True).click()
    # Handed back to the home's own host, where Home Assistant's login page appears.
    await expect(page).to_have_url(re.compile(re.escape(stack.tenant_origin) + "/"))
    await expect(page.locator("input[name=username]")).to_be_visible()


async def test_person_uses_home_assistant_through_the_relay(
    stack: Stack, home_assistant: HomeAssistant, chromium: Chromium, tmp_path: Path
) -> None:
    began = time.monotonic()
    await _set_entity(home_assistant, False)
    async with chromium.person() as person:
        page = person.page
        await _sign_in_to_homeport(person, stack)
        signed_in = time.monotonic() - began

        # The tenant session is this host's own __Host- cookie, as the browser stored it.
        cookies = {c["name"]: c for c in await page.context.cookies(stack.tenant_origin)}
        session = cookies["__Host-homeport_session"]
        assert session["secure"] is True
        assert session["httpOnly"] is True
        assert session["sameSite"] == "Lax"
        assert session["path"] == "/"
        assert "__Host-homeport_state" not in cookies  # spent by the hand-off

        # Home Assistant's own login: the relay adds no credentials of its own.
        await page.screenshot(path=tmp_path / "ha-login.png")
        await page.locator("input[name=username]").fill(home_assistant.username)
        await page.locator("input[name=password]").fill(home_assistant.password)
        await page.locator("input[name=password]").press("Enter")

        # The frontend: its sidebar and the default dashboard's card for the entity.
        await expect(page.locator("home-assistant")).to_be_attached()
        sidebar = page.locator("ha-sidebar")
        for item in ("Overview", "Logbook", "History", "Settings"):
            await expect(sidebar.get_by_role("option", name=item).first).to_be_visible()
        toggle = page.get_by_role("switch", name=f"Toggle {ENTITY_NAME} on")
        await expect(toggle).to_be_visible()
        await expect(toggle).not_to_be_checked()
        assert page.url.startswith(stack.tenant_origin + "/")
        assert await page.evaluate(STATE_JS) == "off"
        frontend = time.monotonic() - began
        await page.screenshot(path=tmp_path / "ha-frontend.png")

        # A change made in Home Assistant shows up live: pushed over the WebSocket
        # that runs through the relay and the tunnel.
        changed_at = time.monotonic()
        await _set_entity(home_assistant, True)
        await expect(page.get_by_role("switch", name=f"Toggle {ENTITY_NAME} off")).to_be_checked(
            timeout=LIVE_TIMEOUT_MS
        )
        assert await page.evaluate(STATE_JS) == "on"
        pushed = time.monotonic() - changed_at
        await page.screenshot(path=tmp_path / "ha-frontend-on.png")

        # And the other way: the person flips the switch in the page.
        await page.get_by_role("switch", name=f"Toggle {ENTITY_NAME} off").click()
        deadline = time.monotonic() + LIVE_TIMEOUT_MS / 1000
        while await _entity_state(home_assistant) != "off":
            assert time.monotonic() < deadline, "the click never reached Home Assistant"
            await page.wait_for_timeout(50)
        await expect(page.get_by_role("switch", name=f"Toggle {ENTITY_NAME} on")).not_to_be_checked(
            timeout=LIVE_TIMEOUT_MS
        )

        assert person.csp_errors() == []
        assert person.page_errors == []
    print(
        f"\nbrowser timings: signed in to Homeport {signed_in:.2f} s, frontend ready"
        f" {frontend:.2f} s, live update {pushed * 1000:.0f} ms"
    )


async def test_without_signing_in_nothing_of_home_assistant_is_seen(
    stack: Stack, chromium: Chromium, tmp_path: Path
) -> None:
    """A fresh browser context never gets past the relay, even beside a signed-in one."""
    async with chromium.person() as owner:
        await _sign_in_to_homeport(owner, stack)  # Home Assistant's login page is up for them

        async with chromium.person() as stranger:
            page = stranger.page
            tenant_answers: list[tuple[int, str]] = []

            def on_response(response: Response) -> None:
                if response.url.startswith(stack.tenant_origin):
                    tenant_answers.append((response.status, response.url))

            page.on("response", on_response)
            for path in ("/", "/lovelace/0", "/auth/authorize", "/manifest.json"):
                await page.goto(stack.tenant_origin + path)
                await expect(page).to_have_url(_signin_url(stack))
                await expect(page.get_by_label("Email")).to_be_visible()
                await expect(page.get_by_label("Password")).to_be_visible()
                await expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
                assert await page.locator("input[name=username]").count() == 0
                assert "Home Assistant" not in await page.content()
            await page.screenshot(path=tmp_path / "relay-signin.png")
            # Every answer from the home's host was the relay's redirect to sign in.
            assert tenant_answers
            assert {status for status, _ in tenant_answers} == {303}, tenant_answers

            # Even a script running on the home's own origin (a relay notice page there)
            # gets neither the API nor the WebSocket.
            await page.goto(stack.tenant_origin + "/.homeport/nothing-here")
            await expect(page.get_by_role("heading", name="Not found")).to_be_visible()
            api = await page.evaluate(FETCH_API_JS)
            assert api[0] == 401
            assert "Sign in to Homeport" in api[1]
            websocket = await page.evaluate(OPEN_WEBSOCKET_JS)
            assert websocket == "error"
            stranger_cookies = await page.context.cookies(stack.tenant_origin)
            assert "__Host-homeport_session" not in {c["name"] for c in stranger_cookies}

            # The relay's own pages work under their CSP: nothing was blocked.
            assert stranger.csp_errors() == []
            assert stranger.page_errors == []
        assert owner.csp_errors() == []
