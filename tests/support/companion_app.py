"""The Home Assistant companion apps' flows, replayed the way the apps make them.

Every function takes the base URL the app was given and an ``aiohttp`` session
carrying whatever gets it past the relay: today a relay tenant session cookie
(``stack.Browser.session`` after ``sign_in``); once app links exist, a session
with no cookie against the app link's own host.  Nothing here knows about the
relay: the same calls work against Home Assistant directly.

The sequence (iOS and Android apps alike, see the HA developer docs "Authentication"
and "Mobile app integration"):

1. the app opens ``/auth/authorize?…`` in a web view (HA's login page), whose
   script drives ``/auth/login_flow`` and returns a code to
   ``homeassistant://auth-callback``;
2. ``/auth/token`` exchanges the code (``authorization_code``) and later
   refreshes the access token (``refresh_token``);
3. ``/api/websocket`` with the access token;
4. ``POST /api/mobile_app/registrations`` registers the device and returns the
   webhook id;
5. ``POST /api/webhook/<webhook_id>`` carries updates such as ``update_location``
   (the webhook id is the credential, no bearer token).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

#: The iOS app's IndieAuth client id and redirect URI: Home Assistant whitelists this
#: pair, so it never has to fetch the client id page (the tests run offline).
IOS_CLIENT_ID = "https://home-assistant.io/iOS"
REDIRECT_URI = "homeassistant://auth-callback"


@dataclass
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int


async def _json(response: aiohttp.ClientResponse, expected: int) -> Any:
    text = await response.text()
    assert response.status == expected, (
        f"{response.method} {response.url}: {response.status} {text}"
    )
    return await response.json(content_type=None)


async def sign_in(
    session: aiohttp.ClientSession, base: str, username: str, password: str
) -> Tokens:
    """Steps 1 and 2a: the authorize page, the login flow, the code for tokens."""
    authorize = {
        "response_type": "code",
        "client_id": IOS_CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "state": uuid.uuid4().hex,
    }
    async with session.get(f"{base}/auth/authorize", params=authorize) as r:
        assert r.status == 200, r.status
        assert "<html" in (await r.text()).lower()
    async with session.get(f"{base}/auth/providers") as r:
        providers = await _json(r, 200)
    provider = next(p for p in providers["providers"] if p["type"] == "homeassistant")
    async with session.post(
        f"{base}/auth/login_flow",
        json={
            "client_id": IOS_CLIENT_ID,
            "handler": [provider["type"], provider["id"]],
            "redirect_uri": REDIRECT_URI,
        },
    ) as r:
        flow = await _json(r, 200)
    async with session.post(
        f"{base}/auth/login_flow/{flow['flow_id']}",
        json={"username": username, "password": password, "client_id": IOS_CLIENT_ID},
    ) as r:
        result = await _json(r, 200)
    assert result["type"] == "create_entry", result
    async with session.post(
        f"{base}/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": result["result"],
            "client_id": IOS_CLIENT_ID,
        },
    ) as r:
        tokens = await _json(r, 200)
    assert tokens["token_type"] == "Bearer"
    return Tokens(tokens["access_token"], tokens["refresh_token"], int(tokens["expires_in"]))


async def refresh(session: aiohttp.ClientSession, base: str, tokens: Tokens) -> str:
    """Step 2b: a fresh access token from the refresh token."""
    async with session.post(
        f"{base}/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens.refresh_token,
            "client_id": IOS_CLIENT_ID,
        },
    ) as r:
        body = await _json(r, 200)
    tokens.access_token = body["access_token"]
    return tokens.access_token


async def websocket_config(session: aiohttp.ClientSession, base: str, access_token: str) -> Any:
    """Step 3: authenticate on the WebSocket API and ask for the config, as the app does."""
    async with session.ws_connect(base.replace("https://", "wss://") + "/api/websocket") as ws:
        assert (await ws.receive_json(timeout=30))["type"] == "auth_required"
        await ws.send_json({"type": "auth", "access_token": access_token})
        assert (await ws.receive_json(timeout=30))["type"] == "auth_ok"
        await ws.send_json({"id": 1, "type": "get_config"})
        answer = await ws.receive_json(timeout=30)
    assert answer["success"] is True, answer
    return answer["result"]


async def register_device(
    session: aiohttp.ClientSession, base: str, access_token: str, device_name: str
) -> str:
    """Step 4: register with the mobile_app integration; returns the webhook id."""
    async with session.post(
        f"{base}/api/mobile_app/registrations",
        headers={"Authorization": f"Bearer {access_token}"},
        json={
            "device_id": uuid.uuid4().hex,
            "app_id": "io.robbie.HomeAssistant",
            "app_name": "Home Assistant",
            "app_version": "2025.4 (2025.1234)",
            "device_name": device_name,
            "manufacturer": "Apple",
            "model": "iPhone15,2",
            "os_name": "iOS",
            "os_version": "18.3",
            "supports_encryption": False,
            "app_data": {"push_websocket_channel": True},
        },
    ) as r:
        body = await _json(r, 201)
    return str(body["webhook_id"])


async def update_location(
    session: aiohttp.ClientSession,
    base: str,
    webhook_id: str,
    latitude: float,
    longitude: float,
) -> None:
    """Step 5: a location update through the webhook, as the app sends it."""
    async with session.post(
        f"{base}/api/webhook/{webhook_id}",
        json={
            "type": "update_location",
            "data": {
                "gps": [latitude, longitude],
                "gps_accuracy": 12,
                "battery": 87,
                "altitude": 3,
                "course": 0,
                "speed": 0,
                "vertical_accuracy": 5,
            },
        },
    ) as r:
        await _json(r, 200)
