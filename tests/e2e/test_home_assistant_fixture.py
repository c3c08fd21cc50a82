"""Proves that the real Home Assistant fixture (tests/support/ha_core.py) works."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ha_core import HomeAssistant, start_home_assistant

pytestmark = pytest.mark.homeassistant

ENTITY = "input_boolean.homeport_test"


async def _ws_auth(ws: aiohttp.ClientWebSocketResponse, token: str) -> dict[str, Any]:
    hello = await ws.receive_json(timeout=10)
    assert hello["type"] == "auth_required"
    await ws.send_json({"type": "auth", "access_token": token})
    reply: dict[str, Any] = await ws.receive_json(timeout=10)
    return reply


async def test_rest_api_needs_a_token(home_assistant: HomeAssistant) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{home_assistant.url}/api/") as resp:
            assert resp.status == 401
        headers = home_assistant.headers
        async with session.get(f"{home_assistant.url}/api/", headers=headers) as resp:
            assert resp.status == 200
            assert await resp.json() == {"message": "API running."}


async def test_websocket_sees_a_state_change_made_over_rest(home_assistant: HomeAssistant) -> None:
    ha = home_assistant
    service_url = f"{ha.url}/api/services/input_boolean"
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{service_url}/turn_off", headers=ha.headers, json={"entity_id": ENTITY}
        ) as resp:
            assert resp.status == 200

        async with session.ws_connect(ha.ws_url) as ws:
            assert (await _ws_auth(ws, ha.long_lived_token))["type"] == "auth_ok"
            await ws.send_json({"id": 1, "type": "subscribe_events", "event_type": "state_changed"})
            subscribed = await ws.receive_json(timeout=10)
            assert subscribed["id"] == 1
            assert subscribed["success"] is True

            async with session.post(
                f"{service_url}/turn_on", headers=ha.headers, json={"entity_id": ENTITY}
            ) as resp:
                assert resp.status == 200

            async with asyncio.timeout(10):
                while True:
                    msg = await ws.receive_json()
                    if msg.get("type") != "event":
                        continue
                    data = msg["event"]["data"]
                    if data["entity_id"] == ENTITY:
                        break
            assert msg["id"] == 1
            assert msg["event"]["event_type"] == "state_changed"
            assert data["old_state"]["state"] == "off"
            assert data["new_state"]["state"] == "on"

        async with session.get(f"{ha.url}/api/states/{ENTITY}", headers=ha.headers) as resp:
            assert (await resp.json())["state"] == "on"


async def test_websocket_rejects_a_bad_token(home_assistant: HomeAssistant) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(home_assistant.ws_url) as ws:
        assert (await _ws_auth(ws, "not-a-token"))["type"] == "auth_invalid"


async def test_frontend_is_served(home_assistant: HomeAssistant) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{home_assistant.url}/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        body = await resp.text()
        assert "<html" in body.lower()
        assert "onboarding" not in str(resp.url)


async def test_login_flow_with_username_and_password(home_assistant: HomeAssistant) -> None:
    ha = home_assistant
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{ha.url}/auth/login_flow",
            json={
                "client_id": ha.client_id,
                "handler": ["homeassistant", None],
                "redirect_uri": f"{ha.url}/?auth_callback=1",
            },
        ) as resp:
            assert resp.status == 200
            flow = await resp.json()
        assert flow["type"] == "form"
        assert flow["step_id"] == "init"

        async with session.post(
            f"{ha.url}/auth/login_flow/{flow['flow_id']}",
            json={"username": ha.username, "password": ha.password, "client_id": ha.client_id},
        ) as resp:
            assert resp.status == 200
            done = await resp.json()
        assert done["type"] == "create_entry", done

        async with session.post(
            f"{ha.url}/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": done["result"],
                "client_id": ha.client_id,
            },
        ) as resp:
            assert resp.status == 200
            tokens = await resp.json()
        assert tokens["token_type"] == "Bearer"

        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        async with session.get(f"{ha.url}/api/", headers=headers) as resp:
            assert resp.status == 200


async def test_wrong_password_is_refused(home_assistant: HomeAssistant) -> None:
    ha = home_assistant
    # HA trusts X-Forwarded-For from 127.0.0.1, so the failure counts against this
    # (documentation) address, not against 127.0.0.1: five failures from 127.0.0.1 would
    # ban every later test (ip_ban_enabled, login_attempts_threshold: 5). A login flow is
    # bound to the address that began it, so both requests carry the header.
    forwarded = {"X-Forwarded-For": "192.0.2.10"}
    async with aiohttp.ClientSession(headers=forwarded) as session:
        async with session.post(
            f"{ha.url}/auth/login_flow",
            json={
                "client_id": ha.client_id,
                "handler": ["homeassistant", None],
                "redirect_uri": f"{ha.url}/?auth_callback=1",
            },
        ) as resp:
            assert resp.status == 200
            flow = await resp.json()
        async with session.post(
            f"{ha.url}/auth/login_flow/{flow['flow_id']}",
            json={"username": ha.username, "password": "wrong", "client_id": ha.client_id},
        ) as resp:
            assert resp.status == 200
            result = await resp.json()
        assert result["type"] == "form", result
        assert result["errors"] == {"base": "invalid_auth"}


async def test_restart_keeps_tokens(tmp_path: Path) -> None:
    """A separate instance, so the session one is not disturbed."""
    async with start_home_assistant(tmp_path) as ha:
        first_pid = ha.pid
        await ha.restart()
        assert ha.is_running
        assert ha.pid != first_pid
        async with aiohttp.ClientSession() as session:
            for token in (ha.long_lived_token, ha.access_token):
                headers = {"Authorization": f"Bearer {token}"}
                async with session.get(f"{ha.url}/api/config", headers=headers) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["state"] == "RUNNING"
            assert await ha.refresh_access_token()
        await ha.stop()
        assert not ha.is_running
