"""The companion app's flows through an app link, against a real Home Assistant Core.

Replayed as the iOS app makes them, with no cookie and no Homeport session:
``/auth/authorize`` → login flow → ``/auth/token`` (and a refresh), the REST API,
``/api/websocket``, then ``mobile_app`` registration and a location update through
its webhook. Home Assistant's own login is the only lock; revoking the link ends
the app's WebSocket and the address stops resolving.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from ha_core import HomeAssistant
from stack import Stack

pytestmark = [pytest.mark.homeassistant, pytest.mark.timeout(120)]

#: What the iOS app sends: Home Assistant allows this pair without fetching the client page.
CLIENT_ID = "https://home-assistant.io/iOS"
REDIRECT_URI = "homeassistant://auth-callback"


def companion_app(stack: Stack) -> aiohttp.ClientSession:
    return stack.companion_app(timeout=30)


async def _json(response: aiohttp.ClientResponse, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


async def test_companion_app_signs_in_and_works_through_an_app_link(
    stack: Stack, home_assistant: HomeAssistant
) -> None:
    accounts = stack.relay.accounts
    owner = await accounts.get_user_by_email(stack.email)
    assert owner is not None
    label, row = await accounts.sharing.create_app_link(owner.id, stack.instance_id, "iPhone")
    server = f"https://{label}.{stack.config.tenant_domain}{stack.config.port_suffix}"

    async with companion_app(stack) as app:
        # Nothing but Home Assistant's own login stands open.
        async with app.get(server + "/api/") as r:
            assert r.status == 401
        async with app.get(
            server + "/auth/authorize",
            params={"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI},
        ) as r:
            assert r.status == 200
            assert "<html" in (await r.text()).lower()
        async with app.post(
            server + "/auth/login_flow",
            json={
                "client_id": CLIENT_ID,
                "handler": ["homeassistant", None],
                "redirect_uri": REDIRECT_URI,
            },
        ) as r:
            flow = await _json(r)
        async with app.post(
            server + f"/auth/login_flow/{flow['flow_id']}",
            json={
                "username": home_assistant.username,
                "password": home_assistant.password,
                "client_id": CLIENT_ID,
            },
        ) as r:
            result = await _json(r)
        assert result["type"] == "create_entry", result
        async with app.post(
            server + "/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": result["result"],
                "client_id": CLIENT_ID,
            },
        ) as r:
            tokens = await _json(r)
        async with app.post(
            server + "/auth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": CLIENT_ID,
            },
        ) as r:
            refreshed = await _json(r)
        bearer = {"Authorization": f"Bearer {refreshed['access_token']}"}
        async with app.get(server + "/api/", headers=bearer) as r:
            assert await _json(r) == {"message": "API running."}

        # The app's WebSocket sends no Origin.
        ws = await app.ws_connect(server.replace("https://", "wss://") + "/api/websocket")
        assert (await ws.receive_json())["type"] == "auth_required"
        await ws.send_json({"type": "auth", "access_token": refreshed["access_token"]})
        assert (await ws.receive_json())["type"] == "auth_ok"
        await ws.send_json({"id": 1, "type": "ping"})
        assert (await ws.receive_json())["type"] == "pong"

        # mobile_app registration, then a location update through its webhook.
        async with app.post(
            server + "/api/mobile_app/registrations",
            headers=bearer,
            json={
                "device_id": "homeport-test-iphone",
                "app_id": "io.robbie.HomeAssistant",
                "app_name": "Home Assistant",
                "app_version": "2025.4",
                "device_name": "Homeport test iPhone",
                "manufacturer": "Apple",
                "model": "iPhone",
                "os_name": "iOS",
                "os_version": "18.0",
                "supports_encryption": False,
            },
        ) as r:
            registration = await _json(r, 201)
        webhook = server + f"/api/webhook/{registration['webhook_id']}"
        async with app.post(
            webhook,
            json={
                "type": "update_location",
                "data": {"gps": [52.3731, 4.8922], "gps_accuracy": 10, "battery": 80},
            },
        ) as r:
            assert r.status == 200, await r.text()
        async with app.post(webhook, json={"type": "get_config"}) as r:
            config = await _json(r)
        assert "latitude" in config or "components" in config

        listed = await accounts.sharing.app_links(stack.instance_id)
        assert [link.last_used_at is not None for link in listed] == [True]

        # Revoked: the app's WebSocket closes at once and the address stops resolving.
        async with stack.browser() as owner_browser:
            for path, data in (
                ("/signin", {"email": stack.email, "password": stack.password, "next": "/"}),
                (f"/instances/{stack.instance_id}/app-links/{row.id}/revoke", {}),
            ):
                async with owner_browser.request(
                    "POST",
                    stack.account_origin + path,
                    data=data,
                    headers={"Origin": stack.account_origin},
                ) as r:
                    assert r.status == 303, await r.text()
        async with asyncio.timeout(10):
            while not ws.closed:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break
        await ws.close()
        async with app.get(server + "/api/", headers=bearer) as r:
            assert r.status == 421
