"""A real Home Assistant Core behind the relay: frontend, login, REST and WebSocket API."""

from __future__ import annotations

import asyncio
import json

import pytest
from ha_core import HomeAssistant
from stack import Stack

pytestmark = pytest.mark.homeassistant


async def _ha_login(browser, stack: Stack, ha: HomeAssistant) -> str:
    """Home Assistant's own login, as its login page does it, through the relay."""
    client_id = stack.tenant_origin + "/"
    async with browser.request(
        "POST",
        stack.tenant_origin + "/auth/login_flow",
        json={
            "client_id": client_id,
            "handler": ["homeassistant", None],
            "redirect_uri": client_id + "?auth_callback=1",
        },
    ) as r:
        assert r.status == 200, await r.text()
        flow = await r.json()
    async with browser.request(
        "POST",
        stack.tenant_origin + f"/auth/login_flow/{flow['flow_id']}",
        json={"username": ha.username, "password": ha.password, "client_id": client_id},
    ) as r:
        assert r.status == 200, await r.text()
        result = await r.json()
    assert result["type"] == "create_entry", result
    async with browser.request(
        "POST",
        stack.tenant_origin + "/auth/token",
        data={"grant_type": "authorization_code", "code": result["result"], "client_id": client_id},
    ) as r:
        assert r.status == 200, await r.text()
        tokens = await r.json()
    return str(tokens["access_token"])


async def test_frontend_loads_through_the_relay(stack: Stack) -> None:
    async with stack.browser() as browser:
        page = await browser.sign_in("/")
        assert page.status == 200
        html = await page.text()
        assert "<title>Home Assistant</title>" in html
        assert page.headers["Strict-Transport-Security"].startswith("max-age=63072000")
        # Home Assistant's own frame protection is kept, not weakened.
        assert page.headers["X-Frame-Options"] == "SAMEORIGIN"
        async with browser.request("GET", stack.tenant_origin + "/manifest.json") as r:
            assert r.status == 200
            assert (await r.json())["name"] == "Home Assistant"


async def test_relay_adds_no_credentials(stack: Stack) -> None:
    async with stack.browser() as browser:
        await browser.sign_in("/")
        async with browser.request("GET", stack.tenant_origin + "/api/") as r:
            assert r.status == 401  # Home Assistant's own answer: its login is the second lock


async def test_ha_login_rest_and_websocket(stack: Stack, home_assistant: HomeAssistant) -> None:
    async with stack.browser() as browser:
        await browser.sign_in("/")
        token = await _ha_login(browser, stack, home_assistant)
        bearer = {"Authorization": f"Bearer {token}"}
        async with browser.request("GET", stack.tenant_origin + "/api/", headers=bearer) as r:
            assert r.status == 200
            assert await r.json() == {"message": "API running."}

        # Start from a known state: other tests share this Home Assistant and may have
        # left the entity on (turning on what is on changes no state, so no event).
        async with browser.request(
            "POST",
            stack.tenant_origin + "/api/services/input_boolean/turn_off",
            headers=bearer,
            json={"entity_id": "input_boolean.homeport_test"},
        ) as r:
            assert r.status == 200, await r.text()

        ws_url = stack.tenant_origin.replace("https://", "wss://") + "/api/websocket"
        async with browser.session.ws_connect(ws_url, origin=stack.tenant_origin) as ws:
            assert (await ws.receive_json())["type"] == "auth_required"
            await ws.send_json({"type": "auth", "access_token": token})
            assert (await ws.receive_json())["type"] == "auth_ok"
            await ws.send_json({"id": 1, "type": "subscribe_events", "event_type": "state_changed"})
            assert (await ws.receive_json())["success"] is True

            for turn_on in (True, False):
                service = "turn_on" if turn_on else "turn_off"
                async with browser.request(
                    "POST",
                    stack.tenant_origin + f"/api/services/input_boolean/{service}",
                    headers=bearer,
                    json={"entity_id": "input_boolean.homeport_test"},
                ) as r:
                    assert r.status == 200, await r.text()
                async with asyncio.timeout(10):
                    while True:
                        event = await ws.receive_json()
                        data = event["event"]["data"]
                        if data["entity_id"] == "input_boolean.homeport_test":
                            break
                assert data["new_state"]["state"] == ("on" if turn_on else "off")


async def test_ha_sees_the_browser_address(stack: Stack, home_assistant: HomeAssistant) -> None:
    """HA trusts the add-on as a proxy and sees the relay's view of the client address."""
    async with stack.browser() as browser:
        await browser.sign_in("/")
        token = await _ha_login(browser, stack, home_assistant)
        async with browser.request(
            "GET",
            stack.tenant_origin + "/api/config",
            headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "203.0.113.9"},
        ) as r:
            # A spoofed X-Forwarded-For from the browser is dropped, not passed on
            # (HA would answer 400 to an untrusted chain).
            assert r.status == 200
            assert "version" in json.loads(await r.text())
